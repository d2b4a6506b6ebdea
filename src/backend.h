// The two backends behind ops.h: cumnist::cpu (src/cpu/) and cumnist::cuda (kernels/, or
// kernels/cuda_stubs.cpp in a build without CUDA). Identical signatures by construction.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cumnist/ops.h"

namespace cumnist::cpu {
#include "backend_ops.inc"
}  // namespace cumnist::cpu

namespace cumnist::cuda {
#include "backend_ops.inc"
}  // namespace cumnist::cuda
