// Softmax cross-entropy (loss, correctness, the logits' gradient and, for training batches, the
// metric totals and optionally the output layer's bias add and bias gradient, in one kernel) and
// plain softmax, one warp per row, max-subtracted, with expf/logf (no fast math). Any classes ≥ 1.
#include <climits>
#include <cmath>

#include "backend.h"
#include "column_sums.cuh"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

constexpr unsigned kWarpSize = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr unsigned kRowsPerBlock = kBlockSize / kWarpSize;

// The row's maximum and the index of its first occurrence, reduced over the warp. Each lane enters
// with the best of its own classes (index INT_MAX when it has none). The combine, "larger value,
// then smaller index", is associative and commutative, so every lane ends with the same answer,
// independent of timing.
__device__ __forceinline__ void warp_argmax(float& value, int& index) {
    for (unsigned offset = kWarpSize / 2; offset > 0; offset /= 2) {
        const float other_value = __shfl_xor_sync(kFullMask, value, offset);
        const int other_index = __shfl_xor_sync(kFullMask, index, offset);
        if (other_value > value || (other_value == value && other_index < index)) {
            value = other_value;
            index = other_index;
        }
    }
}

// Σ over the warp by butterfly; every lane ends with the same (bitwise) sum, because each pairwise
// addition is commutative.
__device__ __forceinline__ float warp_sum(float value) {
    for (unsigned offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kFullMask, value, offset);
    return value;
}

// Per row z (classes): m = max z (first argmax a);  sum = Σ exp(z − m)  (so lse = m + log sum).
struct RowStats {
    float max;
    int argmax;
    float sum;
};

// Called by all 32 lanes of a warp for the same row.
__device__ __forceinline__ RowStats row_stats(const float* z, int classes, unsigned lane) {
    float best = -INFINITY;
    int best_index = INT_MAX;
    for (int c = static_cast<int>(lane); c < classes; c += kWarpSize) {
        const float v = z[c];
        // Ascending c within a lane, so '>' keeps the first maximum; the first element is always taken.
        if (v > best || best_index == INT_MAX) {
            best = v;
            best_index = c;
        }
    }
    warp_argmax(best, best_index);
    float sum = 0.0f;
    for (int c = static_cast<int>(lane); c < classes; c += kWarpSize) sum += expf(z[c] - best);
    sum = warp_sum(sum);
    return {best, best_index, sum};
}

// Row r of logits (n, classes), by the 32 lanes of a warp:
//   sum = Σ_c exp(z_c − max z)
//   row_loss[r] = (max z − z[label]) + log sum        (= −log softmax(z)[label])
//   row_correct[r] = [first argmax z == label]
//   dlogits[r, c] = (exp(z_c − max z) / sum − [c == label]) · grad_scale     (skipped when dlogits == null)
// and returns the row's loss and correctness (every lane gets the values written).
// p is formed from the max-shifted exponentials, never from a rounded lse: at logits of ±100 the
// rounding of lse alone would cost ~4e-6 in p − 1. Same formulas as the CPU backend.
// dlogits may alias logits: the only cross-lane read, z[label], happens before a __syncwarp that
// precedes every write, and each lane then re-reads exactly the elements it overwrites; the
// closing __syncwarp keeps the warp's next row's reads after this row's writes.
// A label outside [0, classes) yields a NaN loss (caught by the trainer's divergence check)
// instead of an out-of-bounds read.
struct RowResult {
    float loss, correct;
};
__device__ __forceinline__ RowResult xent_row(float* dlogits, float* __restrict__ row_loss,
                                              float* __restrict__ row_correct, const float* logits,
                                              const uint8_t* __restrict__ labels, int r, int classes, float grad_scale,
                                              unsigned lane) {
    const std::size_t row_start = static_cast<std::size_t>(r) * static_cast<std::size_t>(classes);
    const float* z = logits + row_start;
    const RowStats s = row_stats(z, classes, lane);
    const int label = labels[r];
    const bool valid = label < classes;
    const float z_label = valid ? z[label] : NAN;
    __syncwarp();
    const RowResult result{(s.max - z_label) + logf(s.sum), valid && s.argmax == label ? 1.0f : 0.0f};
    if (lane == 0) {
        row_loss[r] = result.loss;
        row_correct[r] = result.correct;
    }
    if (dlogits != nullptr) {
        float* dz = dlogits + row_start;
        for (int c = static_cast<int>(lane); c < classes; c += kWarpSize) {
            const float p = expf(z[c] - s.max) / s.sum;
            dz[c] = (p - (c == label ? 1.0f : 0.0f)) * grad_scale;
        }
    }
    __syncwarp();
    return result;
}

