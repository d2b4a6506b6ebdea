// oneDNN convolution primitives for the CPU backend, created once per (geometry, direction,
// thread count) and reused, like the matmuls of dnnl_gemm.cpp. Activations stay in the model's
// plain NCHW layout and weights in the flat buffer's OIHW layout between ops; each primitive runs in
// the layouts it chooses (its fast AVX-512 kernels want channel-blocked ones), with reorders to and
// from the plain ones around it, which cost a small fraction of a convolution (measured: see
// docs/PERFORMANCE.md). algorithm::convolution_direct: never Winograd, whose transforms change the
// rounding.
#include "dnnl_conv.h"

#include <omp.h>

#include <dnnl.hpp>
#include <map>
#include <tuple>
#include <vector>

#include "dnnl_common.h"

namespace cumnist::cpu::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dims = memory::dims;

enum class Direction { Forward, BackwardData, BackwardWeights };

struct Key {
    Conv2dGeometry g;
    Direction direction;
    int threads;
    bool relu = false;  // Forward: a ReLU post-op
    auto tie() const {
        return std::tie(g.n, g.in_c, g.in_h, g.in_w, g.out_c, g.k_h, g.k_w, g.stride_h, g.stride_w, g.pad_top,
                        g.pad_left, g.pad_bottom, g.pad_right, direction, threads, relu);
    }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
};

// One argument of a primitive. `user` is in the model's plain layout and is bound to the caller's
// pointer on every call. When the primitive runs faster in a blocked layout of its own choosing
// (format_tag::any; e.g. nChw16c for AVX-512's direct convolutions), `inner` holds the argument in
// that layout (allocated once, here) and `reorder` converts it: user → inner before the primitive
// for an input, inner → user after it for an output.
struct Arg {
    int id = 0;
    bool output = false;
    memory user, inner;
    dnnl::reorder reorder;
    dnnl_exec_arg_t reorder_args[2];
};

// The primitive and its arguments (in the order the caller passes pointers), and its scratchpad,
// allocated once.
struct Entry {
    dnnl::primitive primitive;
    std::vector<Arg> args;
    memory scratchpad;
    std::vector<dnnl_exec_arg_t> exec_args;

    void add(int id, bool output, const memory::desc& plain, const memory::desc& chosen, const dnnl::engine& engine) {
        Arg a;
        a.id = id;
        a.output = output;
        a.user = memory(plain, engine, DNNL_MEMORY_NONE);
        if (chosen != plain) {
            a.inner = memory(chosen, engine);
            a.reorder = output ? dnnl::reorder(a.inner, a.user) : dnnl::reorder(a.user, a.inner);
            a.reorder_args[0] = {DNNL_ARG_FROM, (output ? a.inner : a.user).get()};
            a.reorder_args[1] = {DNNL_ARG_TO, (output ? a.user : a.inner).get()};
        }
        args.push_back(std::move(a));
    }
    // After every add(): the primitive's argument list, pointing at each argument's layout of use.
    void finish(const memory::desc& scratchpad_desc, const dnnl::engine& engine) {
        for (const Arg& a : args) exec_args.push_back({a.id, (a.inner ? a.inner : a.user).get()});
        if (scratchpad_desc.get_size() > 0) {
            scratchpad = memory(scratchpad_desc, engine);
            exec_args.push_back({DNNL_ARG_SCRATCHPAD, scratchpad.get()});
        }
    }
};

struct Descs {
    memory::desc src, weights, bias, dst;
    Dims strides, pad_l, pad_r;
};

// The plain layouts of the model (tag nchw/oihw/x), or with Tag::any what the primitive prefers.
Descs descs(const Conv2dGeometry& g, bool any) {
    const auto f32 = memory::data_type::f32;
    Descs d;
    d.src = memory::desc({g.n, g.in_c, g.in_h, g.in_w}, f32, any ? Tag::any : Tag::nchw);
    d.weights = memory::desc({g.out_c, g.in_c, g.k_h, g.k_w}, f32, any ? Tag::any : Tag::oihw);
    d.bias = memory::desc({g.out_c}, f32, Tag::x);
    d.dst = memory::desc({g.n, g.out_c, g.out_h(), g.out_w()}, f32, any ? Tag::any : Tag::nchw);
    d.strides = {g.stride_h, g.stride_w};
    d.pad_l = {g.pad_top, g.pad_left};
    d.pad_r = {g.pad_bottom, g.pad_right};
    return d;
}

dnnl::primitive_attr user_scratchpad(bool relu = false) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // allocated here, once, not per call
    if (relu) {
        // eltwise_relu with alpha 0: max(v, 0) on the output.
        dnnl::post_ops ops;
#if DNNL_VERSION_MAJOR >= 3
        ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
#else
        ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
#endif
        attr.set_post_ops(ops);
    }
    return attr;
}

dnnl::convolution_forward::primitive_desc forward_pd(const dnnl::engine& engine, const Descs& d, bool relu = false) {
    const auto prop = dnnl::prop_kind::forward_training;
    const auto alg = dnnl::algorithm::convolution_direct;
#if DNNL_VERSION_MAJOR >= 3
    return {engine, prop, alg, d.src, d.weights, d.bias, d.dst, d.strides, d.pad_l, d.pad_r, user_scratchpad(relu)};
#else
    return {{prop, alg, d.src, d.weights, d.bias, d.dst, d.strides, d.pad_l, d.pad_r}, user_scratchpad(relu), engine};
#endif
}

