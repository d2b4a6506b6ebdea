// The two backends behind ops.h: cumnist::cpu (src/cpu/) and cumnist::cuda (kernels/, or
// kernels/cuda_stubs.cpp in a build without CUDA). Identical signatures by construction.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cumnist/ops.h"

namespace cumnist::cpu {
#include "backend_ops.inc"

// Sets flush-to-zero and denormals-are-zero on the calling thread and on the OpenMP workers it
// runs parallel regions on, once per thread (workers created later inherit it from that thread).
// The CUDA kernels are compiled with -ftz=true: both backends flush denormals, so the per-element
// formulas agree, and the CPU never takes the microcode assists that a denormal costs (Adam's
// moments decay into that range for rarely active inputs; training slowed 2.5x without it).
void prepare_thread();

// ops::conv2d_preferred_layouts on the CPU (the GPU's are NCHW, asked of no backend).
ImageLayouts conv2d_preferred_layouts(const Conv2dGeometry& g);
}  // namespace cumnist::cpu

namespace cumnist::cuda {
#include "backend_ops.inc"
}  // namespace cumnist::cuda
