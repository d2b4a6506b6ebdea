// Learning-rate schedules and early stopping (schedule.h) against hand-computed values, their JSON
// form and its refusals, and the optimizer ops' device-side learning-rate factor on each backend.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "cumnist/buffer.h"
#include "cumnist/error.h"
#include "cumnist/ops.h"
#include "cumnist/schedule.h"
#include "test_support.h"

namespace {

using namespace cumnist;

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "<no error>";
}

TEST(LrSchedule, ConstantAndStepFactors) {
    LrSchedule constant;
    for (int e = 1; e <= 5; ++e) EXPECT_EQ(constant.factor(e, 5, {}), 1.0);
    LrSchedule step;
    step.kind = ScheduleKind::Step;
    step.step_epochs = 3;
    step.gamma = 0.5;
    const double want[] = {1, 1, 1, 0.5, 0.5, 0.5, 0.25};
    for (int e = 1; e <= 7; ++e) EXPECT_DOUBLE_EQ(step.factor(e, 7, {}), want[e - 1]) << "epoch " << e;
}

TEST(LrSchedule, CosineWithWarmUp) {
    LrSchedule s;
    s.kind = ScheduleKind::Cosine;
    s.warmup_epochs = 2;
    s.min_factor = 0.1;
    // 2 warm-up epochs (1/3, 2/3), then 4 epochs at progress 0, 1/4, 2/4, 3/4.
    const double pi = std::acos(-1.0);
    const double want[] = {1.0 / 3, 2.0 / 3, 1.0, 0.1 + 0.9 * (1 + std::cos(pi / 4)) / 2, 0.1 + 0.9 * 0.5,
                           0.1 + 0.9 * (1 + std::cos(3 * pi / 4)) / 2};
    for (int e = 1; e <= 6; ++e) EXPECT_NEAR(s.factor(e, 6, {}), want[e - 1], 1e-15) << "epoch " << e;
    // Without warm-up the first epoch has the full rate and no epoch reaches min (or 0).
    s.warmup_epochs = 0;
    s.min_factor = 0.0;
    EXPECT_EQ(s.factor(1, 3, {}), 1.0);
    EXPECT_NEAR(s.factor(2, 3, {}), 0.75, 1e-15);
    EXPECT_NEAR(s.factor(3, 3, {}), 0.25, 1e-15);
    EXPECT_GT(s.factor(1, 1, {}), 0.0);
}

TEST(LrSchedule, PlateauFollowsTheValidationLosses) {
    LrSchedule s;
    s.kind = ScheduleKind::Plateau;
    s.patience = 2;
    s.gamma = 0.1;
    s.min_delta = 0.01;
    // Epoch losses: improve, improve, flat (within min_delta), worse -> decay before epoch 5;
    // then flat twice more -> decay again before epoch 7.
    const std::vector<double> losses = {1.0, 0.8, 0.795, 0.9, 0.85, 0.81, 0.7};
    const double want[] = {1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01};
    for (int e = 1; e <= 8; ++e) EXPECT_NEAR(s.factor(e, 8, losses), want[e - 1], 1e-15) << "epoch " << e;
    // Only the epochs before `epoch` count.
    EXPECT_EQ(s.factor(4, 8, losses), 1.0);
}

TEST(LrSchedule, EarlyStopping) {
    EXPECT_FALSE(should_stop_early({1.0, 0.9, 0.95}, 2));  // one epoch without improvement
    EXPECT_TRUE(should_stop_early({1.0, 0.9, 0.95, 0.91}, 2));
    EXPECT_FALSE(should_stop_early({1.0, 0.9, 0.95, 0.89}, 2));  // the last one improved
    EXPECT_FALSE(should_stop_early({1.0, 1.0, 1.0}, 0));        // patience 0: never
    EXPECT_FALSE(should_stop_early({1.0}, 1));
    EXPECT_TRUE(should_stop_early({1.0, 1.0}, 1));               // equal is not better
    EXPECT_TRUE(should_stop_early({1.0, 0.99}, 1, 0.05));       // not by min_delta
}

