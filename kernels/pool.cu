// Max pooling without padding, NCHW (include/cumnist/ops.h, Pool2dGeometry). The forward pass
// keeps, per window, the FIRST maximum in row-major window order and records its position in the
// (image, channel) plane; the backward pass is a gather with no atomics, so it is deterministic
// and bit-identical to the CPU backend's scatter (src/cpu/cpu_ops.cpp).
#include "backend.h"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

// One thread per output element o (grid-stride), o = ((plane · out_h) + oy) · out_w + ox with
// plane = image · c + channel. best starts at the window's first element and is replaced only
// when v > best: the first maximum wins, and a NaN is never chosen over an earlier number (every
// comparison with NaN is false), as on the CPU. argmax is iy · in_w + ix within the plane.
static __global__ void maxpool2d_forward_kernel(float* __restrict__ y, int32_t* __restrict__ argmax,
                                                const float* __restrict__ x, std::size_t total, int in_h, int in_w,
                                                int out_h, int out_w, int k_h, int k_w, int stride_h, int stride_w) {
    const std::size_t in_plane = static_cast<std::size_t>(in_h) * static_cast<std::size_t>(in_w);
    for (std::size_t o = grid_thread_index(); o < total; o += grid_stride()) {
        const int ox = static_cast<int>(o % static_cast<std::size_t>(out_w));
        const std::size_t rest = o / static_cast<std::size_t>(out_w);
        const int oy = static_cast<int>(rest % static_cast<std::size_t>(out_h));
        const std::size_t plane = rest / static_cast<std::size_t>(out_h);
        const float* xp = x + plane * in_plane;
        const int iy0 = oy * stride_h, ix0 = ox * stride_w;
        int best_at = iy0 * in_w + ix0;
        float best = xp[best_at];
        for (int ky = 0; ky < k_h; ++ky) {
            const int row = (iy0 + ky) * in_w;
            for (int kx = 0; kx < k_w; ++kx) {
                const int at = row + ix0 + kx;
                const float v = xp[at];
                if (v > best) {
                    best = v;
                    best_at = at;
                }
            }
        }
        y[o] = best;
        argmax[o] = best_at;
    }
}

// One thread per INPUT element i = (plane · in_h + iy) · in_w + ix (grid-stride). The CPU sets
// dx = 0 and then, for the windows of the plane in row-major (oy, ox) order, adds dy to
// dx[argmax]. The additions that reach element i are therefore those of the windows containing it
// whose argmax is i, in ascending (oy, ox) order, starting from +0.0f: exactly the sum formed
// here, so the result is bit-identical (additions only, nothing for nvcc to contract). A window
// not containing i never has argmax i, so no contribution is missed. Windows containing row iy:
// oy · stride_h ≤ iy ≤ oy · stride_h + k_h − 1, i.e. oy from ⌈(iy − k_h + 1) / stride_h⌉ (0 when
// iy < k_h) to ⌊iy / stride_h⌋, clipped to out_h − 1; likewise ox. Inputs covered by no window
// (the rows and columns a stride leaves over) get 0.
static __global__ void maxpool2d_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                                 const int32_t* __restrict__ argmax, const float* __restrict__ relu_y,
                                                 std::size_t total, int in_h,
                                                 int in_w, int out_h, int out_w, int k_h, int k_w, int stride_h,
                                                 int stride_w) {
    const std::size_t out_plane = static_cast<std::size_t>(out_h) * static_cast<std::size_t>(out_w);
    for (std::size_t i = grid_thread_index(); i < total; i += grid_stride()) {
        const int ix = static_cast<int>(i % static_cast<std::size_t>(in_w));
        const std::size_t rest = i / static_cast<std::size_t>(in_w);
        const int iy = static_cast<int>(rest % static_cast<std::size_t>(in_h));
        const std::size_t plane = rest / static_cast<std::size_t>(in_h);
        const int32_t self = iy * in_w + ix;

        const int oy_first = iy >= k_h ? (iy - k_h) / stride_h + 1 : 0;
        const int oy_last = min(iy / stride_h, out_h - 1);
        const int ox_first = ix >= k_w ? (ix - k_w) / stride_w + 1 : 0;
        const int ox_last = min(ix / stride_w, out_w - 1);

        const std::size_t base = plane * out_plane;
        float sum = 0.0f;
        for (int oy = oy_first; oy <= oy_last; ++oy) {
            const std::size_t row = base + static_cast<std::size_t>(oy) * static_cast<std::size_t>(out_w);
            for (int ox = ox_first; ox <= ox_last; ++ox) {
                const std::size_t o = row + static_cast<std::size_t>(ox);
                // With relu_y, only where the ReLU passed x (x = y at the argmax): a gated element
                // sums nothing and is +0, as the ReLU backward's select writes it.
                if (argmax[o] == self && (relu_y == nullptr || relu_y[o] > 0.0f)) sum += dy[o];
            }
        }
        dx[i] = sum;
    }
}

}  // namespace

void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const Pool2dGeometry& g) {
    const int out_h = g.out_h(), out_w = g.out_w();
    if (g.n <= 0 || g.c <= 0 || out_h <= 0 || out_w <= 0) return;
    const std::size_t total = static_cast<std::size_t>(g.n) * static_cast<std::size_t>(g.c) *
                              static_cast<std::size_t>(out_h) * static_cast<std::size_t>(out_w);
    maxpool2d_forward_kernel<<<grid_for(total), kBlockSize, 0, context().stream()>>>(
        y, argmax, x, total, g.in_h, g.in_w, out_h, out_w, g.k_h, g.k_w, g.stride_h, g.stride_w);
    CUMNIST_CHECK_LAUNCH();
}

void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const float* relu_y,
                        const Pool2dGeometry& g) {
    if (g.n <= 0 || g.c <= 0 || g.in_h <= 0 || g.in_w <= 0) return;
    const std::size_t total = static_cast<std::size_t>(g.n) * static_cast<std::size_t>(g.c) *
                              static_cast<std::size_t>(g.in_h) * static_cast<std::size_t>(g.in_w);
    const int out_h = g.out_h(), out_w = g.out_w();
    if (out_h <= 0 || out_w <= 0) {  // no windows: dx is all zero
        CUDA_CHECK(cudaMemsetAsync(dx, 0, total * sizeof(float), context().stream()));
        return;
    }
    maxpool2d_backward_kernel<<<grid_for(total), kBlockSize, 0, context().stream()>>>(
        dx, dy, argmax, relu_y, total, g.in_h, g.in_w, out_h, out_w, g.k_h, g.k_w, g.stride_h, g.stride_w);
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