Entry create(const dnnl::engine& engine, const Key& key) {
    const Descs plain = descs(key.g, false), d = descs(key.g, true);
    const auto alg = dnnl::algorithm::convolution_direct;
    const auto fwd = forward_pd(engine, d);  // the backward primitives take it as their hint
    Entry e;
    switch (key.direction) {
        case Direction::Forward: {
            const auto pd = key.relu ? forward_pd(engine, d, true) : fwd;
            e.primitive = dnnl::convolution_forward(pd);
            e.add(DNNL_ARG_SRC, false, plain.src, pd.src_desc(), engine);
            e.add(DNNL_ARG_WEIGHTS, false, plain.weights, pd.weights_desc(), engine);
            e.add(DNNL_ARG_BIAS, false, plain.bias, pd.bias_desc(), engine);
            e.add(DNNL_ARG_DST, true, plain.dst, pd.dst_desc(), engine);
            e.finish(pd.scratchpad_desc(), engine);
            break;
        }
        case Direction::BackwardData: {
#if DNNL_VERSION_MAJOR >= 3
            const dnnl::convolution_backward_data::primitive_desc pd(engine, alg, d.src, d.weights, d.dst, d.strides,
                                                                     d.pad_l, d.pad_r, fwd, user_scratchpad());
#else
            const dnnl::convolution_backward_data::primitive_desc pd(
                {alg, d.src, d.weights, d.dst, d.strides, d.pad_l, d.pad_r}, user_scratchpad(), engine, fwd);
#endif
            e.primitive = dnnl::convolution_backward_data(pd);
            e.add(DNNL_ARG_DIFF_DST, false, plain.dst, pd.diff_dst_desc(), engine);
            e.add(DNNL_ARG_WEIGHTS, false, plain.weights, pd.weights_desc(), engine);
            e.add(DNNL_ARG_DIFF_SRC, true, plain.src, pd.diff_src_desc(), engine);
            e.finish(pd.scratchpad_desc(), engine);
            break;
        }
        case Direction::BackwardWeights: {
#if DNNL_VERSION_MAJOR >= 3
            const dnnl::convolution_backward_weights::primitive_desc pd(engine, alg, d.src, d.weights, d.dst, d.strides,
                                                                        d.pad_l, d.pad_r, fwd, user_scratchpad());
#else
            const dnnl::convolution_backward_weights::primitive_desc pd(
                {alg, d.src, d.weights, d.dst, d.strides, d.pad_l, d.pad_r}, user_scratchpad(), engine, fwd);
#endif
            e.primitive = dnnl::convolution_backward_weights(pd);
            e.add(DNNL_ARG_SRC, false, plain.src, pd.src_desc(), engine);
            e.add(DNNL_ARG_DIFF_DST, false, plain.dst, pd.diff_dst_desc(), engine);
            e.add(DNNL_ARG_DIFF_WEIGHTS, true, plain.weights, pd.diff_weights_desc(), engine);
            e.finish(pd.scratchpad_desc(), engine);
            break;
        }
    }
    return e;
}

const char* name(Direction d) {
    switch (d) {
        case Direction::Forward: return "convolution forward";
        case Direction::BackwardData: return "convolution backward-data";
        case Direction::BackwardWeights: return "convolution backward-weights";
    }
    return "convolution";
}

// Binds the pointers (in the order the entry's arguments were bound) and runs the primitive.
void run(const Conv2dGeometry& g, Direction direction, std::initializer_list<const float*> pointers,
         bool relu = false) {
    thread_local std::map<Key, Entry> cache;
    const Key key{g, direction, omp_get_max_threads(), relu};
    auto it = cache.find(key);
    if (it == cache.end()) {
        // A run uses a few geometries per layer (the training batch, a short last batch, the
        // evaluation batch). Bound what a caller cycling through many can accumulate.
        constexpr std::size_t kMaxCached = 64;
        if (cache.size() >= kMaxCached) cache.clear();
        try {
            it = cache.emplace(key, create(thread_engine().engine, key)).first;
        } catch (const dnnl::error& e) {
            throw Error(fmt::format("oneDNN: cannot create a {} for {}x{}x{}x{} images and {}x{}x{}x{} filters: {}",
                                    name(direction), g.n, g.in_c, g.in_h, g.in_w, g.out_c, g.in_c, g.k_h, g.k_w,
                                    e.what()));
        }
    }
    Entry& e = it->second;
    std::size_t i = 0;
    // oneDNN only reads the inputs; its memory objects take non-const handles.
    for (const float* p : pointers) check(dnnl_memory_set_data_handle(e.args[i++].user.get(), const_cast<float*>(p)), "binding");
    for (const Arg& a : e.args)
        if (a.inner && !a.output) execute(a.reorder, 2, a.reorder_args, "reordering a convolution input");
    execute(e.primitive, static_cast<int>(e.exec_args.size()), e.exec_args.data(), name(direction));
    for (const Arg& a : e.args)
        if (a.inner && a.output) execute(a.reorder, 2, a.reorder_args, "reordering a convolution output");
}

}  // namespace

void conv_forward(float* y, const float* x, const float* w, const float* bias, const Conv2dGeometry& g, bool relu) {
    run(g, Direction::Forward, {x, w, bias, y}, relu);
}

void conv_backward_data(float* dx, const float* dy, const float* w, const Conv2dGeometry& g) {
    run(g, Direction::BackwardData, {dy, w, dx});
}

void conv_backward_weights(float* dw, const float* dy, const float* x, const Conv2dGeometry& g) {
    run(g, Direction::BackwardWeights, {x, dy, dw});
}

}  // namespace cumnist::cpu::onednn
