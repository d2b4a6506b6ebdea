// Benchmark arithmetic (include/cumnist/bench.h): FLOP counts against hand-computed values,
// quantiles against numpy's definition. Speed itself is never asserted.
#include <gtest/gtest.h>

#include "cumnist/bench.h"

namespace cumnist {
namespace {

TEST(Bench, TrainingFlopsOfTheReferenceModel) {
    const MlpConfig config;  // 784-512-256-10
    // Σ in·out = 784·512 + 512·256 + 256·10 = 401,408 + 131,072 + 2,560 = 535,040
    // 6·535,040 − 2·401,408 = 2,407,424 per sample
    EXPECT_DOUBLE_EQ(training_step_flops(config, 1), 2407424.0);
    EXPECT_DOUBLE_EQ(training_step_flops(config, 32), 32 * 2407424.0);
    EXPECT_DOUBLE_EQ(inference_flops(config, 1), 2 * 535040.0);
    EXPECT_DOUBLE_EQ(inference_flops(config, 10000), 10000 * 2 * 535040.0);
}

TEST(Bench, TrainingFlopsWithoutHiddenLayers) {
    MlpConfig config;
    config.hidden = {};
    // One layer 784 -> 10: forward and dW only, no input gradient: 4·7,840 per sample.
    EXPECT_DOUBLE_EQ(training_step_flops(config, 3), 3 * 4 * 7840.0);
}

TEST(Bench, QuantileInterpolatesLikeNumpy) {
    // numpy.quantile([4, 1, 3, 2], [0, 0.5, 0.9, 1]) == [1, 2.5, 3.7, 4]
    const std::vector<double> v = {4, 1, 3, 2};
    EXPECT_DOUBLE_EQ(quantile(v, 0.0), 1.0);
    EXPECT_DOUBLE_EQ(quantile(v, 0.5), 2.5);
    EXPECT_NEAR(quantile(v, 0.9), 3.7, 1e-12);
    EXPECT_DOUBLE_EQ(quantile(v, 1.0), 4.0);
    EXPECT_DOUBLE_EQ(quantile({7.0}, 0.9), 7.0);
    EXPECT_THROW(quantile({}, 0.5), Error);
    EXPECT_THROW(quantile(v, 1.5), Error);
}

TEST(Bench, PeaksAndGemmFloorRunOnSmallShapes) {
    const FmaPeak fma = measure_fma_peak(0.002, 1);
    EXPECT_GT(fma.gflops, 0.0);
    EXPECT_GE(fma.threads, 1);
    EXPECT_TRUE(fma.unit == "AVX-512" || fma.unit == "AVX2+FMA" || fma.unit == "scalar") << fma.unit;
    EXPECT_THROW(measure_fma_peak(0.0, 1), Error);
    const GemmPeak peak = measure_gemm_peak(64, 2);
    EXPECT_GT(peak.gflops, 0.0);
    EXPECT_EQ(peak.size, 64);
    EXPECT_GE(peak.threads, 1);
    EXPECT_EQ(peak.transposes.size(), 2u);
    EXPECT_NE(cpu_gemm_library().find("oneDNN "), std::string::npos) << cpu_gemm_library();
    MlpConfig config;
    config.inputs = 20;
    config.hidden = {8};
    config.classes = 3;
    const GemmFloor floor = measure_step_gemms(config, 4);
    EXPECT_GT(floor.seconds_per_step, 0.0);
    EXPECT_GE(floor.median_seconds, floor.seconds_per_step);
    EXPECT_GE(floor.runs, 5);
}

}  // namespace
}  // namespace cumnist
