// Internal to the CUDA backend: the deterministic column-sum tile loop shared by bias_grad, the
// backward epilogue that produces the bias gradient as it writes dpre (act_dropout_backward with
// db) and the loss kernel that produces the output layer's (bias_softmax_xent). One definition, so
// all give the same bits for the same values.
#pragma once

#include <cstddef>

#include "cuda_common.cuh"

namespace cumnist::cuda {

// Tiles of 32 columns (one warp's coalesced row segment) × 8 row groups; block (32, 8).
constexpr unsigned kColumnTileCols = 32;
constexpr unsigned kColumnRowGroups = 8;

// column_sums (below) with the (32, 8) arrangement laid over any block: the thread is (tx, ty)
// when `member`, and only meets the barriers otherwise (call from every thread of the block); this
// block does tiles first_tile, first_tile + tile_stride, ... The bits are column_sums's.
template <class Value>
__device__ __forceinline__ void column_sums_by(float* __restrict__ db, int n, int cols, Value value, unsigned tx,
                                               unsigned ty, bool member, unsigned first_tile, unsigned tile_stride) {
    __shared__ float partial[kColumnRowGroups][kColumnTileCols + 1];
    // The tile loop's condition is the same for the whole block, so the barriers are uniform.
    for (unsigned tile = first_tile; static_cast<std::size_t>(tile) * kColumnTileCols < static_cast<std::size_t>(cols);
         tile += tile_stride) {
        const int c = static_cast<int>(tile * kColumnTileCols + tx);
        if (member) {
            float sum = 0.0f;
            if (c < cols) {
                // __fadd_rn: never contracted with a product inside value() (the backward epilogue's
                // dh · scale) into an FMA, so the sum adds the very values written, as bias_grad does.
                for (int r = static_cast<int>(ty); r < n; r += static_cast<int>(kColumnRowGroups))
                    sum = __fadd_rn(sum, value(r, c, static_cast<std::size_t>(r) * static_cast<std::size_t>(cols) +
                                                         static_cast<std::size_t>(c)));
            }
            partial[ty][tx] = sum;
        }
        __syncthreads();
        if (member && ty == 0 && c < cols) {
            float total = partial[0][tx];
            for (unsigned g = 1; g < kColumnRowGroups; ++g) total += partial[g][tx];
            db[c] = total;
        }
        __syncthreads();  // partial[] is reused by the next tile
    }
}

// db[c] = Σ_r value(r, c, i) for r < n, c < cols, with i = r·cols + c the flat row-major index.
// Thread (x, y) of a block sums rows y, y + 8, y + 16, ... of column tile·32 + x in ascending
// order; then the 8 partial sums are added in order y = 0..7. The order depends only on (n,
// cols), never on timing. `value` is called exactly once per element, by one thread, so it may
// also write that element (the backward epilogue writes dpre there). Call with blockDim (32, 8),
// from every thread of the block (it has barriers); the tile loop covers any grid size.
template <class Value>
__device__ __forceinline__ void column_sums(float* __restrict__ db, int n, int cols, Value value) {
    column_sums_by(db, n, cols, value, threadIdx.x, threadIdx.y, true, blockIdx.x, gridDim.x);
}

// The launch shape for column_sums over `cols` columns: one block per tile, capped (the tile loop
// covers the rest). Call only when cols > 0.
inline unsigned column_sums_grid(int cols) {
    const std::size_t tiles = (static_cast<std::size_t>(cols) + kColumnTileCols - 1) / kColumnTileCols;
    return grid_for(tiles, 1);
}
inline dim3 column_sums_block() { return dim3(kColumnTileCols, kColumnRowGroups); }

}  // namespace cumnist::cuda
