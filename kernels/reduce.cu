// Deterministic reductions: the bias gradient (column sums) and the per-epoch metric totals.
// Fixed summation order, no float atomics: two runs give bitwise identical results.
#include "backend.h"
#include "column_sums.cuh"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

// db[c] = Σ_r dy[r, c] for dy (n, cols), in column_sums's fixed order.
static __global__ void bias_grad_kernel(float* __restrict__ db, const float* __restrict__ dy, int n, int cols) {
    column_sums(db, n, cols, [dy](int, int, std::size_t i) { return dy[i]; });
}

constexpr unsigned kMetricsBlock = 256;  // a power of two (tree reduction below)

// totals[0] += Σ row_loss, totals[1] += Σ row_correct, in double. One block: thread t sums
// elements t, t + 256, ... in order, then a fixed pairwise tree combines the 256 partials.
static __global__ void accumulate_metrics_kernel(double* __restrict__ totals, const float* __restrict__ row_loss,
                                                 const float* __restrict__ row_correct, int n) {
    __shared__ double loss[kMetricsBlock];
    __shared__ double correct[kMetricsBlock];
    const unsigned t = threadIdx.x;
    double l = 0.0, c = 0.0;
    for (int i = static_cast<int>(t); i < n; i += static_cast<int>(kMetricsBlock)) {
        l += static_cast<double>(row_loss[i]);
        c += static_cast<double>(row_correct[i]);
    }
    loss[t] = l;
    correct[t] = c;
    __syncthreads();
    for (unsigned stride = kMetricsBlock / 2; stride > 0; stride /= 2) {
        if (t < stride) {
            loss[t] += loss[t + stride];
            correct[t] += correct[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        totals[0] += loss[0];
        totals[1] += correct[0];
    }
}

}  // namespace

void bias_grad(float* db, const float* dy, int n, int cols) {
    if (cols <= 0) return;
    if (n <= 0) {  // an empty sum
        CUDA_CHECK(cudaMemsetAsync(db, 0, static_cast<std::size_t>(cols) * sizeof(float), context().stream()));
        return;
    }
    bias_grad_kernel<<<column_sums_grid(cols), column_sums_block(), 0, context().stream()>>>(db, dy, n, cols);
    CUMNIST_CHECK_LAUNCH();
}

void accumulate_metrics(double* totals, const float* row_loss, const float* row_correct, int n) {
    if (n <= 0) return;
    accumulate_metrics_kernel<<<1, kMetricsBlock, 0, context().stream()>>>(totals, row_loss, row_correct, n);
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
