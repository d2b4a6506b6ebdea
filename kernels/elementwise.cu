// Elementwise CUDA ops: the fused layer epilogue (bias + activation + dropout) and its backward,
// the standalone activation/dropout layer, uint8 → float conversion, the device-side counter increment and fill_zero. The dropout mask
// comes from philox.h's dropout_keep(), so CPU and GPU drop exactly the same elements.
#include <type_traits>

#include "backend.h"
#include "column_sums.cuh"
#include "cuda_common.cuh"
#include "cumnist/philox.h"

namespace cumnist::cuda {

namespace {

// act(x): relu(x) = max(x, 0);  sigmoid(x) = 1 / (1 + e^−x);  tanh(x);  none(x) = x.
template <Activation kAct>
__device__ __forceinline__ float activate(float x) {
    if constexpr (kAct == Activation::Relu) return x > 0.0f ? x : 0.0f;
    else if constexpr (kAct == Activation::Sigmoid) return 1.0f / (1.0f + expf(-x));
    else if constexpr (kAct == Activation::Tanh) return tanhf(x);
    else return x;
}

// act'(x) written in terms of the activation's output a = act(x): sigmoid' = a (1 − a),
// tanh' = 1 − a², none' = 1. (ReLU's backward reads the dropout output instead:
// backward_element.) tanh' multiplies with __fmul_rn so that nvcc cannot contract
// 1 − a·a into an FMA: it rounds a·a, then the difference, exactly as the CPU (built with
// -ffp-contract=off) does, so both backends give the same derivative for the same a.
template <Activation kAct>
__device__ __forceinline__ float activation_derivative(float a) {
    static_assert(kAct != Activation::Relu, "ReLU's backward is in backward_element");
    if constexpr (kAct == Activation::Sigmoid) return a * (1.0f - a);
    else if constexpr (kAct == Activation::Tanh) return 1.0f - __fmul_rn(a, a);
    else return 1.0f;
}

// a (n, cols) ← act(a + bias);  h ← keep(i) ? a · scale : 0  (kDropout),  h ← a  (otherwise),
// with scale = 1 / (1 − rate) and i the flat row-major index. h may alias a only when !kDropout.
template <Activation kAct, bool kDropout>
static __global__ void bias_act_dropout_kernel(float* h, float* a, const float* __restrict__ bias, int n, int cols,
                                               float scale, uint32_t keep_threshold, uint64_t seed, uint32_t stream,
                                               const uint64_t* __restrict__ step) {
    const uint64_t t = kDropout ? *step : 0;  // the step counter is read only when dropout is active
    // Rows over grid y, columns over grid x (no 64-bit modulo to find the bias column).
    for (int r = static_cast<int>(blockIdx.y); r < n; r += static_cast<int>(gridDim.y)) {
        const std::size_t row_start = static_cast<std::size_t>(r) * static_cast<std::size_t>(cols);
        for (int c = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); c < cols;
             c += static_cast<int>(gridDim.x * blockDim.x)) {
            const std::size_t i = row_start + static_cast<std::size_t>(c);
            const float x = activate<kAct>(a[i] + bias[c]);
            a[i] = x;
            if constexpr (kDropout) h[i] = dropout_keep(seed, stream, t, i, keep_threshold) ? x * scale : 0.0f;
            else h[i] = x;
        }
    }
}

// y (n, cols) = act(x);  then y ← keep(i) ? y · scale : 0  (kDropout), with i the flat row-major
// index r·cols + c, the index bias_act_dropout_kernel draws element (r, c)'s keep bit with, so both
// layers (and the CPU) drop the same elements. y may alias x only when !kDropout: each element is
// read, then written, by the same thread.
template <Activation kAct, bool kDropout>
static __global__ void act_dropout_kernel(float* y, const float* x, std::size_t total, float scale,
                                          uint32_t keep_threshold, uint64_t seed, uint32_t stream,
                                          const uint64_t* __restrict__ step) {
    const uint64_t t = kDropout ? *step : 0;  // the step counter is read only when dropout is active
    for (std::size_t i = grid_thread_index(); i < total; i += grid_stride()) {
        const float a = activate<kAct>(x[i]);
        if constexpr (kDropout) y[i] = dropout_keep(seed, stream, t, i, keep_threshold) ? a * scale : 0.0f;
        else y[i] = a;
    }
}

// One element of the backward epilogue, the CPU backend's formula and operation order:
//   ReLU: saved is the forward's output h after dropout, and keep · relu' = [h > 0], so
//         dpre = h > 0 ? dh · scale : 0 with no mask redrawn (scale = 1 without dropout);
//   otherwise: g = dh · act'(a) with a = saved;  dpre = keep(i) ? g · scale : 0  (kDropout),
//         dpre = g  (otherwise).
template <Activation kAct, bool kDropout>
__device__ __forceinline__ float backward_element(float dh, float saved, std::size_t i, float scale,
                                                  uint32_t keep_threshold, uint64_t seed, uint32_t stream, uint64_t t) {
    if constexpr (kAct == Activation::Relu) {
        return saved > 0.0f ? dh * scale : 0.0f;
    } else {
        const float g = dh * activation_derivative<kAct>(saved);
        if constexpr (kDropout) return dropout_keep(seed, stream, t, i, keep_threshold) ? g * scale : 0.0f;
        else return g;
    }
}

// dpre (total) = backward_element(dh, saved) per element. dpre may alias dh: each element is
// read, then written, by the same thread. The step counter is read only when a mask is redrawn.
template <Activation kAct, bool kDropout>
static __global__ void act_dropout_backward_kernel(float* dpre, const float* dh, const float* __restrict__ saved,
                                                   std::size_t total, float scale, uint32_t keep_threshold,
                                                   uint64_t seed, uint32_t stream, const uint64_t* __restrict__ step) {
    const uint64_t t = kDropout && kAct != Activation::Relu ? *step : 0;
    for (std::size_t i = grid_thread_index(); i < total; i += grid_stride())
        dpre[i] = backward_element<kAct, kDropout>(dh[i], saved[i], i, scale, keep_threshold, seed, stream, t);
}

// The same dpre (n, cols), and db (cols) = Σ_rows dpre in the same kernel: each element is
// computed and written once, by the thread that adds it to its column's sum, in column_sums's
// order, so db has exactly the bits bias_grad would give for this dpre. dpre may alias dh.
template <Activation kAct, bool kDropout>
static __global__ void act_dropout_bias_backward_kernel(float* dpre, float* __restrict__ db, const float* dh,
                                                        const float* __restrict__ saved, int n, int cols, float scale,
                                                        uint32_t keep_threshold, uint64_t seed, uint32_t stream,
                                                        const uint64_t* __restrict__ step) {
    const uint64_t t = kDropout && kAct != Activation::Relu ? *step : 0;
    column_sums(db, n, cols, [=](int, int, std::size_t i) {
        const float v = backward_element<kAct, kDropout>(dh[i], saved[i], i, scale, keep_threshold, seed, stream, t);
        dpre[i] = v;
        return v;
    });
}

// The same, with dh formed where it is used: dh(r, c) = Σ_q dy_next[r, q] · w_next[q, c] over the
// next layer's k outputs, q ascending, one fused multiply-add per term (the next layer's dx GEMM,
// folded in). A warp's lanes share r and take consecutive c: dy_next's row is one broadcast load
// per term, w_next's row a coalesced one. dpre overlaps none of the inputs.
template <Activation kAct, bool kDropout>
static __global__ void act_dropout_bias_backward_through_kernel(float* __restrict__ dpre, float* __restrict__ db,
                                                                const float* __restrict__ dy_next,
                                                                const float* __restrict__ w_next, int k,
                                                                const float* __restrict__ saved, int n, int cols,
                                                                float scale, uint32_t keep_threshold, uint64_t seed,
                                                                uint32_t stream, const uint64_t* __restrict__ step) {
    const uint64_t t = kDropout && kAct != Activation::Relu ? *step : 0;
    column_sums(db, n, cols, [=](int r, int c, std::size_t i) {
        const float* dy = dy_next + static_cast<std::size_t>(r) * static_cast<std::size_t>(k);
        float dh = 0.0f;
        for (int q = 0; q < k; ++q)
            dh = __fmaf_rn(dy[q], w_next[static_cast<std::size_t>(q) * static_cast<std::size_t>(cols) + c], dh);
        const float v = backward_element<kAct, kDropout>(dh, saved[i], i, scale, keep_threshold, seed, stream, t);
        dpre[i] = v;
        return v;
    });
}

// x = p · (1/255), the CPU backend's formula (multiplication by the float nearest 1/255).
static __global__ void u8_to_float_kernel(float* __restrict__ x, const uint8_t* __restrict__ pixels, std::size_t count) {
    constexpr float kPixelScale = 1.0f / 255.0f;
    for (std::size_t i = grid_thread_index(); i < count; i += grid_stride()) x[i] = static_cast<float>(pixels[i]) * kPixelScale;
}

// *counter += 1, by one thread, so a captured step advances its own step and batch counters.
static __global__ void increment_kernel(uint64_t* counter) { *counter += 1; }

template <Activation kAct, bool kDropout>
void launch_forward(float* h, float* a, const float* bias, int n, int cols, float scale,
                    uint32_t keep_threshold, uint64_t seed, uint32_t stream, const uint64_t* step) {
    bias_act_dropout_kernel<kAct, kDropout><<<grid_for_rows(n, cols), kBlockSize, 0, context().stream()>>>(
        h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
    CUMNIST_CHECK_LAUNCH();
}

template <Activation kAct, bool kDropout>
void launch_backward(float* dpre, float* db, const float* dh, const float* saved, int n, int cols, float scale,
                     uint32_t keep_threshold, uint64_t seed, uint32_t stream, const uint64_t* step) {
    if (db != nullptr) {
        act_dropout_bias_backward_kernel<kAct, kDropout><<<column_sums_grid(cols), column_sums_block(), 0,
                                                           context().stream()>>>(dpre, db, dh, saved, n, cols, scale,
                                                                                 keep_threshold, seed, stream, step);
    } else {
        const std::size_t total = static_cast<std::size_t>(n) * static_cast<std::size_t>(cols);
        act_dropout_backward_kernel<kAct, kDropout><<<grid_for(total), kBlockSize, 0, context().stream()>>>(
            dpre, dh, saved, total, scale, keep_threshold, seed, stream, step);
    }
    CUMNIST_CHECK_LAUNCH();
}

template <Activation kAct, bool kDropout>
void launch_act_dropout(float* y, const float* x, std::size_t total, float scale, uint32_t keep_threshold,
                        uint64_t seed, uint32_t stream, const uint64_t* step) {
    act_dropout_kernel<kAct, kDropout><<<grid_for(total), kBlockSize, 0, context().stream()>>>(
        y, x, total, scale, keep_threshold, seed, stream, step);
    CUMNIST_CHECK_LAUNCH();
}

// Exactly the CPU's inverted-dropout scale: 1 / (1 − rate) in float, computed on the host.
float dropout_scale(float rate) { return 1.0f / (1.0f - rate); }

// f(activation tag, dropout tag) for the backward's template instance: ReLU's draws no mask (it
// reads the forward's output), so it has only the kDropout = false one.
template <class F>
void with_backward_instance(Activation act, bool dropout, F&& f) {
    using std::false_type, std::true_type;
    const auto pick = [&](auto act_tag) {
        if (dropout) f(act_tag, true_type{});
        else f(act_tag, false_type{});
    };
    switch (act) {
    case Activation::Relu: f(std::integral_constant<Activation, Activation::Relu>{}, false_type{}); break;
    case Activation::Sigmoid: pick(std::integral_constant<Activation, Activation::Sigmoid>{}); break;
    case Activation::Tanh: pick(std::integral_constant<Activation, Activation::Tanh>{}); break;
    case Activation::None: pick(std::integral_constant<Activation, Activation::None>{}); break;
    }
}

}  // namespace

void bias_act_dropout_forward(float* h, float* a, const float* bias, int n, int cols, Activation act, float rate,
                              uint32_t keep_threshold, uint64_t seed, uint32_t stream, bool dropout,
                              const uint64_t* step) {
    const std::size_t total = static_cast<std::size_t>(n) * static_cast<std::size_t>(cols);
    if (total == 0) return;
    const float scale = dropout ? dropout_scale(rate) : 1.0f;
    switch (act) {
    case Activation::Relu:
        if (dropout) launch_forward<Activation::Relu, true>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        else launch_forward<Activation::Relu, false>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::Sigmoid:
        if (dropout) launch_forward<Activation::Sigmoid, true>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        else launch_forward<Activation::Sigmoid, false>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::Tanh:
        if (dropout) launch_forward<Activation::Tanh, true>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        else launch_forward<Activation::Tanh, false>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::None:
        if (dropout) launch_forward<Activation::None, true>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        else launch_forward<Activation::None, false>(h, a, bias, n, cols, scale, keep_threshold, seed, stream, step);
        break;
    }
}

void act_dropout_backward(float* dpre, const float* dh, const float* saved, int n, int cols, Activation act,
                          float rate, uint32_t keep_threshold, uint64_t seed, uint32_t stream, bool dropout,
                          const uint64_t* step, float* db) {
    if (n <= 0 || cols <= 0) return;
    const float scale = dropout ? dropout_scale(rate) : 1.0f;
    with_backward_instance(act, dropout, [&](auto act_tag, auto dropout_tag) {
        launch_backward<decltype(act_tag)::value, decltype(dropout_tag)::value>(dpre, db, dh, saved, n, cols, scale,
                                                                               keep_threshold, seed, stream, step);
    });
}

void act_dropout_backward_through(float* dpre, const float* dy_next, const float* w_next, int k, const float* saved,
                                  int n, int cols, Activation act, float rate, uint32_t keep_threshold, uint64_t seed,
                                  uint32_t stream, bool dropout, const uint64_t* step, float* db) {
    if (n <= 0 || cols <= 0) return;
    const float scale = dropout ? dropout_scale(rate) : 1.0f;
    with_backward_instance(act, dropout, [&](auto act_tag, auto dropout_tag) {
        constexpr Activation kAct = decltype(act_tag)::value;
        constexpr bool kDropout = decltype(dropout_tag)::value;
        act_dropout_bias_backward_through_kernel<kAct, kDropout>
            <<<column_sums_grid(cols), column_sums_block(), 0, context().stream()>>>(
                dpre, db, dy_next, w_next, k, saved, n, cols, scale, keep_threshold, seed, stream, step);
    });
    CUMNIST_CHECK_LAUNCH();
}

void act_dropout_forward(float* y, const float* x, int n, int cols, Activation act, float rate, uint32_t keep_threshold,
                         uint64_t seed, uint32_t stream, bool dropout, const uint64_t* step) {
    const std::size_t total = static_cast<std::size_t>(n) * static_cast<std::size_t>(cols);
    if (total == 0) return;
    const float scale = dropout ? dropout_scale(rate) : 1.0f;
    switch (act) {
    case Activation::Relu:
        if (dropout) launch_act_dropout<Activation::Relu, true>(y, x, total, scale, keep_threshold, seed, stream, step);
        else launch_act_dropout<Activation::Relu, false>(y, x, total, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::Sigmoid:
        if (dropout) launch_act_dropout<Activation::Sigmoid, true>(y, x, total, scale, keep_threshold, seed, stream, step);
        else launch_act_dropout<Activation::Sigmoid, false>(y, x, total, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::Tanh:
        if (dropout) launch_act_dropout<Activation::Tanh, true>(y, x, total, scale, keep_threshold, seed, stream, step);
        else launch_act_dropout<Activation::Tanh, false>(y, x, total, scale, keep_threshold, seed, stream, step);
        break;
    case Activation::None:
        if (dropout) launch_act_dropout<Activation::None, true>(y, x, total, scale, keep_threshold, seed, stream, step);
        else launch_act_dropout<Activation::None, false>(y, x, total, scale, keep_threshold, seed, stream, step);
        break;
    }
}

void u8_to_float(float* x, const uint8_t* pixels, std::size_t count) {
    if (count == 0) return;
    u8_to_float_kernel<<<grid_for(count), kBlockSize, 0, context().stream()>>>(x, pixels, count);
    CUMNIST_CHECK_LAUNCH();
}

void increment(uint64_t* counter) {
    increment_kernel<<<1, 1, 0, context().stream()>>>(counter);
    CUMNIST_CHECK_LAUNCH();
}

void fill_zero(float* x, std::size_t count) {
    if (count == 0) return;
    // All-zero bytes are +0.0f. A memset node in a captured graph.
    CUDA_CHECK(cudaMemsetAsync(x, 0, count * sizeof(float), context().stream()));
}

}  // namespace cumnist::cuda
