// The CPU backend: oneDNN GEMMs (dnnl_gemm.cpp) and OpenMP loops, one function per op of backend_ops.inc.
// The per-element formulas (dropout keep test, optimizer updates) come from philox.h, shared
// with the CUDA kernels. Every loop runs in a fixed order, so results are deterministic for a
// given thread count.
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "backend.h"
#include "cumnist/philox.h"
#include "dnnl_conv.h"
#include "dnnl_gemm.h"
#include "philox_blocks.h"

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace cumnist::cpu {
namespace {

// Below this many elements a loop is not worth an OpenMP fork/join (a few microseconds with the
// pool's threads spinning). The threshold is low enough that the batch-32 epilogues of the hidden
// layers (8,192 and 16,384 elements) use both cores instead of leaving one waiting.
constexpr std::size_t kParallelThreshold = 1 << 12;

template <Activation kAct>
inline float activate(float x) {
    if constexpr (kAct == Activation::Relu) return x > 0.0f ? x : 0.0f;
    else if constexpr (kAct == Activation::Sigmoid) return 1.0f / (1.0f + std::exp(-x));
    else if constexpr (kAct == Activation::Tanh) return std::tanh(x);
    else return x;
}

// keep ? v : +0.0f as bit operations: the same value, but a loop of them vectorises (GCC does not
// if-convert the conditional expression).
inline float select_or_zero(bool keep, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits &= 0u - static_cast<uint32_t>(keep);
    std::memcpy(&v, &bits, sizeof v);
    return v;
}

// f(tag) with tag an std::integral_constant of `act`: one instantiation per activation, so the
// element loops carry no switch and vectorise.
template <class F>
void with_activation(Activation act, F&& f) {
    switch (act) {
        case Activation::Relu: f(std::integral_constant<Activation, Activation::Relu>{}); return;
        case Activation::Sigmoid: f(std::integral_constant<Activation, Activation::Sigmoid>{}); return;
        case Activation::Tanh: f(std::integral_constant<Activation, Activation::Tanh>{}); return;
        case Activation::None: f(std::integral_constant<Activation, Activation::None>{}); return;
    }
}

// act'(pre) expressed through the saved output a = act(pre): sigmoid' = a (1 − a), tanh' = 1 − a²,
// none' = 1. (ReLU's backward reads the dropout output instead; see act_dropout_backward.)
inline float activation_derivative(Activation act, float a) {
    switch (act) {
        case Activation::Sigmoid: return a * (1.0f - a);
        case Activation::Tanh: return 1.0f - a * a;
        default: return 1.0f;
    }
}

// Calls f(first, last, words) for each block of 64 elements of [0, total), the blocks spread over
// the threads: words[e] is the Philox word of element first + e, the word dropout_keep() draws for
// it (sixteen Philox groups at once with AVX-512, eight with AVX2, else one philox_group() each).
template <class F>
void for_each_dropout_block(uint64_t seed, uint32_t stream, uint64_t t, std::size_t total, F&& f) {
    const std::size_t n_blocks = (total + kPhiloxBlock - 1) / kPhiloxBlock;
    const PhiloxPath path = best_philox_path();
#pragma omp parallel for schedule(static) if (total >= kParallelThreshold)
    for (std::size_t blk = 0; blk < n_blocks; ++blk) {
        uint32_t words[kPhiloxBlock];
        block_words(seed, stream, t, blk, path, words);
        const std::size_t first = kPhiloxBlock * blk, last = std::min(total, first + kPhiloxBlock);
        f(first, last, words);
    }
}

// MXCSR bits: FTZ (15) flushes denormal results to zero, DAZ (6) reads denormal inputs as zero.
void set_flush_denormals() {
#if defined(__x86_64__)
    _mm_setcsr(_mm_getcsr() | 0x8040u);
#endif
}

}  // namespace

void prepare_thread() {
    thread_local bool ready = false;
    if (ready) return;
    set_flush_denormals();
    // One region over this thread's OpenMP threads: it starts its pool, so every worker has the
    // flag; threads added to the pool later are created by this thread and inherit its floating-
    // point environment. (Not all cores: a sweep's K trial threads would make K pools of them.)
#pragma omp parallel num_threads(omp_get_max_threads())
    set_flush_denormals();
    ready = true;
}

void gemm(float* c, const float* a, const float* b, int m, int n, int k, Trans ta, Trans tb, float alpha, float beta) {
    if (k == 0) {  // an empty sum: C = beta · C, and beta == 0 an overwrite even over NaN
        for (std::size_t i = 0; i < static_cast<std::size_t>(m) * n; ++i) c[i] = beta == 0.0f ? 0.0f : beta * c[i];
        return;
    }
    // Training and inference only ever overwrite with alpha = 1: the cached matmul primitive.
    if (alpha == 1.0f && beta == 0.0f) onednn::matmul(c, a, ta, b, tb, m, n, k);
    else onednn::sgemm(c, a, ta, b, tb, m, n, k, alpha, beta);
}

void bias_act_dropout_forward(float* h, float* a, const float* bias, int n, int cols, Activation act, float rate,
                              uint32_t keep_threshold, uint64_t seed, uint32_t stream, bool dropout,
                              const uint64_t* step) {
    const std::size_t total = static_cast<std::size_t>(n) * cols;
    with_activation(act, [&](auto tag) {
        constexpr Activation kAct = decltype(tag)::value;
        if (!dropout) {
#pragma omp parallel for schedule(static) if (total >= kParallelThreshold)
            for (int r = 0; r < n; ++r) {
                float* ar = a + static_cast<std::size_t>(r) * cols;
                float* hr = h + static_cast<std::size_t>(r) * cols;  // may be ar
#pragma omp simd
                for (int c = 0; c < cols; ++c) hr[c] = ar[c] = activate<kAct>(ar[c] + bias[c]);
            }
            return;
        }
        // With dropout, walk the elements in blocks of 64: each run of consecutive columns inside a
        // block is one vector loop.
        const float scale = 1.0f / (1.0f - rate);
        for_each_dropout_block(seed, stream, *step, total, [&](std::size_t first, std::size_t last, const uint32_t* words) {
            int c = static_cast<int>(first % static_cast<std::size_t>(cols));
            for (std::size_t i = first; i < last;) {
                const int run = static_cast<int>(std::min<std::size_t>(last - i, static_cast<std::size_t>(cols - c)));
                float* ai = a + i;
                float* hi = h + i;  // does not alias a (ops.h)
                const float* bc = bias + c;
                const uint32_t* wi = words + (i - first);
#pragma omp simd
                for (int k = 0; k < run; ++k) {
                    const float y = activate<kAct>(ai[k] + bc[k]);
                    ai[k] = y;
                    hi[k] = select_or_zero(wi[k] < keep_threshold, y * scale);
                }
                i += static_cast<std::size_t>(run);
                c = 0;
            }
        });
    });
}

namespace {
void act_dropout_backward_only(float* dpre, const float* dh, const float* saved, int n, int cols, Activation act,
                               float rate, uint32_t keep_threshold, uint64_t seed, uint32_t stream, bool dropout,
                               const uint64_t* step) {
    const std::size_t total = static_cast<std::size_t>(n) * cols;
    if (act == Activation::Relu) {
        // saved is the forward's output h: h > 0 exactly when the unit was kept and active.
        const float scale = dropout ? 1.0f / (1.0f - rate) : 1.0f;
        // (dpre may be dh: element i is read before it is written, so the loop vectorises.)
#pragma omp parallel for simd schedule(static) if (total >= kParallelThreshold)
        for (std::size_t i = 0; i < total; ++i) dpre[i] = select_or_zero(saved[i] > 0.0f, dh[i] * scale);
        return;
    }
    const float* a = saved;  // the activation before dropout
    if (!dropout) {
#pragma omp parallel for schedule(static) if (total >= kParallelThreshold)
        for (std::size_t i = 0; i < total; ++i) dpre[i] = dh[i] * activation_derivative(act, a[i]);
        return;
    }
    // ∂loss/∂pre = ∂loss/∂h · act'(a) · keep / (1 − rate), the keep bits redrawn from Philox in
    // the forward's blocks of 64 elements.
    const float scale = 1.0f / (1.0f - rate);
    for_each_dropout_block(seed, stream, *step, total, [&](std::size_t first, std::size_t last, const uint32_t* words) {
        for (std::size_t i = first; i < last; ++i) {
            const float grad = dh[i] * activation_derivative(act, a[i]);
            dpre[i] = select_or_zero(words[i - first] < keep_threshold, grad * scale);
        }
    });
}
}  // namespace

void act_dropout_backward(float* dpre, const float* dh, const float* saved, int n, int cols, Activation act,
                          float rate, uint32_t keep_threshold, uint64_t seed, uint32_t stream, bool dropout,
                          const uint64_t* step, float* db) {
    act_dropout_backward_only(dpre, dh, saved, n, cols, act, rate, keep_threshold, seed, stream, dropout, step);
    if (db != nullptr) bias_grad(db, dpre, n, cols);
}

void act_dropout_backward_through(float* dpre, const float* dy_next, const float* w_next, int k, const float* saved,
                                  int n, int cols, Activation act, float rate, uint32_t keep_threshold, uint64_t seed,
                                  uint32_t stream, bool dropout, const uint64_t* step, float* db) {
    // The two ops the unfused step runs: the next layer's dx GEMM into dpre, then the epilogue in place.
    gemm(dpre, dy_next, w_next, n, cols, k, Trans::No, Trans::No, 1.0f, 0.0f);
    act_dropout_backward(dpre, dpre, saved, n, cols, act, rate, keep_threshold, seed, stream, dropout, step, db);
}

void act_dropout_forward(float* y, const float* x, int n, int cols, Activation act, float rate, uint32_t keep_threshold,
                         uint64_t seed, uint32_t stream, bool dropout, const uint64_t* step) {
    const std::size_t total = static_cast<std::size_t>(n) * cols;
    with_activation(act, [&](auto tag) {
        constexpr Activation kAct = decltype(tag)::value;
        if (!dropout) {
            // (y may be x: element i is read before it is written.) The pointers as locals: read
            // through the lambda's captured references, they made the loop a gather per element.
            float* const yp = y;
            const float* const xp = x;
#pragma omp parallel for simd schedule(static) if (total >= kParallelThreshold)
            for (std::size_t i = 0; i < total; ++i) yp[i] = activate<kAct>(xp[i]);
            return;
        }
        // The keep bits in bias_act_dropout_forward's blocks of 64 elements (the same masks).
        const float scale = 1.0f / (1.0f - rate);
        for_each_dropout_block(seed, stream, *step, total, [&](std::size_t first, std::size_t last, const uint32_t* words) {
#pragma omp simd
            for (std::size_t i = first; i < last; ++i)
                y[i] = select_or_zero(words[i - first] < keep_threshold, activate<kAct>(x[i]) * scale);
        });
    });
}

void bias_grad(float* db, const float* dy, int n, int cols) {
    // db[c] = Σ_r dy[r, c]: rows in order, columns vectorised; threads own disjoint column blocks.
    constexpr int kBlock = 64;
    const int n_blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (static_cast<std::size_t>(n) * cols >= kParallelThreshold)
    for (int blk = 0; blk < n_blocks; ++blk) {
        const int c0 = blk * kBlock, c1 = std::min(cols, c0 + kBlock);
        float acc[kBlock] = {};
        for (int r = 0; r < n; ++r) {
            const float* row = dy + static_cast<std::size_t>(r) * cols;
            for (int c = c0; c < c1; ++c) acc[c - c0] += row[c];
        }
        std::copy(acc, acc + (c1 - c0), db + c0);
    }
}

namespace {

// G floats (or int32s) as one value: a vector register or two of whatever ISA this is built for
// (GCC's vector extensions; element-wise operators, comparisons giving 0 / −1 masks, and
// mask ? a : b selects).
template <int G>
struct Lanes {
    // (typedef: GCC drops the attribute from an alias declaration whose size depends on G.)
    typedef float F __attribute__((vector_size(G * sizeof(float))));
    typedef int32_t I __attribute__((vector_size(G * sizeof(int32_t))));
    static_assert(sizeof(F) == G * sizeof(float) && sizeof(I) == G * sizeof(int32_t), "one value per lane");
    // (Vectors wider than the ISA's registers pass through these by reference: no ABI question.)
    template <class V, class T>
    static void load(V& v, const T* p) {
        std::memcpy(&v, p, sizeof v);
    }
    template <class V, class T>
    static void store(T* p, const V& v) {
        std::memcpy(p, &v, sizeof v);
    }
};

// Offset of channel c at plane position pos within one image of a layout with channel block
// `block` (1: NCHW).
inline std::size_t channel_offset(int block, std::size_t c, std::size_t pos, std::size_t plane) {
    if (block == 1) return c * plane + pos;
    const auto b = static_cast<std::size_t>(block);
    return (c / b) * b * plane + pos * b + c % b;
}

// Channels [c0, c0 + G) at plane position pos of one image in a layout with channel block `block`
// (c0 a multiple of G): one vector of the block when block == G, else gathered.
template <int G, class V, class T>
void load_channels(V& v, const T* image, int block, std::size_t c0, std::size_t pos, std::size_t plane) {
    if (block == G) {
        Lanes<G>::load(v, image + c0 * plane + pos * G);
        return;
    }
    std::remove_const_t<T> lanes[G];
    for (int l = 0; l < G; ++l) lanes[l] = image[channel_offset(block, c0 + l, pos, plane)];
    Lanes<G>::load(v, lanes);
}

// The backward-weights (and bias) of a first layer whose input has fewer channels than a block
// (MNIST's one): oneDNN pads that input to a whole block of 8 or 16 channels and does as many
// times the work. Here every filter tap is a vector of G output channels (G the block of dy's
// layout, or 8 for NCHW), accumulated over an image's output positions in row-major order, the
// images' sums then added in order: per output channel the same order in every layout and for
// any thread count. The threads share the images (each image's sums go to the workspace), then
// the vectors of the sums over images, so that a layer of a single group of channels keeps both
// threads busy too.
constexpr int kMaxNarrowTaps = 64;                       // in_c · k_h · k_w of the convolutions taken this way
constexpr std::size_t kNarrowChunkBytes = 1 << 20;       // the per-image sums of at most this many bytes at once

bool narrow_first_layer(const Conv2dGeometry& g) {
    return g.in_c < 8 && g.in_c * g.k_h * g.k_w <= kMaxNarrowTaps && g.out_c % 8 == 0 &&
           g.src_layout == ImageLayout::Nchw;
}

// One image's sums, in floats: out_c per filter tap and out_c for the bias.
std::size_t narrow_image_floats(const Conv2dGeometry& g) {
    return static_cast<std::size_t>(g.out_c) * (static_cast<std::size_t>(g.in_c) * g.k_h * g.k_w + 1);
}
// Images whose sums the workspace holds at once (g.n or fewer).
int narrow_chunk(const Conv2dGeometry& g) {
    const std::size_t fit = kNarrowChunkBytes / (narrow_image_floats(g) * sizeof(float));
    return static_cast<int>(std::clamp<std::size_t>(fit, 1, static_cast<std::size_t>(std::max(g.n, 1))));
}
// A chunk's per-image sums, then the running totals.
std::size_t narrow_workspace_bytes(const Conv2dGeometry& g) {
    return (static_cast<std::size_t>(narrow_chunk(g)) + 1) * narrow_image_floats(g) * sizeof(float);
}

template <class Fn, int... I>
inline void unrolled(Fn&& fn, std::integer_sequence<int, I...>) {
    (fn(std::integral_constant<int, I>{}), ...);
}

// One image's sums for output channels [c0, c0 + G): out[t] (a vector of G) = Σ over output
// positions in row-major order of dy · the input under filter tap t, out[taps] = Σ dy. IC, KH, KW
// > 0: those extents fixed at compile time, every tap a named accumulator (registers, not a stack
// array) and the bounds checked only at the image's edges; the same additions in the same order.
template <int G, int IC, int KH, int KW>
void narrow_image_sums(float* out, const float* dyi, const float* xi, std::size_t c0, const Conv2dGeometry& g) {
    using L = Lanes<G>;
    using F = typename L::F;
    const int oh = g.out_h(), ow = g.out_w(), in_h = g.in_h, in_w = g.in_w;
    const int stride_h = g.stride_h, stride_w = g.stride_w, pad_top = g.pad_top, pad_left = g.pad_left;
    const int block = channel_block(g.dst_layout);
    const std::size_t in_plane = static_cast<std::size_t>(in_h) * in_w, out_plane = static_cast<std::size_t>(oh) * ow;
    if constexpr (IC > 0 && KH > 0 && KW > 0) {
        constexpr int kTaps = IC * KH * KW;
        std::array<F, kTaps> part{};
        F part_b = {};
        // Output positions whose every tap is inside the image: rows [y0, y1), columns [x0, x1).
        const auto first_inside = [](int pad, int stride) { return (pad + stride - 1) / stride; };
        const auto end_inside = [](int in, int k, int pad, int stride, int extent) {  // oy·stride − pad + k − 1 < in
            return in - k + pad < 0 ? 0 : std::min((in - k + pad) / stride + 1, extent);
        };
        const int y0 = std::min(first_inside(pad_top, stride_h), oh), y1 = std::max(y0, end_inside(in_h, KH, pad_top, stride_h, oh));
        const int x0 = std::min(first_inside(pad_left, stride_w), ow), x1 = std::max(x0, end_inside(in_w, KW, pad_left, stride_w, ow));
        const auto position = [&](int oy, int ox, auto checked) {
            F d;
            load_channels<G>(d, dyi, block, c0, static_cast<std::size_t>(oy) * ow + ox, out_plane);
            part_b += d;
            const int iy0 = oy * stride_h - pad_top, ix0 = ox * stride_w - pad_left;
            unrolled(
                [&](auto t) {
                    constexpr int i = t / (KH * KW), ky = t / KW % KH, kx = t % KW;
                    const int iy = iy0 + ky, ix = ix0 + kx;
                    if (checked && (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w)) return;
                    std::get<t>(part) += d * xi[i * in_plane + static_cast<std::size_t>(iy) * in_w + ix];
                },
                std::make_integer_sequence<int, kTaps>{});
        };
        for (int oy = 0; oy < oh; ++oy) {
            if (oy < y0 || oy >= y1) {
                for (int ox = 0; ox < ow; ++ox) position(oy, ox, std::true_type{});
                continue;
            }
            for (int ox = 0; ox < x0; ++ox) position(oy, ox, std::true_type{});
            for (int ox = x0; ox < x1; ++ox) position(oy, ox, std::false_type{});
            for (int ox = x1; ox < ow; ++ox) position(oy, ox, std::true_type{});
        }
        for (int t = 0; t < kTaps; ++t) L::store(out + static_cast<std::size_t>(t) * G, part[t]);
        L::store(out + static_cast<std::size_t>(kTaps) * G, part_b);
    } else {
        const int in_c = g.in_c, k_h = g.k_h, k_w = g.k_w, taps = in_c * k_h * k_w;
        F part[kMaxNarrowTaps] = {}, part_b = {};
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                F d;
                load_channels<G>(d, dyi, block, c0, static_cast<std::size_t>(oy) * ow + ox, out_plane);
                part_b += d;
                for (int i = 0; i < in_c; ++i)
                    for (int ky = 0; ky < k_h; ++ky) {
                        const int iy = oy * stride_h - pad_top + ky;
                        if (iy < 0 || iy >= in_h) continue;
                        const float* row = xi + i * in_plane + static_cast<std::size_t>(iy) * in_w;
                        for (int kx = 0; kx < k_w; ++kx) {
                            const int ix = ox * stride_w - pad_left + kx;
                            if (ix < 0 || ix >= in_w) continue;
                            part[(i * k_h + ky) * k_w + kx] += d * row[ix];
                        }
                    }
            }
        for (int t = 0; t < taps; ++t) L::store(out + static_cast<std::size_t>(t) * G, part[t]);
        L::store(out + static_cast<std::size_t>(taps) * G, part_b);
    }
}

// IC, KH, KW > 0: those extents fixed at compile time (narrow_image_sums).
template <int G, int IC = 0, int KH = 0, int KW = 0>
void conv_backward_weights_narrow(float* dw, float* db, const float* dy, const float* x, const Conv2dGeometry& g,
                                  float* workspace) {
    using L = Lanes<G>;
    using F = typename L::F;
    const int taps = g.in_c * g.k_h * g.k_w, groups = g.out_c / G;
    // Vector v of an image's sums: group v / (taps + 1), tap v % (taps + 1) (the last one: the bias).
    const int vectors = groups * (taps + 1);
    const int chunk = narrow_chunk(g);
    float* const parts = workspace;
    float* const totals = parts + static_cast<std::size_t>(chunk) * vectors * G;
    const bool parallel = static_cast<std::size_t>(g.n) * g.out_size() * taps >= kParallelThreshold;
    for (int n0 = 0; n0 < g.n; n0 += chunk) {
        const int images = std::min(chunk, g.n - n0);
        const bool first = n0 == 0, last = n0 + images == g.n;
#pragma omp parallel if (parallel)
        {
#pragma omp for schedule(static)
            for (int task = 0; task < images * groups; ++task) {
                const int j = task / groups, cg = task % groups;
                const std::size_t c0 = static_cast<std::size_t>(cg) * G;
                const float* dyi = dy + static_cast<std::size_t>(n0 + j) * g.out_size();
                const float* xi = x + static_cast<std::size_t>(n0 + j) * g.in_size();
                float* out = parts + (static_cast<std::size_t>(j) * vectors + static_cast<std::size_t>(cg) * (taps + 1)) * G;
                narrow_image_sums<G, IC, KH, KW>(out, dyi, xi, c0, g);
            }
            // (the loop's barrier: every image's sums are written)
#pragma omp for schedule(static)
            for (int v = 0; v < vectors; ++v) {
                F total = {};
                if (!first) L::load(total, totals + static_cast<std::size_t>(v) * G);
                for (int j = 0; j < images; ++j) {
                    F part;
                    L::load(part, parts + (static_cast<std::size_t>(j) * vectors + v) * G);
                    total += part;
                }
                if (!last) {
                    L::store(totals + static_cast<std::size_t>(v) * G, total);
                    continue;
                }
                const std::size_t c0 = static_cast<std::size_t>(v / (taps + 1)) * G;
                const int t = v % (taps + 1);
                for (int l = 0; l < G; ++l) {
                    if (t == taps) db[c0 + l] = total[l];
                    else dw[(c0 + l) * taps + t] = total[l];
                }
            }
        }
    }
}

}  // namespace

