// oneDNN matmul primitives for the CPU backend, created once per shape and reused. Creating a
// primitive costs tens of microseconds (its kernel is generated for the shape); executing one is a
// few microseconds, so the training step only executes. Each calling thread has its own engine,
// stream and cache: a primitive's memory objects are rebound to the caller's pointers on every
// call, which must not race with another thread doing the same.
#include "dnnl_gemm.h"

#include <omp.h>

#include <dnnl.hpp>
#include "dnnl_common.h"
#include <map>
#include <tuple>

#include "cumnist/error.h"

namespace cumnist::cpu::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;

struct Key {
    int m, n, k;
    Trans ta, tb;
    int threads;  // oneDNN chooses its blocking for the thread count at creation
    bool operator<(const Key& o) const {
        return std::tie(m, n, k, ta, tb, threads) < std::tie(o.m, o.n, o.k, o.ta, o.tb, o.threads);
    }
};

struct Entry {
    dnnl::matmul primitive;
    memory a, b, c, scratchpad;  // a, b and c are rebound to the caller's data per call
    dnnl_exec_arg_t args[4];
    int n_args = 0;
};

struct Context {
    dnnl::engine& engine = thread_engine().engine;
    std::map<Key, Entry> cache;
};

Context& context() {
    thread_local Context ctx;
    return ctx;
}

// A row-major (rows, cols) matrix stored as such (No) or as its transpose (Yes).
memory::desc matrix_desc(int rows, int cols, Trans stored) {
    return memory::desc({rows, cols}, memory::data_type::f32, stored == Trans::No ? Tag::ab : Tag::ba);
}

dnnl::matmul::primitive_desc make_pd(Context& ctx, const Key& key) {
    const memory::desc a_md = matrix_desc(key.m, key.k, key.ta), b_md = matrix_desc(key.k, key.n, key.tb);
    const memory::desc c_md = matrix_desc(key.m, key.n, Trans::No);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // allocated here, once, not per call
#if DNNL_VERSION_MAJOR >= 3
    return dnnl::matmul::primitive_desc(ctx.engine, a_md, b_md, c_md, attr);
#else
    return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), attr, ctx.engine);
#endif
}

Entry create(Context& ctx, const Key& key) {
    const dnnl::matmul::primitive_desc pd = make_pd(ctx, key);
    const memory::desc a_md = pd.src_desc(), b_md = pd.weights_desc(), c_md = pd.dst_desc();
    Entry e;
    e.primitive = dnnl::matmul(pd);
    // Memory objects over no data yet (DNNL_MEMORY_NONE): every call binds the caller's pointers.
    e.a = memory(a_md, ctx.engine, DNNL_MEMORY_NONE);
    e.b = memory(b_md, ctx.engine, DNNL_MEMORY_NONE);
    e.c = memory(c_md, ctx.engine, DNNL_MEMORY_NONE);
    e.args[e.n_args++] = {DNNL_ARG_SRC, e.a.get()};
    e.args[e.n_args++] = {DNNL_ARG_WEIGHTS, e.b.get()};
    e.args[e.n_args++] = {DNNL_ARG_DST, e.c.get()};
    if (pd.scratchpad_desc().get_size() > 0) {
        e.scratchpad = memory(pd.scratchpad_desc(), ctx.engine);
        e.args[e.n_args++] = {DNNL_ARG_SCRATCHPAD, e.scratchpad.get()};
    }
    return e;
}

}  // namespace

void matmul(float* c, const float* a, Trans ta, const float* b, Trans tb, int m, int n, int k) {
    Context& ctx = context();
    const Key key{m, n, k, ta, tb, omp_get_max_threads()};
    auto it = ctx.cache.find(key);
    if (it == ctx.cache.end()) {
        // A run uses a handful of shapes (per layer: forward, dW, dX; a short last batch; the
        // evaluation batch). Bound what a caller cycling through many shapes can accumulate.
        constexpr std::size_t kMaxCached = 64;
        if (ctx.cache.size() >= kMaxCached) ctx.cache.clear();
        try {
            it = ctx.cache.emplace(key, create(ctx, key)).first;
        } catch (const dnnl::error& e) {
            throw Error(fmt::format("oneDNN: cannot create a matmul for ({} x {}) · ({} x {}): {}", m, k, k, n, e.what()));
        }
    }
    Entry& e = it->second;
    // oneDNN only reads A and B; its memory objects take non-const handles.
    check(dnnl_memory_set_data_handle(e.a.get(), const_cast<float*>(a)), "binding A");
    check(dnnl_memory_set_data_handle(e.b.get(), const_cast<float*>(b)), "binding B");
    check(dnnl_memory_set_data_handle(e.c.get(), c), "binding C");
    // The C interface: the C++ one builds a map of the arguments on every call.
    execute(e.primitive, e.n_args, e.args, "matmul");
}

void sgemm(float* c, const float* a, Trans ta, const float* b, Trans tb, int m, int n, int k, float alpha, float beta) {
    const int lda = ta == Trans::No ? k : m;
    const int ldb = tb == Trans::No ? n : k;
    check(dnnl_sgemm(ta == Trans::No ? 'N' : 'T', tb == Trans::No ? 'N' : 'T', m, n, k, alpha, a, lda, b, ldb, beta, c, n),
          "sgemm");
}

std::string describe() {
    const dnnl_version_t* v = dnnl_version();
    std::string kernel = "?";
    try {
        // The first layer's forward GEMM at batch 32: the kernel oneDNN generates for this processor.
        const Key key{32, 512, 784, Trans::No, Trans::Yes, omp_get_max_threads()};
        kernel = make_pd(context(), key).impl_info_str();
    } catch (const dnnl::error&) {
    }
    return fmt::format("oneDNN {}.{}.{} ({})", v->major, v->minor, v->patch, kernel);
}

}  // namespace cumnist::cpu::onednn
