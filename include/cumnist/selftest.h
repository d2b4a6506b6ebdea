// The GPU self-test behind `cumnist selftest`: every op of the CUDA backend against the CPU
// backend (itself tested against the double-precision reference) on odd shapes, then training
// parity (GPU vs CPU from one seed) and CUDA Graph replay vs plain launches.
#pragma once

#include <string>
#include <vector>

namespace cumnist {

struct SelftestResult {
    std::string name;
    double worst_error = 0;  // max |gpu − cpu| / (abs + rel·|cpu|): ≤ 1 passes
    double worst_abs = 0;    // max |gpu − cpu|
    std::string tolerance;   // as stated, e.g. "1e-6 + 1e-5·|x|"
    bool passed = false;
    std::string detail;      // why it failed, when it did
};

// Runs all checks on the current GPU. Requires cuda_available(); throws cumnist::Error otherwise.
std::vector<SelftestResult> run_gpu_selftest();

}  // namespace cumnist