ImageLayouts conv2d_preferred_layouts(const Conv2dGeometry& g) { return onednn::preferred_layouts(g); }

// oneDNN's scratchpads are per primitive; only the first-layer loop needs one.
std::size_t conv2d_workspace_bytes(const Conv2dGeometry& g) { return narrow_first_layer(g) ? narrow_workspace_bytes(g) : 0; }

void conv2d_forward(float* y, const float* x, const float* w, const float* bias, const Conv2dGeometry& g, void*,
                    std::size_t, Activation act) {
    // ReLU as the primitive's post-op (max(v, 0) on the blocked output before it is reordered out);
    // the other activations as act_dropout_forward computes them, in place.
    onednn::conv_forward(y, x, w, bias, g, act == Activation::Relu);
    if (act != Activation::None && act != Activation::Relu)
        act_dropout_forward(y, y, g.n, g.out_size(), act, 0.0f, 0, 0, 0, false, nullptr);
}

void conv2d_backward_data(float* dx, const float* dy, const float* w, const Conv2dGeometry& g, void*, std::size_t) {
    onednn::conv_backward_data(dx, dy, w, g);
}

void conv2d_backward_filter(float* dw, const float* dy, const float* x, const Conv2dGeometry& g, void*, std::size_t) {
    onednn::conv_backward_weights(dw, dy, x, g);
}

