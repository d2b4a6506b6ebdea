// Benchmark arithmetic for `cumnist bench`: the floating-point work of a training or inference
// step, this machine's FMA and GEMM peaks, and quantiles of timings. Measures nothing about the model.
#pragma once

#include <string>
#include <vector>

#include "cumnist/model.h"

namespace cumnist {

// Floating-point operations (a multiply-add counts 2) of the GEMMs and convolutions of one
// training step over `n` samples, from the multiply-adds M_l of each layer with parameters
// (layer_macs: in·out for a dense layer, out_h·out_w·filters·in·kh·kw for a convolution):
//   forward               2·n·Σ_l M_l
//   backward, dW          2·n·Σ_l M_l
//   backward, dX          2·n·Σ_{l>0} M_l   (the first layer's input gradient is not computed)
//   total                 6·n·Σ_l M_l − 2·n·M_0
// Elementwise work is left out: bias, activation, dropout and softmax are O(n·Σ out_l), ~0.3 % of
// the GEMMs for 784-512-256-10; Adam is ~14 FLOP per parameter per step (~7.5 MFLOP), ~10 % of
// the GEMMs at batch 32 and ~0.3 % at 1024, but it is bound by memory, not arithmetic.
double training_step_flops(const ModelSpec& spec, int n);

// Forward pass only (inference): 2·n·Σ_l M_l.
double inference_flops(const ModelSpec& spec, int n);

// The machine's FP32 arithmetic peak: every OpenMP thread runs a loop of independent fused
// multiply-adds on registers only (no memory traffic), in the widest vector unit the processor has
// (AVX-512, else AVX2 + FMA, else scalar fmaf). gflops is the sum of the threads' rates, best of
// `repeats` timed runs of ~`seconds` each.
struct FmaPeak {
    double gflops = 0.0;
    int threads = 0;
    std::string unit;  // "AVX-512", "AVX2+FMA" or "scalar"
};
FmaPeak measure_fma_peak(double seconds = 0.05, int repeats = 3);

// The best GEMM the CPU backend reaches: ops::gemm (oneDNN) on size × size × size row-major
// matrices in each of the four transpose combinations, `repeats` times each after one untimed
// call, with the current OpenMP thread count; the best rate (2·size³ FLOP per call).
struct GemmPeak {
    double gflops = 0.0;
    int size = 0;  // m = n = k
    int repeats = 0;
    int threads = 0;
    std::string transposes;  // of the best run: "NN", "NT", "TN" or "TT"
};
GemmPeak measure_gemm_peak(int size = 1024, int repeats = 5);

// "oneDNN 2.6.3 (brg:avx512_core)": the CPU GEMM library and the kernel it uses here.
std::string cpu_gemm_library();

// The GEMMs of one CPU training step over `n` samples on their own: forward, dW and dX with the
// model's shapes and transposes, through ops::gemm as the CPU backend calls it, on scratch
// matrices, timed over several runs (at least 5, and at least ~0.2 s): the CPU step cannot get
// below it without faster GEMMs. The median is what a step's median compares with on a noisy
// machine; the best run is the floor on a quiet one. Defined for models of dense layers only: a
// model with a convolution gets runs == 0.
struct GemmFloor {
    double seconds_per_step = 0.0;  // best run
    double median_seconds = 0.0;
    int runs = 0;
};
GemmFloor measure_step_gemms(const ModelSpec& spec, int n);

// The q-quantile (q in [0, 1]) of `values`, interpolating linearly between order statistics
// (numpy's default). Throws Error when `values` is empty.
double quantile(std::vector<double> values, double q);

}  // namespace cumnist
