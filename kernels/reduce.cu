// Deterministic reductions: the bias gradient (column sums) and the per-epoch metric totals.
// Fixed summation order, no float atomics: two runs give bitwise identical results.
#include "backend.h"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

// bias_grad tiles: 32 columns (one warp's coalesced row segment) × 8 row groups.
constexpr unsigned kTileCols = 32;
constexpr unsigned kRowGroups = 8;

// db[c] = Σ_r dy[r, c] for dy (n, cols). Thread (x, y) of a block sums rows y, y + 8, y + 16, ...
// of column tile·32 + x in ascending order; then the 8 partial sums are added in order y = 0..7.
// The order depends only on (n, cols), never on timing.
static __global__ void bias_grad_kernel(float* __restrict__ db, const float* __restrict__ dy, int n, int cols) {
    __shared__ float partial[kRowGroups][kTileCols + 1];
    const unsigned tx = threadIdx.x, ty = threadIdx.y;
    // The tile loop's condition is the same for the whole block, so the barriers are uniform.
    for (unsigned tile = blockIdx.x; static_cast<std::size_t>(tile) * kTileCols < static_cast<std::size_t>(cols);
         tile += gridDim.x) {
        const int c = static_cast<int>(tile * kTileCols + tx);
        float sum = 0.0f;
        if (c < cols) {
            for (int r = static_cast<int>(ty); r < n; r += static_cast<int>(kRowGroups))
                sum += dy[static_cast<std::size_t>(r) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c)];
        }
        partial[ty][tx] = sum;
        __syncthreads();
        if (ty == 0 && c < cols) {
            float total = partial[0][tx];
            for (unsigned g = 1; g < kRowGroups; ++g) total += partial[g][tx];
            db[c] = total;
        }
        __syncthreads();  // partial[] is reused by the next tile
    }
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
    const std::size_t tiles = (static_cast<std::size_t>(cols) + kTileCols - 1) / kTileCols;
    const dim3 block(kTileCols, kRowGroups);
    const unsigned grid = grid_for(tiles, 1);  // one block per tile, capped; the tile loop covers the rest
    bias_grad_kernel<<<grid, block, 0, context().stream()>>>(db, dy, n, cols);
    CUMNIST_CHECK_LAUNCH();
}

void accumulate_metrics(double* totals, const float* row_loss, const float* row_correct, int n) {
    if (n <= 0) return;
    accumulate_metrics_kernel<<<1, kMetricsBlock, 0, context().stream()>>>(totals, row_loss, row_correct, n);
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