void conv2d_backward(float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                     const Conv2dGeometry& g, void* workspace, std::size_t workspace_bytes) {
    if (dx == nullptr && narrow_first_layer(g)) {
        CUMNIST_CHECK(workspace_bytes >= narrow_workspace_bytes(g),
                      "conv2d_backward: a workspace of {} bytes, {} needed (conv2d_workspace_bytes)", workspace_bytes,
                      narrow_workspace_bytes(g));
        float* ws = static_cast<float*>(workspace);
        const bool mnist_3x3 = g.in_c == 1 && g.k_h == 3 && g.k_w == 3;  // the cnn preset's first layer
        if (channel_block(g.dst_layout) == 16)
            return mnist_3x3 ? conv_backward_weights_narrow<16, 1, 3, 3>(dw, db, dy, x, g, ws)
                             : conv_backward_weights_narrow<16>(dw, db, dy, x, g, ws);
        return mnist_3x3 ? conv_backward_weights_narrow<8, 1, 3, 3>(dw, db, dy, x, g, ws)
                         : conv_backward_weights_narrow<8>(dw, db, dy, x, g, ws);
    }
    onednn::conv_backward(dx, dw, db, dy, x, w, g);
}

void channel_bias_grad(float* db, const float* dy, int n, int channels, int spatial) {
    // db[c] = Σ_r Σ_s dy[r, c, s]: per channel, images in order, each image's plane summed in
    // order; threads own disjoint channels.
#pragma omp parallel for schedule(static) if (static_cast<std::size_t>(n) * channels * spatial >= kParallelThreshold)
    for (int c = 0; c < channels; ++c) {
        float acc = 0.0f;
        for (int r = 0; r < n; ++r) {
            const float* plane = dy + (static_cast<std::size_t>(r) * channels + c) * spatial;
            float sum = 0.0f;
            for (int s = 0; s < spatial; ++s) sum += plane[s];
            acc += sum;
        }
        db[c] = acc;
    }
}

