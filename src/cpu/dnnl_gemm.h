// The CPU backend's GEMMs through oneDNN: matmul primitives created once per shape and thread
// count and cached per calling thread, and dnnl_sgemm for the rare general alpha/beta case.
// Row-major throughout, like ops.h. Builds against oneDNN 2.x (Debian 12) and 3.x.
#pragma once

#include <string>

#include "cumnist/ops.h"

namespace cumnist::cpu::onednn {

// C (m, n) = op(A) · op(B), op(A) (m, k), op(B) (k, n). Overwrites C (its old contents may be
// NaN). m, n, k > 0. The primitive for this shape, these transposes and the current OpenMP thread
// count is created on first use; later calls only execute it. Deterministic for a given thread
// count and instruction set.
void matmul(float* c, const float* a, Trans ta, const float* b, Trans tb, int m, int n, int k);

// C (m, n) = alpha · op(A) · op(B) + beta · C through dnnl_sgemm. m, n, k > 0.
void sgemm(float* c, const float* a, Trans ta, const float* b, Trans tb, int m, int n, int k, float alpha, float beta);

// "oneDNN 2.6.3 (brg:avx512_core)": the library's version and the kernel its matmul picks on this
// processor for a training-step shape.
std::string describe();

}  // namespace cumnist::cpu::onednn
