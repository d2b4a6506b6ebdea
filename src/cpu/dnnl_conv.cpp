// oneDNN convolution primitives for the CPU backend, created once per (geometry, direction,
// thread count) and reused, like the matmuls of dnnl_gemm.cpp. Activations come in the layouts
// their geometry names (NCHW, or nChw8c/nChw16c between convolutions and poolings) and weights in the
// flat buffer's OIHW layout; each primitive runs in the layouts it chooses (its fast AVX-512
// kernels want channel-blocked ones), with reorders to and from the caller's around it wherever
// the two differ (docs/PERFORMANCE.md measures them). algorithm::convolution_direct: never
// Winograd, whose transforms change the rounding.
#include "dnnl_conv.h"

#include <omp.h>

#include <dnnl.hpp>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "dnnl_common.h"

namespace cumnist::cpu::onednn {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dims = memory::dims;

enum class Direction { Forward, BackwardData, BackwardWeights, Backward };

struct Key {
    Conv2dGeometry g;
    Direction direction;
    int threads;
    bool relu = false;  // Forward: a ReLU post-op
    auto tie() const {
        return std::tie(g.n, g.in_c, g.in_h, g.in_w, g.out_c, g.k_h, g.k_w, g.stride_h, g.stride_w, g.pad_top,
                        g.pad_left, g.pad_bottom, g.pad_right, g.src_layout, g.dst_layout, direction, threads, relu);
    }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
};

// One argument of a primitive. `user` is in the caller's layout and is bound to the caller's
// pointer on every call. When the primitive runs faster in a blocked layout of its own choosing
// (format_tag::any; e.g. nChw16c for AVX-512's direct convolutions), `inner` holds the argument in
// that layout (allocated once, here) and `reorder` converts it: user → inner before the primitive
// for an input, inner → user after it for an output.
struct Arg {
    int id = 0;
    bool output = false;
    bool shared = false;  // `inner` is another primitive's, reordered into by it (Backward's dy)
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