namespace {

// One output row of a 2x2 window with stride 2 (the common case), written as selects so that it
// vectorises: the same comparisons in the same order as the general loop below.
#if defined(__AVX512F__)
// 16 windows at a time: the even and odd columns of the two input rows deinterleaved by permutes,
// then the scalar version's comparisons, in its order (so the same maxima and argmax, NaN included:
// a comparison with NaN is false in both).
void maxpool_row_2x2(float* y, int32_t* argmax, const float* r0, const float* r1, int ow, int32_t at0, int in_w) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int ox = 0; ox < ow; ox += 16) {
        const int n = std::min(16, ow - ox), in_n = 2 * n;
        const auto mask = [](int bits) { return static_cast<__mmask16>(bits >= 16 ? 0xffffu : (1u << bits) - 1u); };
        const __mmask16 out = mask(n), lo = mask(in_n), hi = mask(std::max(0, in_n - 16));
        const float* p0 = r0 + 2 * ox;
        const float* p1 = r1 + 2 * ox;
        // (p + 16 is formed only when some of it is read: fewer than 8 windows end before it.)
        const __m512 r0lo = _mm512_maskz_loadu_ps(lo, p0), r1lo = _mm512_maskz_loadu_ps(lo, p1);
        const __m512 r0hi = hi != 0 ? _mm512_maskz_loadu_ps(hi, p0 + 16) : _mm512_setzero_ps();
        const __m512 r1hi = hi != 0 ? _mm512_maskz_loadu_ps(hi, p1 + 16) : _mm512_setzero_ps();
        const __m512 a = _mm512_permutex2var_ps(r0lo, even, r0hi), b = _mm512_permutex2var_ps(r0lo, odd, r0hi);
        const __m512 c = _mm512_permutex2var_ps(r1lo, even, r1hi), d = _mm512_permutex2var_ps(r1lo, odd, r1hi);
        const __m512i base = _mm512_add_epi32(_mm512_set1_epi32(at0 + 2 * ox), even);  // a's index
        __m512 best = a;
        __m512i at = base;
        __mmask16 m = _mm512_cmp_ps_mask(b, best, _CMP_GT_OQ);
        at = _mm512_mask_add_epi32(at, m, base, _mm512_set1_epi32(1));
        best = _mm512_mask_mov_ps(best, m, b);
        m = _mm512_cmp_ps_mask(c, best, _CMP_GT_OQ);
        at = _mm512_mask_add_epi32(at, m, base, _mm512_set1_epi32(in_w));
        best = _mm512_mask_mov_ps(best, m, c);
        m = _mm512_cmp_ps_mask(d, best, _CMP_GT_OQ);
        at = _mm512_mask_add_epi32(at, m, base, _mm512_set1_epi32(in_w + 1));
        best = _mm512_mask_mov_ps(best, m, d);
        _mm512_mask_storeu_ps(y + ox, out, best);
        _mm512_mask_storeu_epi32(argmax + ox, out, at);
    }
}
#else
void maxpool_row_2x2(float* y, int32_t* argmax, const float* r0, const float* r1, int ow, int32_t at0, int in_w) {
#pragma omp simd
    for (int ox = 0; ox < ow; ++ox) {
        const float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
        float best = a;
        int32_t at = at0 + 2 * ox;
        at = b > best ? at0 + 2 * ox + 1 : at;
        best = b > best ? b : best;
        at = c > best ? at0 + in_w + 2 * ox : at;
        best = c > best ? c : best;
        at = d > best ? at0 + in_w + 2 * ox + 1 : at;
        best = d > best ? d : best;
        y[ox] = best;
        argmax[ox] = at;
    }
}
#endif

}  // namespace

