// gather_batch: assembles a training batch on the device from a device-resident data set and the
// epoch's permutation, reading the batch index from device memory (so a captured step can replay
// it), converting uint8 pixels to float (· 1/255, as the CPU backend does) on the way.
#include <cstdint>

#include "backend.h"
#include "cuda_common.cuh"

namespace cumnist::cuda {

namespace {

// Pixel scaling as in the CPU backend: multiply by the float nearest 1/255.
constexpr float kPixelScale = 1.0f / 255.0f;

// For each batch row r (r < rows ≤ batch_size; the last batch of an epoch may be short):
//   sample = order[*batch_index · batch_size + r]
//   x[r, j] = images[sample, j] · (1/255)  (the CPU backend's formula, bit for bit);  labels_out[r] = labels[sample].
// Rows over grid y, pixels over grid x. kVec: 4 pixels per thread (one 4-byte load, one 16-byte
// store), used only when cols % 4 == 0 and both base pointers are suitably aligned.
template <bool kVec>
static __global__ void gather_batch_kernel(float* __restrict__ x, uint8_t* __restrict__ labels_out,
                                           const uint8_t* __restrict__ images, const uint8_t* __restrict__ labels,
                                           const int32_t* __restrict__ order, const uint64_t* __restrict__ batch_index,
                                           int rows, int cols, int batch_size) {
    const uint64_t first = *batch_index * static_cast<uint64_t>(batch_size);
    const int units = kVec ? cols / 4 : cols;
    const int start = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int stride = static_cast<int>(gridDim.x * blockDim.x);
    for (int r = static_cast<int>(blockIdx.y); r < rows; r += static_cast<int>(gridDim.y)) {
        const std::size_t sample = static_cast<std::size_t>(order[first + static_cast<uint64_t>(r)]);
        const uint8_t* src = images + sample * static_cast<std::size_t>(cols);
        float* dst = x + static_cast<std::size_t>(r) * static_cast<std::size_t>(cols);
        if (start == 0) labels_out[r] = labels[sample];
        for (int u = start; u < units; u += stride) {
            if constexpr (kVec) {
                const uchar4 p = reinterpret_cast<const uchar4*>(src)[u];
                reinterpret_cast<float4*>(dst)[u] =
                    make_float4(static_cast<float>(p.x) * kPixelScale, static_cast<float>(p.y) * kPixelScale,
                                static_cast<float>(p.z) * kPixelScale, static_cast<float>(p.w) * kPixelScale);
            } else {
                dst[u] = static_cast<float>(src[u]) * kPixelScale;
            }
        }
    }
}

bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace

void gather_batch(float* x, uint8_t* labels_out, const uint8_t* images, const uint8_t* labels, const int32_t* order,
                  const uint64_t* batch_index, int rows, int cols, int batch_size) {
    if (rows <= 0) return;
    const cudaStream_t stream = context().stream();
    // Every row of images and of x starts aligned when cols % 4 == 0 and the bases are aligned.
    const bool vec = cols % 4 == 0 && aligned(images, 4) && aligned(x, 16);
    const int units = vec ? cols / 4 : cols;
    const dim3 grid = grid_for_rows(rows, units);
    if (vec) {
        gather_batch_kernel<true><<<grid, kBlockSize, 0, stream>>>(x, labels_out, images, labels, order, batch_index, rows, cols, batch_size);
    } else {
        gather_batch_kernel<false><<<grid, kBlockSize, 0, stream>>>(x, labels_out, images, labels, order, batch_index, rows, cols, batch_size);
    }
    CUMNIST_CHECK_LAUNCH();
}

}  // namespace cumnist::cuda