TEST(LrSchedule, JsonRoundTripAndRefusals) {
    LrSchedule s;
    s.kind = ScheduleKind::Plateau;
    s.patience = 3;
    s.gamma = 0.2;
    s.min_delta = 0.001;
    EXPECT_EQ(schedule_from_json(schedule_to_json(s)), s);
    EXPECT_EQ(schedule_to_json(LrSchedule{}), nlohmann::json({{"name", "constant"}}));
    EXPECT_NE(error_of([] { (void)schedule_from_json({{"name", "linear"}}); }).find("unknown schedule 'linear'"),
              std::string::npos);
    EXPECT_NE(error_of([] { (void)schedule_from_json({{"name", "step"}, {"gamma", 0.5}}); }).find("\"step_epochs\" is missing"),
              std::string::npos);
    EXPECT_NE(error_of([] {
                  (void)schedule_from_json({{"name", "step"}, {"step_epochs", 2}, {"gamma", 1.5}});
              }).find("--lr-gamma must be in (0, 1), got 1.5"),
              std::string::npos);
    LrSchedule bad;
    bad.kind = ScheduleKind::Cosine;
    bad.min_factor = 1.0;
    EXPECT_NE(error_of([&] { bad.validate(); }).find("--lr-min-factor must be in [0, 1)"), std::string::npos);
    EXPECT_NE(error_of([] { (void)parse_schedule_kind("exp"); }).find("expected constant, step, cosine or plateau"),
              std::string::npos);
}

// The optimizer ops with a device-side factor: exactly the ops at lr · factor, and exactly lr at 1.
class LrScaleOps : public ::testing::TestWithParam<Device> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(GetParam()); }
};

TEST_P(LrScaleOps, ScaledStepEqualsTheStepAtTheScaledRate) {
    const Device dev = GetParam();
    constexpr int n = 1000;
    const std::vector<float> w0 = cumnist_test::uniform_floats(n, -1.0f, 1.0f, 1),
                             g0 = cumnist_test::uniform_floats(n, -0.1f, 0.1f, 2),
                             s0 = cumnist_test::uniform_floats(n, 0.0f, 1e-3f, 3);
    for (float factor : {1.0f, 0.3f}) {
        for (int kind = 0; kind < 3; ++kind) {
            SCOPED_TRACE(::testing::Message() << "kind " << kind << " factor " << factor);
            auto run = [&](float lr, const float* scale) {
                Buffer<float> w = Buffer<float>::from_host(w0, dev), g = Buffer<float>::from_host(g0, dev);
                Buffer<float> a = Buffer<float>::from_host(s0, dev), b = Buffer<float>::from_host(s0, dev);
                Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{4}, dev);
                if (kind == 0)
                    ops::adam_step(w.view(1, n), a.view(1, n), b.view(1, n), g.view(1, n), {lr, 0.9f, 0.999f, 1e-7f, scale},
                                   step.data());
                else if (kind == 1)
                    ops::sgd_step(w.view(1, n), a.view(1, n), g.view(1, n), {lr, 0.9f, scale});
                else
                    ops::rmsprop_step(w.view(1, n), b.view(1, n), g.view(1, n), {lr, 0.9f, 1e-7f, scale});
                return w.to_host();
            };
            const Buffer<float> scale = Buffer<float>::from_host(std::vector<float>{factor}, dev);
            const std::vector<float> scaled = run(0.01f, scale.data()), direct = run(0.01f * factor, nullptr);
            EXPECT_EQ(scaled, direct);
            EXPECT_NE(scaled, w0) << "the step moved the weights";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Devices, LrScaleOps, ::testing::Values(Device::Cpu, Device::Cuda),
                         [](const auto& param_info) { return param_info.param == Device::Cpu ? "Cpu" : "Cuda"; });

}  // namespace