namespace {

// Pooling where either tensor is channel-blocked (ops.h: nChw8c or nChw16c, so c is a multiple of
// the block). Each task is one image's group of G channels (G the larger block, 8 or 16), a block
// of the blocked layout; a window position's G channels are one vector of it. The lanes are
// independent channels, each given exactly the comparisons (and, backward, the additions) of the
// NCHW loops, in their order: the same bits.

// x in the blocked layout of G channels: one vector per window position; y and argmax in that
// layout too (one vector store) or NCHW (the pooling before a Flatten).
template <int G>
void maxpool_forward_blocks(float* y, int32_t* argmax, const float* x, const Pool2dGeometry& g) {
    using L = Lanes<G>;
    using F = typename L::F;
    using I = typename L::I;
    const int oh = g.out_h(), ow = g.out_w(), groups = g.c / G;
    const std::size_t in_plane = static_cast<std::size_t>(g.in_h) * g.in_w, out_plane = static_cast<std::size_t>(oh) * ow;
    const std::size_t tasks = static_cast<std::size_t>(g.n) * groups;
#pragma omp parallel for schedule(static) if (tasks * G * in_plane >= kParallelThreshold)
    for (std::size_t t = 0; t < tasks; ++t) {
        const std::size_t image = t / groups, c0 = (t % groups) * G;
        const float* xb = x + image * g.in_size() + c0 * in_plane;
        float* yb = y + image * g.out_size() + c0 * out_plane;  // the group's block, or its first plane
        int32_t* ab = argmax + image * g.out_size() + c0 * out_plane;
        const bool blocked_out = g.out_layout != ImageLayout::Nchw;
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                const int first = oy * g.stride_h * g.in_w + ox * g.stride_w;
                F best;
                L::load(best, xb + static_cast<std::size_t>(first) * G);
                I at = I{} + first;
                for (int ky = 0; ky < g.k_h; ++ky)
                    for (int kx = 0; kx < g.k_w; ++kx) {
                        const int pos = first + ky * g.in_w + kx;
                        F v;
                        L::load(v, xb + static_cast<std::size_t>(pos) * G);
                        const I more = v > best;  // the first maximum; NaN never wins
                        at = more ? I{} + pos : at;
                        best = more ? v : best;
                    }
                const std::size_t o = static_cast<std::size_t>(oy) * ow + ox;
                if (blocked_out) {
                    L::store(yb + o * G, best);
                    L::store(ab + o * G, at);
                } else {
                    for (int l = 0; l < G; ++l) yb[l * out_plane + o] = best[l], ab[l * out_plane + o] = at[l];
                }
            }
    }
}

