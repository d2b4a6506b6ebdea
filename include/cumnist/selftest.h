// The GPU self-test behind `cumnist selftest`: every op of the CUDA backend against the CPU
// backend (itself tested against the double-precision reference) on odd shapes, then training
// parity (GPU vs CPU, step by step from a shared state) and CUDA Graph replay vs plain launches.
#pragma once

#include <string>
#include <vector>

#include "cumnist/data.h"
#include "cumnist/device.h"
#include "cumnist/mlp.h"
#include "cumnist/model.h"
#include "cumnist/optim.h"

namespace cumnist {

struct SelftestResult {
    std::string name;
    double worst_error = 0;  // max |gpu − cpu| / (abs + rel·|cpu|): ≤ 1 passes
    double worst_abs = 0;    // max |gpu − cpu|
    std::string tolerance;   // as stated, e.g. "1e-6 + 1e-5·|x|"
    bool passed = false;
    std::string detail;      // why it failed, when it did
};

// Training on two backends compared step by step: before every step the tested backend is given
// the reference's parameters, optimizer state and step counter, both run the same step (the
// captured graph on a GPU), and the comparison covers that one step, so rounding differences never
// compound. What is compared is what a correct backend reproduces whatever its rounding:
//  - the step's loss: the forward pass is continuous in its inputs (ReLU and max pooling are;
//    only their derivatives jump), so it differs by the forward's rounding alone;
//  - the update: the tested backend's new parameters and optimizer state against the reference
//    optimizer applied to the tested backend's own gradient from the same state (the same
//    per-element formula, so no gradient difference is amplified by Adam's normalisation);
//  - the step counter, exactly;
//  - with `compare_gradients`, the gradients themselves. Only for an MLP whose every ReLU gate is
//    held away from zero (relu_gate_margin() > 0 before every step, checked): a gate whose
//    pre-activation lies within rounding of zero may open on one backend and not the other, which
//    changes a gradient by O(1) on a healthy GPU.
struct TrainingParityCase {
    std::string name;
    ModelSpec model;
    OptimizerConfig optimizer;
    Dataset data;
    std::vector<float> init;  // the shared starting parameters; empty: the seed's initialisation
    int steps = 20, batch = 32;
    bool compare_gradients = false;
};
SelftestResult compare_training_steps(const TrainingParityCase& c, Device reference = Device::Cpu,
                                      Device tested = Device::Cuda);

// The smallest margin by which a ReLU MLP's hidden pre-activations clear zero, over every sample of
// `data` and any dropout mask: per hidden unit, |bias| less a bound on |Σ w·x| (from the largest
// input value of every sample) and less the rounding any order of float summation can add. > 0:
// every gate is the same on every backend, for every sample. Dead units (bias below the bound)
// feed exact zeros onward. Throws Error unless `mlp` uses ReLU.
double relu_gate_margin(const MlpConfig& mlp, const std::vector<float>& params, const Dataset& data);

// A ReLU MLP with dropout, its data (a few lit pixels per image) and its starting point (Glorot
// weights; hidden biases of ±a few units, most first-layer units dead) built so that
// relu_gate_margin() stays > 0 for 20 Adam steps: the case for compare_gradients.
TrainingParityCase gate_margin_case();

// Runs all checks on the current GPU. Requires cuda_available(); throws cumnist::Error otherwise.
std::vector<SelftestResult> run_gpu_selftest();

}  // namespace cumnist