    // `share`: an input argument of another entry already in layout `chosen`, used as it is.
    void add(int id, bool output, const memory::desc& plain, const memory::desc& chosen, const dnnl::engine& engine,
             const Arg* share = nullptr) {
        Arg a;
        a.id = id;
        a.output = output;
        a.user = memory(plain, engine, DNNL_MEMORY_NONE);
        if (share != nullptr && share->inner && !output && share->inner.get_desc() == chosen) {
            a.inner = share->inner;
            a.shared = true;
        } else if (chosen != plain) {
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
    // Binds the pointers (in the order the arguments were added) and runs the primitive, with the
    // reorders into and out of its layouts around it.
    void run(std::initializer_list<const float*> pointers, const char* what) {
        std::size_t i = 0;
        // oneDNN only reads the inputs; its memory objects take non-const handles.
        for (const float* p : pointers)
            check(dnnl_memory_set_data_handle(args[i++].user.get(), const_cast<float*>(p)), "binding");
        for (const Arg& a : args)
            if (a.inner && !a.output && !a.shared) execute(a.reorder, 2, a.reorder_args, "reordering a convolution input");
        execute(primitive, static_cast<int>(exec_args.size()), exec_args.data(), what);
        for (const Arg& a : args)
            if (a.inner && a.output) execute(a.reorder, 2, a.reorder_args, "reordering a convolution output");
    }
};

// Backward: backward-weights with the bias gradient, then backward-data, which takes dy in the
// layout backward-weights reordered it into when the two agree (one reorder of dy, not two).
struct BackwardEntry {
    Entry weights;  // x, dy, dw, db
    Entry data;     // dy, w, dx
};

struct Descs {
    memory::desc src, weights, bias, dst;
    Dims strides, pad_l, pad_r;
};

Tag tag(ImageLayout layout) {
    switch (layout) {
        case ImageLayout::Nchw: return Tag::nchw;
        case ImageLayout::Nchw8c: return Tag::nChw8c;
        case ImageLayout::Nchw16c: return Tag::nChw16c;
    }
    return Tag::nchw;
}

// The model's layouts (the geometry's image layouts, oihw weights, a plain bias), or with
// Tag::any what the primitive prefers.
Descs descs(const Conv2dGeometry& g, bool any) {
    const auto f32 = memory::data_type::f32;
    Descs d;
    d.src = memory::desc({g.n, g.in_c, g.in_h, g.in_w}, f32, any ? Tag::any : tag(g.src_layout));
    d.weights = memory::desc({g.out_c, g.in_c, g.k_h, g.k_w}, f32, any ? Tag::any : Tag::oihw);
    d.bias = memory::desc({g.out_c}, f32, Tag::x);
    d.dst = memory::desc({g.n, g.out_c, g.out_h(), g.out_w()}, f32, any ? Tag::any : tag(g.dst_layout));
    d.strides = {g.stride_h, g.stride_w};
    d.pad_l = {g.pad_top, g.pad_left};
    d.pad_r = {g.pad_bottom, g.pad_right};
    return d;
}

dnnl::primitive_attr user_scratchpad(bool relu = false) {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // allocated here, once, not per call
    if (relu) {
        // clip to [0, +inf): v > 0 ? v : 0, exactly cumnist's ReLU (NaN and -0 give +0) in oneDNN's
        // reference formula and its JIT kernels alike (eltwise_relu's reference keeps NaN and -0).
        dnnl::post_ops ops;
        const float inf = std::numeric_limits<float>::infinity();
#if DNNL_VERSION_MAJOR >= 3
        ops.append_eltwise(dnnl::algorithm::eltwise_clip, 0.0f, inf);
#else
        ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_clip, 0.0f, inf);
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
        case Direction::Backward: throw Error("convolution backward is made by create_backward");
    }
    return e;
}

BackwardEntry create_backward(const dnnl::engine& engine, const Conv2dGeometry& g) {
    const Descs plain = descs(g, false), d = descs(g, true);
    const auto alg = dnnl::algorithm::convolution_direct;
    const auto fwd = forward_pd(engine, d);
#if DNNL_VERSION_MAJOR >= 3
    const dnnl::convolution_backward_weights::primitive_desc wpd(engine, alg, d.src, d.weights, d.bias, d.dst, d.strides,
                                                                 d.pad_l, d.pad_r, fwd, user_scratchpad());
    const dnnl::convolution_backward_data::primitive_desc dpd(engine, alg, d.src, d.weights, d.dst, d.strides, d.pad_l,
                                                              d.pad_r, fwd, user_scratchpad());
#else
    const dnnl::convolution_backward_weights::primitive_desc wpd(
        {alg, d.src, d.weights, d.bias, d.dst, d.strides, d.pad_l, d.pad_r}, user_scratchpad(), engine, fwd);
    const dnnl::convolution_backward_data::primitive_desc dpd(
        {alg, d.src, d.weights, d.dst, d.strides, d.pad_l, d.pad_r}, user_scratchpad(), engine, fwd);
#endif
    BackwardEntry e;
    e.weights.primitive = dnnl::convolution_backward_weights(wpd);
    e.weights.add(DNNL_ARG_SRC, false, plain.src, wpd.src_desc(), engine);
    e.weights.add(DNNL_ARG_DIFF_DST, false, plain.dst, wpd.diff_dst_desc(), engine);
    e.weights.add(DNNL_ARG_DIFF_WEIGHTS, true, plain.weights, wpd.diff_weights_desc(), engine);
    e.weights.add(DNNL_ARG_DIFF_BIAS, true, plain.bias, wpd.diff_bias_desc(), engine);
    e.weights.finish(wpd.scratchpad_desc(), engine);
    e.data.primitive = dnnl::convolution_backward_data(dpd);
    e.data.add(DNNL_ARG_DIFF_DST, false, plain.dst, dpd.diff_dst_desc(), engine, &e.weights.args[1]);
    e.data.add(DNNL_ARG_WEIGHTS, false, plain.weights, dpd.weights_desc(), engine);
    e.data.add(DNNL_ARG_DIFF_SRC, true, plain.src, dpd.diff_src_desc(), engine);
    e.data.finish(dpd.scratchpad_desc(), engine);
    return e;
}

const char* name(Direction d) {
    switch (d) {
        case Direction::Forward: return "convolution forward";
        case Direction::BackwardData: return "convolution backward-data";
        case Direction::BackwardWeights: return "convolution backward-weights";
        case Direction::Backward: return "convolution backward";
    }
    return "convolution";
}

// This thread's cached entry of `key`, created on first use.
template <class E, class Create>
E& cached(const Key& key, Create create) {
    thread_local std::map<Key, E> cache;
    auto it = cache.find(key);
    if (it == cache.end()) {
        // A run uses a few geometries per layer (the training batch, a short last batch, the
        // evaluation batch). Bound what a caller cycling through many can accumulate.
        constexpr std::size_t kMaxCached = 64;
        if (cache.size() >= kMaxCached) cache.clear();
        const Conv2dGeometry& g = key.g;
        try {
            it = cache.emplace(key, create(thread_engine().engine)).first;
        } catch (const dnnl::error& e) {
            throw Error(fmt::format("oneDNN: cannot create a {} for {}x{}x{}x{} images and {}x{}x{}x{} filters: {}",
                                    name(key.direction), g.n, g.in_c, g.in_h, g.in_w, g.out_c, g.in_c, g.k_h, g.k_w,
                                    e.what()));
        }
    }
    return it->second;
}

void run(const Conv2dGeometry& g, Direction direction, std::initializer_list<const float*> pointers,
         bool relu = false) {
    const Key key{g, direction, omp_get_max_threads(), relu};
    cached<Entry>(key, [&](const dnnl::engine& engine) { return create(engine, key); }).run(pointers, name(direction));
}

}  // namespace

ImageLayouts preferred_layouts(const Conv2dGeometry& g) {
    const Conv2dGeometry one = g.with_batch(1);  // the choice depends on the CPU, not on the batch
    const Descs d = descs(one, true);
    dnnl::convolution_forward::primitive_desc pd;
    try {
        pd = forward_pd(thread_engine().engine, d);
    } catch (const dnnl::error&) {
        return {};  // no primitive for g: its ops will say why; NCHW costs nothing here
    }
    // The ImageLayout whose oneDNN tag gives exactly the chosen desc, for a channel count that
    // fills its blocks (a padded blocked tensor is larger than the model's NCHW one).
    auto layout_of = [](const memory::desc& chosen, const memory::dims& dims) {
        for (ImageLayout l : {ImageLayout::Nchw16c, ImageLayout::Nchw8c, ImageLayout::Nchw})
            if (dims[1] % channel_block(l) == 0 && chosen == memory::desc(dims, memory::data_type::f32, tag(l))) return l;
        return ImageLayout::Nchw;
    };
    ImageLayouts out;
    out.src = layout_of(pd.src_desc(), {1, g.in_c, g.in_h, g.in_w});
    out.dst = layout_of(pd.dst_desc(), {1, g.out_c, g.out_h(), g.out_w()});
    return out;
}

void conv_forward(float* y, const float* x, const float* w, const float* bias, const Conv2dGeometry& g, bool relu) {
    run(g, Direction::Forward, {x, w, bias, y}, relu);
}

void conv_backward_data(float* dx, const float* dy, const float* w, const Conv2dGeometry& g) {
    run(g, Direction::BackwardData, {dy, w, dx});
}

void conv_backward_weights(float* dw, const float* dy, const float* x, const Conv2dGeometry& g) {
    run(g, Direction::BackwardWeights, {x, dy, dw});
}

void conv_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                   const Conv2dGeometry& g) {
    const Key key{g, Direction::Backward, omp_get_max_threads()};
    BackwardEntry& e =
        cached<BackwardEntry>(key, [&](const dnnl::engine& engine) { return create_backward(engine, g); });
    e.weights.run({x, dy, dw, db}, "convolution backward-weights");
    if (dx != nullptr) e.data.run({dy, w, dx}, "convolution backward-data");
}

}  // namespace cumnist::cpu::onednn