template <int G>
void maxpool_forward_blocked(float* y, int32_t* argmax, const float* x, const Pool2dGeometry& g) {
    const int oh = g.out_h(), ow = g.out_w(), groups = g.c / G;
    const int in_block = channel_block(g.in_layout), out_block = channel_block(g.out_layout);
    if (in_block == G && (out_block == G || out_block == 1)) return maxpool_forward_blocks<G>(y, argmax, x, g);
    const std::size_t in_plane = static_cast<std::size_t>(g.in_h) * g.in_w, out_plane = static_cast<std::size_t>(oh) * ow;
    const std::size_t tasks = static_cast<std::size_t>(g.n) * groups;
#pragma omp parallel for schedule(static) if (tasks * G * in_plane >= kParallelThreshold)
    for (std::size_t t = 0; t < tasks; ++t) {
        const std::size_t image = t / groups, c0 = (t % groups) * G;
        const float* xi = x + image * g.in_size();
        const float* xb = xi + c0 * in_plane;  // the group's block when in_block == G
        float gathered[G];
        // The G channels of plane position `pos`: a vector of the block, or gathered.
        auto lanes = [&](int pos) -> const float* {
            if (in_block == G) return xb + static_cast<std::size_t>(pos) * G;
            for (int l = 0; l < G; ++l) gathered[l] = xi[channel_offset(in_block, c0 + l, pos, in_plane)];
            return gathered;
        };
        float* yi = y + image * g.out_size();
        int32_t* ai = argmax + image * g.out_size();
        for (int oy = 0; oy < oh; ++oy)
            for (int ox = 0; ox < ow; ++ox) {
                const int first = oy * g.stride_h * g.in_w + ox * g.stride_w;
                float best[G];
                int32_t at[G];
                const float* v0 = lanes(first);
                for (int l = 0; l < G; ++l) best[l] = v0[l], at[l] = first;
                for (int ky = 0; ky < g.k_h; ++ky)
                    for (int kx = 0; kx < g.k_w; ++kx) {
                        const int pos = first + ky * g.in_w + kx;
                        const float* v = lanes(pos);
#pragma omp simd
                        for (int l = 0; l < G; ++l) {
                            const bool more = v[l] > best[l];  // the first maximum; NaN never wins
                            at[l] = more ? pos : at[l];
                            best[l] = more ? v[l] : best[l];
                        }
                    }
                const std::size_t o = static_cast<std::size_t>(oy) * ow + ox;
                if (out_block == G) {
                    const std::size_t at0 = c0 * out_plane + o * G;
                    std::copy(best, best + G, yi + at0);
                    std::copy(at, at + G, ai + at0);
                } else {
                    for (int l = 0; l < G; ++l) {
                        const std::size_t at0 = channel_offset(out_block, c0 + l, o, out_plane);
                        yi[at0] = best[l], ai[at0] = at[l];
                    }
                }
            }
    }
}