// xent_row for every row, one warp per row, grid-strided.
static __global__ void softmax_xent_kernel(float* dlogits, float* __restrict__ row_loss, float* __restrict__ row_correct,
                                           const float* logits, const uint8_t* __restrict__ labels, int n, int classes,
                                           float grad_scale) {
    const unsigned lane = threadIdx.x % kWarpSize;
    const unsigned warp = threadIdx.x / kWarpSize;
    for (int r = static_cast<int>(blockIdx.x * kRowsPerBlock + warp); r < n; r += static_cast<int>(gridDim.x * kRowsPerBlock))
        xent_row(dlogits, row_loss, row_correct, logits, labels, r, classes, grad_scale, lane);
}

// The metrics in the same kernel, for batches of up to kFusedMetricsRows rows: one block of
// kFusedMetricsBlock threads, warp w doing rows w, w + 32, ... and adding their loss and
// correctness in double in that order; then thread 0 adds the 32 warps' sums in warp order to
// totals[0] and totals[1]. A fixed order (deterministic), though not accumulate_metrics's.
// kFold (bias_softmax_xent): first biased_logits (== logits) = logits + bias per column, as the
// output layer's epilogue computes it, and last db = Σ_rows dlogits in column_sums's order (the
// threads of the first 8 warps laid out as its (32, 8) block), so db has bias_grad's bits. The
// block's barriers make the biased logits visible to the rows' warps and every row's dlogits to
// the column sums; both are read through plain (coherent) loads.
constexpr unsigned kFusedMetricsBlock = 1024;
constexpr unsigned kFusedMetricsWarps = kFusedMetricsBlock / kWarpSize;
constexpr int kFusedMetricsRows = 2048;  // up to 64 rows per warp
static_assert(kFusedMetricsBlock >= kColumnTileCols * kColumnRowGroups, "the column sums need a (32, 8) block's threads");
template <bool kFold>
static __global__ void __launch_bounds__(kFusedMetricsBlock)
    softmax_xent_metrics_kernel(float* dlogits, float* __restrict__ row_loss, float* __restrict__ row_correct,
                                const float* logits, const uint8_t* __restrict__ labels, int n, int classes,
                                float grad_scale, double* __restrict__ totals, float* biased_logits,
                                const float* __restrict__ bias, float* __restrict__ db) {
    __shared__ double warp_loss[kFusedMetricsWarps];
    __shared__ double warp_correct[kFusedMetricsWarps];
    const unsigned lane = threadIdx.x % kWarpSize;
    const unsigned warp = threadIdx.x / kWarpSize;
    if constexpr (kFold) {
        const unsigned count = static_cast<unsigned>(n) * static_cast<unsigned>(classes);  // ≤ 2048 · 256
        for (unsigned i = threadIdx.x; i < count; i += kFusedMetricsBlock)
            biased_logits[i] = logits[i] + bias[i % static_cast<unsigned>(classes)];
        __syncthreads();
    }
    const float* z = kFold ? biased_logits : logits;
    double loss = 0.0, correct = 0.0;
    for (int r = static_cast<int>(warp); r < n; r += static_cast<int>(kFusedMetricsWarps)) {
        const RowResult row = xent_row(dlogits, row_loss, row_correct, z, labels, r, classes, grad_scale, lane);
        loss += static_cast<double>(row.loss);
        correct += static_cast<double>(row.correct);
    }
    if (lane == 0) {
        warp_loss[warp] = loss;
        warp_correct[warp] = correct;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0, c = 0.0;
        for (unsigned w = 0; w < kFusedMetricsWarps; ++w) {
            l += warp_loss[w];
            c += warp_correct[w];
        }
        totals[0] += l;
        totals[1] += c;
    }
    if constexpr (kFold) {
        const unsigned t = threadIdx.x;
        column_sums_by(
            db, n, classes, [dlogits](int, int, std::size_t i) { return dlogits[i]; }, t % kColumnTileCols,
            t / kColumnTileCols, t < kColumnTileCols * kColumnRowGroups, 0, 1);
    }
}

