// cuda::gemm: the one place where cumnist's row-major matrices meet column-major cuBLAS. Every
// matrix product of the model goes through this wrapper, on the context's compute stream.
#include <algorithm>
#include <limits>

#include "backend.h"
#include "cuda_common.cuh"

namespace cumnist::cuda {

// Row-major C (m, n) = alpha · op(A) · op(B) + beta · C, with A stored (m, k) [ta == No] or (k, m)
// [ta == Yes], B stored (k, n) [tb == No] or (n, k) [tb == Yes], all contiguous.
//
// A row-major (r, c) array is, byte for byte, the column-major (c, r) array of its transpose. So
// cuBLAS sees Cᵀ (n, m) and we ask it for
//     Cᵀ = op(B)ᵀ · op(A)ᵀ
// i.e. cublasSgemm(opB, opA, n, m, k, B, ldb, A, lda, C, ldc = n), where each leading dimension
// is the row length of the row-major array as stored: lda = (ta == No ? k : m),
// ldb = (tb == No ? n : k). The transpose flags carry over unchanged: B stored (k, n) row-major is
// already op(B)ᵀ (n, k) column-major, so opB = N; stored (n, k) it is op(B) column-major, so opB = T.
// beta == 0 makes cuBLAS ignore C's old contents (NaN included).
void gemm(float* c, const float* a, const float* b, int m, int n, int k, Trans ta, Trans tb, float alpha, float beta) {
    if (m <= 0 || n <= 0) return;
    if (k == 0) {
        // An empty product: C = beta · C (C = 0 for beta == 0, even over NaN, as the CPU backend
        // does), without relying on cuBLAS's handling of k == 0 (A and B may be null then).
        const std::size_t count = static_cast<std::size_t>(m) * static_cast<std::size_t>(n);
        if (beta == 0.0f) {
            CUDA_CHECK(cudaMemsetAsync(c, 0, count * sizeof(float), context().stream()));
        } else if (beta != 1.0f) {
            CUMNIST_CHECK(count <= static_cast<std::size_t>(std::numeric_limits<int>::max()),
                          "gemm: {} elements of C exceed one cuBLAS scaling", count);
            CUBLAS_CHECK(cublasSscal(context().cublas(), static_cast<int>(count), &beta, c, 1));
        }
        return;
    }
    const cublasOperation_t op_a = ta == Trans::No ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t op_b = tb == Trans::No ? CUBLAS_OP_N : CUBLAS_OP_T;
    // cuBLAS requires ld ≥ 1 even when k == 0 (then C = beta · C).
    const int lda = std::max(1, ta == Trans::No ? k : m);
    const int ldb = std::max(1, tb == Trans::No ? n : k);
    const int ldc = n;
    // alpha and beta are read from host memory (CUBLAS_POINTER_MODE_HOST, set on the handle) and
    // baked into a captured graph; they are constants of the step.
    CUBLAS_CHECK(cublasSgemm(context().cublas(), op_b, op_a, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc));
}

}  // namespace cumnist::cuda