// relu_y (may be null): ops.h's ReLU gate, read where dy is (the same layout).
template <int G>
void maxpool_backward_blocked(float* dx, const float* dy, const int32_t* argmax, const float* relu_y,
                              const Pool2dGeometry& g) {
    const int oh = g.out_h(), ow = g.out_w(), groups = g.c / G;
    const int in_block = channel_block(g.in_layout), out_block = channel_block(g.out_layout);
    const std::size_t in_plane = static_cast<std::size_t>(g.in_h) * g.in_w, out_plane = static_cast<std::size_t>(oh) * ow;
    const std::size_t tasks = static_cast<std::size_t>(g.n) * groups;
    // Windows that do not overlap give each dx element at most one dy element: 0 + dy where it was
    // the argmax (and the ReLU gate, if any, is open) and 0 elsewhere, the bits of the zero fill
    // and the additions below, so every element is written once. Positions no window covers still
    // need the fill. dy, argmax and the gate are read a vector per window, or gathered from G NCHW
    // planes (the pooling before a Flatten).
    const bool disjoint =
        in_block == G && (out_block == G || out_block == 1) && g.stride_h >= g.k_h && g.stride_w >= g.k_w;
    const bool covered = disjoint && g.stride_h == g.k_h && g.stride_w == g.k_w && g.in_h == oh * g.k_h &&
                         g.in_w == ow * g.k_w;
#pragma omp parallel for schedule(static) if (tasks * G * in_plane >= kParallelThreshold)
    for (std::size_t t = 0; t < tasks; ++t) {
        const std::size_t image = t / groups, c0 = (t % groups) * G;
        float* dxi = dx + image * g.in_size();
        const float* dyi = dy + image * g.out_size();
        const int32_t* ai = argmax + image * g.out_size();
        const float* gi = relu_y != nullptr ? relu_y + image * g.out_size() : nullptr;
        if (!covered) {  // the group's G·in_plane elements: one block, or G NCHW planes
            if (in_block == G) {
                std::fill(dxi + c0 * in_plane, dxi + (c0 + G) * in_plane, 0.0f);
            } else {
                for (int l = 0; l < G; ++l)
                    for (std::size_t pos = 0; pos < in_plane; ++pos) dxi[channel_offset(in_block, c0 + l, pos, in_plane)] = 0.0f;
            }
        }
        if (disjoint) {
            using L = Lanes<G>;
            using F = typename L::F;
            using I = typename L::I;
            float* dxb = dxi + c0 * in_plane;
            for (int oy = 0; oy < oh; ++oy)
                for (int ox = 0; ox < ow; ++ox) {
                    const std::size_t o = static_cast<std::size_t>(oy) * ow + ox;
                    const int first = oy * g.stride_h * g.in_w + ox * g.stride_w;
                    I at;  // the argmax, or −1 where the gate is shut
                    load_channels<G>(at, ai, out_block, c0, o, out_plane);
                    F v;
                    if (gi != nullptr) {
                        load_channels<G>(v, gi, out_block, c0, o, out_plane);
                        at = v > F{} ? at : I{} - 1;
                    }
                    load_channels<G>(v, dyi, out_block, c0, o, out_plane);
                    const F sum = F{} + v;  // 0 + dy: the fill's +0 plus dy
                    for (int ky = 0; ky < g.k_h; ++ky)
                        for (int kx = 0; kx < g.k_w; ++kx) {
                            const int pos = first + ky * g.in_w + kx;
                            L::store(dxb + static_cast<std::size_t>(pos) * G, at == pos ? sum : F{});
                        }
                }
            continue;
        }
        // Each channel's windows in row-major order (ops.h), as the NCHW loop adds them.
        for (std::size_t o = 0; o < out_plane; ++o)
            for (int l = 0; l < G; ++l) {
                const std::size_t from = channel_offset(out_block, c0 + l, o, out_plane);
                if (gi != nullptr && !(gi[from] > 0.0f)) continue;
                dxi[channel_offset(in_block, c0 + l, static_cast<std::size_t>(ai[from]), in_plane)] += dyi[from];
            }
    }
}

int pool_group(const Pool2dGeometry& g) { return std::max(channel_block(g.in_layout), channel_block(g.out_layout)); }

}  // namespace

void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const Pool2dGeometry& g) {
    if (pool_group(g) == 16) return maxpool_forward_blocked<16>(y, argmax, x, g);
    if (pool_group(g) == 8) return maxpool_forward_blocked<8>(y, argmax, x, g);
    const int oh = g.out_h(), ow = g.out_w();
    const std::size_t planes = static_cast<std::size_t>(g.n) * g.c;
    const std::size_t in_plane = static_cast<std::size_t>(g.in_h) * g.in_w, out_plane = static_cast<std::size_t>(oh) * ow;
    const bool k2s2 = g.k_h == 2 && g.k_w == 2 && g.stride_h == 2 && g.stride_w == 2;
#pragma omp parallel for schedule(static) if (planes * in_plane >= kParallelThreshold)
    for (std::size_t p = 0; p < planes; ++p) {
        const float* xp = x + p * in_plane;
        float* yp = y + p * out_plane;
        int32_t* ap = argmax + p * out_plane;
        for (int oy = 0; oy < oh; ++oy) {
            const int row0 = oy * g.stride_h * g.in_w;
            if (k2s2) {
                maxpool_row_2x2(yp + oy * ow, ap + oy * ow, xp + row0, xp + row0 + g.in_w, ow, row0, g.in_w);
                continue;
            }
            for (int ox = 0; ox < ow; ++ox) {
                // The first maximum in row-major window order (ops.h).
                int best_at = row0 + ox * g.stride_w;
                float best = xp[best_at];
                for (int ky = 0; ky < g.k_h; ++ky)
                    for (int kx = 0; kx < g.k_w; ++kx) {
                        const int at = row0 + ky * g.in_w + ox * g.stride_w + kx;
                        if (xp[at] > best) best = xp[at], best_at = at;
                    }
                yp[oy * ow + ox] = best;
                ap[oy * ow + ox] = best_at;
            }
        }
    }
}

void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const float* relu_y,
                        const Pool2dGeometry& g) {
    if (pool_group(g) == 16) return maxpool_backward_blocked<16>(dx, dy, argmax, relu_y, g);
    if (pool_group(g) == 8) return maxpool_backward_blocked<8>(dx, dy, argmax, relu_y, g);
    const std::size_t planes = static_cast<std::size_t>(g.n) * g.c;
    const std::size_t in_plane = static_cast<std::size_t>(g.in_h) * g.in_w;
    const std::size_t out_plane = static_cast<std::size_t>(g.out_h()) * g.out_w();
#pragma omp parallel for schedule(static) if (planes * in_plane >= kParallelThreshold)
    for (std::size_t p = 0; p < planes; ++p) {
        float* dxp = dx + p * in_plane;
        const float* dyp = dy + p * out_plane;
        const int32_t* ap = argmax + p * out_plane;
        std::fill(dxp, dxp + in_plane, 0.0f);
        if (relu_y != nullptr) {
            // Only where the ReLU passed x (x = y at the argmax); the rest stays +0, as its select writes it.
            const float* gp = relu_y + p * out_plane;
            for (std::size_t o = 0; o < out_plane; ++o)
                if (gp[o] > 0.0f) dxp[ap[o]] += dyp[o];
            continue;
        }
        for (std::size_t o = 0; o < out_plane; ++o) dxp[ap[o]] += dyp[o];  // windows in row-major order
    }
}