// probs (n, classes) = exp(z − max z) / Σ exp(z − max z) per row. probs may alias logits (same argument as above).
static __global__ void softmax_kernel(float* probs, const float* logits, int n, int classes) {
    const unsigned lane = threadIdx.x % kWarpSize;
    const unsigned warp = threadIdx.x / kWarpSize;
    for (int r = static_cast<int>(blockIdx.x * kRowsPerBlock + warp); r < n; r += static_cast<int>(gridDim.x * kRowsPerBlock)) {
        const std::size_t row_start = static_cast<std::size_t>(r) * static_cast<std::size_t>(classes);
        const float* z = logits + row_start;
        const RowStats s = row_stats(z, classes, lane);
        __syncwarp();
        float* p = probs + row_start;
        for (int c = static_cast<int>(lane); c < classes; c += kWarpSize) p[c] = expf(z[c] - s.max) / s.sum;
        __syncwarp();
    }
}

// One warp per row: enough blocks for n rows, capped (the row loop covers the rest).
unsigned grid_for_warp_rows(int n) { return grid_for(static_cast<std::size_t>(n) * kWarpSize, kBlockSize); }

}  // namespace

void softmax_xent(float* dlogits, float* row_loss, float* row_correct, const float* logits, const uint8_t* labels,
                  int n, int classes, float grad_scale, double* totals) {
    if (n <= 0 || classes <= 0) return;
    if (totals != nullptr && n <= kFusedMetricsRows) {  // one kernel (one node of a captured step)
        softmax_xent_metrics_kernel<false><<<1, kFusedMetricsBlock, 0, context().stream()>>>(
            dlogits, row_loss, row_correct, logits, labels, n, classes, grad_scale, totals, nullptr, nullptr, nullptr);
        CUMNIST_CHECK_LAUNCH();
        return;
    }
    softmax_xent_kernel<<<grid_for_warp_rows(n), kBlockSize, 0, context().stream()>>>(
        dlogits, row_loss, row_correct, logits, labels, n, classes, grad_scale);
    CUMNIST_CHECK_LAUNCH();
    if (totals != nullptr) accumulate_metrics(totals, row_loss, row_correct, n);  // more rows: all the SMs, then a sum
}

void bias_softmax_xent(float* dlogits, float* db, float* row_loss, float* row_correct, float* logits, const float* bias,
                       const uint8_t* labels, int n, int classes, float grad_scale, double* totals) {
    if (n <= 0 || classes <= 0) return;
    if (totals != nullptr && n <= kFusedMetricsRows) {  // one kernel for the bias, the loss, the metrics and db
        softmax_xent_metrics_kernel<true><<<1, kFusedMetricsBlock, 0, context().stream()>>>(
            dlogits, row_loss, row_correct, logits, labels, n, classes, grad_scale, totals, logits, bias, db);
        CUMNIST_CHECK_LAUNCH();
        return;
    }
    // Larger batches: the three ops it fuses, each over all the SMs.
    bias_act_dropout_forward(logits, logits, bias, n, classes, Activation::None, 0.0f, 0, 0, 0, false, nullptr);
    softmax_xent(dlogits, row_loss, row_correct, logits, labels, n, classes, grad_scale, totals);
    bias_grad(db, dlogits, n, classes);
}

void softmax(float* probs, const float* logits, int n, int classes) {
    if (n <= 0 || classes <= 0) return;
    softmax_kernel<<<grid_for_warp_rows(n), kBlockSize, 0, context().stream()>>>(probs, logits, n, classes);
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