void softmax_xent(float* dlogits, float* row_loss, float* row_correct, const float* logits, const uint8_t* labels,
                  int n, int classes, float grad_scale, double* totals) {
    for (int r = 0; r < n; ++r) {
        const float* z = logits + static_cast<std::size_t>(r) * classes;
        // sum = Σ exp(z − max z); −log p[label] = (max z − z[label]) + log sum. p is formed from the
        // max-shifted exponentials, never from a rounded lse (at logits of ±100 that costs ~4e-6).
        int arg = 0;
        for (int c = 1; c < classes; ++c)
            if (z[c] > z[arg]) arg = c;
        const float zmax = z[arg];
        float sum = 0.0f;
        for (int c = 0; c < classes; ++c) sum += std::exp(z[c] - zmax);
        const int label = labels[r];
        row_loss[r] = (zmax - z[label]) + std::log(sum);
        row_correct[r] = arg == label ? 1.0f : 0.0f;
        if (dlogits) {
            // ∂loss/∂z = (p − onehot(label)) · grad_scale, grad_scale = 1/batch.
            float* d = dlogits + static_cast<std::size_t>(r) * classes;
            for (int c = 0; c < classes; ++c) {
                const float p = std::exp(z[c] - zmax) / sum;
                d[c] = (p - (c == label ? 1.0f : 0.0f)) * grad_scale;
            }
        }
    }
    if (totals != nullptr) accumulate_metrics(totals, row_loss, row_correct, n);
}

void bias_softmax_xent(float* dlogits, float* db, float* row_loss, float* row_correct, float* logits, const float* bias,
                       const uint8_t* labels, int n, int classes, float grad_scale, double* totals) {
    // The three ops the unfused step runs, in its order: the same bits.
    bias_act_dropout_forward(logits, logits, bias, n, classes, Activation::None, 0.0f, 0, 0, 0, false, nullptr);
    softmax_xent(dlogits, row_loss, row_correct, logits, labels, n, classes, grad_scale, totals);
    bias_grad(db, dlogits, n, classes);
}

void softmax(float* probs, const float* logits, int n, int classes) {
    for (int r = 0; r < n; ++r) {
        const float* z = logits + static_cast<std::size_t>(r) * classes;
        float* p = probs + static_cast<std::size_t>(r) * classes;
        const float zmax = *std::max_element(z, z + classes);
        float sum = 0.0f;
        for (int c = 0; c < classes; ++c) sum += std::exp(z[c] - zmax);
        for (int c = 0; c < classes; ++c) p[c] = std::exp(z[c] - zmax) / sum;
    }
}

void accumulate_metrics(double* totals, const float* row_loss, const float* row_correct, int n) {
    double loss = 0.0, correct = 0.0;
    for (int r = 0; r < n; ++r) {
        loss += row_loss[r];
        correct += row_correct[r];
    }
    totals[0] += loss;
    totals[1] += correct;
}

void gather_batch(float* x, uint8_t* labels_out, const uint8_t* images, const uint8_t* labels, const int32_t* order,
                  const uint64_t* batch_index, int rows, int cols, int batch_size) {
    const std::size_t first = static_cast<std::size_t>(*batch_index) * batch_size;
    constexpr float kScale = 1.0f / 255.0f;
#pragma omp parallel for schedule(static) if (static_cast<std::size_t>(rows) * cols >= kParallelThreshold)
    for (int r = 0; r < rows; ++r) {
        const std::size_t sample = static_cast<std::size_t>(order[first + r]);
        const uint8_t* src = images + sample * cols;
        float* dst = x + static_cast<std::size_t>(r) * cols;
        for (int c = 0; c < cols; ++c) dst[c] = static_cast<float>(src[c]) * kScale;
        labels_out[r] = labels[sample];
    }
}

void u8_to_float(float* x, const uint8_t* pixels, std::size_t count) {
    constexpr float kScale = 1.0f / 255.0f;
#pragma omp parallel for schedule(static) if (count >= kParallelThreshold)
    for (std::size_t i = 0; i < count; ++i) x[i] = static_cast<float>(pixels[i]) * kScale;
}

void increment(uint64_t* counter) { ++*counter; }

namespace {
// The end of a training step (ops.h, `advance`), after the update that read the step counter.
void advance_step(uint64_t* advance) {
    if (advance == nullptr) return;
    ++advance[0];
    ++advance[1];
}
}  // namespace

void adam_step(float* w, float* m, float* v, const float* g, std::size_t count, float lr, const float* lr_scale,
               float beta1, float beta2, float epsilon, const uint64_t* step, uint64_t* advance) {
    const float alpha = adam_alpha(scaled_rate(lr, lr_scale), beta1, beta2, *step + 1);
#pragma omp parallel for schedule(static) if (count >= kParallelThreshold)
    for (std::size_t i = 0; i < count; ++i) adam_update(w[i], m[i], v[i], g[i], alpha, beta1, beta2, epsilon);
    advance_step(advance);
}

void sgd_step(float* w, float* velocity, const float* g, std::size_t count, float lr, const float* lr_scale,
              float momentum, uint64_t* advance) {
    const float rate = scaled_rate(lr, lr_scale);
#pragma omp parallel for schedule(static) if (count >= kParallelThreshold)
    for (std::size_t i = 0; i < count; ++i) sgd_update(w[i], velocity[i], g[i], rate, momentum);
    advance_step(advance);
}

void rmsprop_step(float* w, float* s, const float* g, std::size_t count, float lr, const float* lr_scale, float rho,
                  float epsilon, uint64_t* advance) {
    const float rate = scaled_rate(lr, lr_scale);
#pragma omp parallel for schedule(static) if (count >= kParallelThreshold)
    for (std::size_t i = 0; i < count; ++i) rmsprop_update(w[i], s[i], g[i], rate, rho, epsilon);
    advance_step(advance);
}

void fill_zero(float* x, std::size_t count) { std::memset(x, 0, count * sizeof(float)); }

}  // namespace cumnist::cpu
