// Tests of the double-precision oracle itself (tests/reference/): hand-computed values for the
// single operations, and the MLP's analytic gradients against central finite differences. Every
// other test trusts the oracle only because these pass.
#include <cmath>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "reference/reference.h"

namespace {

using ref::Act;
using ref::Matrix;

Matrix make(int r, int c, std::vector<double> values) {
    Matrix m(r, c);
    m.data = std::move(values);
    return m;
}

Matrix transposed(const Matrix& m) {
    Matrix t(m.cols, m.rows);
    for (int r = 0; r < m.rows; ++r)
        for (int c = 0; c < m.cols; ++c) t.at(c, r) = m.at(r, c);
    return t;
}

// ---- Single operations on hand-computed values ---------------------------------------------

TEST(Reference, MatmulAllTransposeCases) {
    const Matrix a = make(2, 3, {1, 2, 3, 4, 5, 6});
    const Matrix b = make(3, 2, {7, 8, 9, 10, 11, 12});
    const std::vector<double> expected = {58, 64, 139, 154};
    EXPECT_EQ(ref::matmul(a, false, b, false).data, expected);
    EXPECT_EQ(ref::matmul(transposed(a), true, b, false).data, expected);
    EXPECT_EQ(ref::matmul(a, false, transposed(b), true).data, expected);
    EXPECT_EQ(ref::matmul(transposed(a), true, transposed(b), true).data, expected);
    const Matrix c = ref::matmul(a, false, b, false);
    EXPECT_EQ(c.rows, 2);
    EXPECT_EQ(c.cols, 2);
}

TEST(Reference, GemmAlphaBetaAndNanOverwrite) {
    const Matrix a = make(1, 2, {1, 2});
    const Matrix b = make(2, 1, {3, 4});  // a·b = 11
    Matrix c = make(1, 1, {std::numeric_limits<double>::quiet_NaN()});
    ref::gemm(c, a, false, b, false, 2.0, 0.0);  // beta 0: old NaN ignored
    EXPECT_EQ(c.data[0], 22.0);
    // Values that move: a no-op gemm would leave 22, alpha ignored would give 11 + 0.25·22 = 16.5,
    // beta ignored 3·11 = 33, beta taken as 1 3·11 + 22 = 55.
    ref::gemm(c, a, false, b, false, 3.0, 0.25);  // 3·11 + 0.25·22
    EXPECT_EQ(c.data[0], 38.5);
}

TEST(Reference, BiasActivation) {
    const Matrix z = make(1, 3, {-1.0, 0.0, 2.0});
    const std::vector<double> bias = {0.5, -0.5, 1.0};
    EXPECT_EQ(ref::bias_act(z, bias, Act::None).data, (std::vector<double>{-0.5, -0.5, 3.0}));
    EXPECT_EQ(ref::bias_act(z, bias, Act::Relu).data, (std::vector<double>{0.0, 0.0, 3.0}));
    const Matrix s = ref::bias_act(z, bias, Act::Sigmoid);
    EXPECT_DOUBLE_EQ(s.data[0], 1.0 / (1.0 + std::exp(0.5)));
    EXPECT_DOUBLE_EQ(s.data[2], 1.0 / (1.0 + std::exp(-3.0)));
}

TEST(Reference, DropoutWithExplicitMask) {
    const Matrix a = make(1, 4, {1, 2, 3, 4});
    const std::vector<uint8_t> keep = {1, 0, 1, 0};
    EXPECT_EQ(ref::dropout(a, keep, 0.5).data, (std::vector<double>{2, 0, 6, 0}));
    EXPECT_EQ(ref::dropout(a, {}, 0.5).data, a.data);  // no mask: identity
    const Matrix dh = make(1, 4, {1, 1, 1, 1});
    const Matrix relu_out = make(1, 4, {0.5, 0.5, 0.0, 2.0});
    // dh · keep/(1 − 0.75) · relu'(a)
    EXPECT_EQ(ref::act_dropout_backward(dh, relu_out, {1, 0, 1, 1}, 0.75, Act::Relu).data,
              (std::vector<double>{4, 0, 0, 4}));
}

TEST(Reference, SoftmaxKnownValues) {
    const Matrix p = ref::softmax(make(1, 3, {0.0, std::log(2.0), std::log(3.0)}));
    EXPECT_NEAR(p.data[0], 1.0 / 6.0, 1e-15);
    EXPECT_NEAR(p.data[1], 2.0 / 6.0, 1e-15);
    EXPECT_NEAR(p.data[2], 3.0 / 6.0, 1e-15);
    // Max subtraction: no overflow at 1000.
    const Matrix big = ref::softmax(make(1, 2, {1000.0, 1000.0}));
    EXPECT_EQ(big.data, (std::vector<double>{0.5, 0.5}));
}

TEST(Reference, SoftmaxXentKnownValuesAndTies) {
    // Row 0: p = (1/4, 3/4), label 1.  Row 1: a tie (3, 3, 0): the first maximum is index 0.
    const Matrix z = make(2, 3, {0.0, std::log(3.0), -1e9, 3.0, 3.0, 0.0});
    const ref::XentResult r = ref::softmax_xent(z, {1, 1}, 0.5);
    EXPECT_NEAR(r.row_loss[0], -std::log(0.75), 1e-15);
    EXPECT_NEAR(r.row_loss[1], std::log(2.0 + std::exp(-3.0)), 1e-15);
    EXPECT_EQ(r.row_correct[0], 1.0);
    EXPECT_EQ(r.row_correct[1], 0.0);  // label 1 is the second of two equal maxima
    EXPECT_NEAR(r.loss, (r.row_loss[0] + r.row_loss[1]) / 2.0, 1e-15);
    EXPECT_NEAR(r.dlogits.at(0, 0), 0.25 * 0.5, 1e-15);
    EXPECT_NEAR(r.dlogits.at(0, 1), -0.25 * 0.5, 1e-15);
    EXPECT_EQ(ref::softmax_xent(z, {0, 0}, 1.0).row_correct, (std::vector<double>{0.0, 1.0}));
}

TEST(Reference, ColumnSums) { EXPECT_EQ(ref::column_sums(make(2, 2, {1, 2, 3, 4})), (std::vector<double>{4, 6})); }

TEST(Reference, OptimizerFormulas) {
    // Adam at t = 1 from zero state: m = 0.1 g, v = 0.001 g², α = lr · √0.001 / 0.1, so the step
    // is lr · g / (|g| + ε/√0.001) ≈ lr · sign(g).
    double w = 1.0, m = 0.0, v = 0.0;
    ref::adam(w, m, v, 0.5, 1e-3, 0.9, 0.999, 1e-7, 1);
    EXPECT_NEAR(m, 0.05, 1e-16);
    EXPECT_NEAR(v, 0.00025, 1e-18);
    EXPECT_NEAR(w, 1.0 - 1e-3 * 0.5 / (0.5 + 1e-7 / std::sqrt(0.001)), 1e-15);
    double ws = 1.0, vel = 0.25;
    ref::sgd(ws, vel, 2.0, 0.1, 0.5);  // v = 0.125 − 0.2
    EXPECT_NEAR(vel, -0.075, 1e-16);
    EXPECT_NEAR(ws, 0.925, 1e-16);
    double wr = 1.0, s = 1.0;
    ref::rmsprop(wr, s, 2.0, 0.01, 0.9, 0.0);  // s = 0.9 + 0.4 = 1.3
    EXPECT_NEAR(s, 1.3, 1e-15);
    EXPECT_NEAR(wr, 1.0 - 0.01 * 2.0 / std::sqrt(1.3), 1e-15);
}

// ---- Finite differences --------------------------------------------------------------------
//
// Central differences (f(θ+ε) − f(θ−ε)) / 2ε in double with ε = 1e-6: the truncation error is
// ε²/6 · f''' ≈ 1e-13 for these smooth, O(1)-curvature functions, and the rounding error is about
// (a few ulp of a loss ≈ 1) / 2ε ≈ 1e-9 in absolute terms. So we require
//     |fd − analytic| ≤ 1e-6 · max(|fd|, |analytic|) + 1e-8,
// a relative error of 1e-6, with an absolute floor of 1e-8 (10× the rounding noise) for gradient
// entries that are (near) zero, e.g. units a ReLU switches off for the whole batch.

constexpr double kFdEps = 1e-6;
constexpr double kFdRel = 1e-6;
constexpr double kFdAbsFloor = 1e-8;

double central_difference(double& param, const std::function<double()>& loss) {
    const double saved = param;
    param = saved + kFdEps;
    const double up = loss();
    param = saved - kFdEps;
    const double down = loss();
    param = saved;
    return (up - down) / (2.0 * kFdEps);
}

::testing::AssertionResult gradient_matches(double analytic, double fd, const std::string& name) {
    const double err = std::fabs(fd - analytic);
    const double allowed = kFdRel * std::max(std::fabs(fd), std::fabs(analytic)) + kFdAbsFloor;
    if (err <= allowed) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << name << ": analytic " << analytic << ", finite difference " << fd
                                         << ", |err| " << err << " > " << allowed;
}

TEST(ReferenceFiniteDifferences, SoftmaxXentGradient) {
    std::mt19937 rng(11);
    std::uniform_real_distribution<double> dist(-3.0, 3.0);
    Matrix z(4, 5);
    for (double& v : z.data) v = dist(rng);
    const std::vector<int> labels = {0, 4, 2, 2};
    // The mean loss's gradient is the per-row gradient times 1/n.
    const ref::XentResult r = ref::softmax_xent(z, labels, 1.0 / 4.0);
    for (std::size_t i = 0; i < z.data.size(); ++i) {
        const double fd = central_difference(z.data[i], [&] { return ref::softmax_xent(z, labels, 1.0).loss; });
        EXPECT_TRUE(gradient_matches(r.dlogits.data[i], fd, "dlogits[" + std::to_string(i) + "]"));
    }
}

struct MlpCase {
    Act act;
    bool with_dropout;
};

void PrintTo(const MlpCase& c, std::ostream* os) {
    *os << (c.act == Act::Relu      ? "relu"
            : c.act == Act::Sigmoid ? "sigmoid"
                                    : "none")
        << (c.with_dropout ? ", fixed mask" : ", no dropout");
}

class ReferenceMlpGradients : public ::testing::TestWithParam<MlpCase> {};

// Smallest |pre-activation| over every hidden unit and row: a ReLU kink closer than the
// perturbation (≤ ε · Σ|inputs| ≈ 1e-5 here) would make the finite difference meaningless.
double hidden_margin(const ref::RefForward& f) {
    double margin = HUGE_VAL;
    for (std::size_t l = 0; l + 1 < f.pre.size(); ++l)
        for (double v : f.pre[l].data) margin = std::min(margin, std::fabs(v));
    return margin;
}

TEST_P(ReferenceMlpGradients, MatchFiniteDifferences) {
    const MlpCase c = GetParam();
    const std::vector<int> sizes = {7, 5, 4, 3};
    const int batch = 3;
    const std::vector<int> labels = {0, 2, 1};
    const double rate = c.with_dropout ? 0.5 : 0.0;

    std::mt19937 rng(2024);
    std::uniform_real_distribution<double> xdist(-1.0, 1.0);
    Matrix x(batch, sizes[0]);
    for (double& v : x.data) v = xdist(rng);
    std::vector<std::vector<uint8_t>> masks;
    if (c.with_dropout) {
        std::bernoulli_distribution keep(0.5);
        for (std::size_t l = 1; l + 1 < sizes.size(); ++l) {
            std::vector<uint8_t> m(static_cast<std::size_t>(batch) * sizes[l]);
            for (uint8_t& k : m) k = keep(rng) ? 1 : 0;
            m[0] = 1;  // at least one unit of every layer passes
            masks.push_back(std::move(m));
        }
    }

    // Pick the first seed (deterministically) whose hidden pre-activations stay ≥ 1e-4 from the
    // ReLU kink; the margin is asserted for sigmoid too, where it is harmless.
    ref::RefMlp mlp;
    double margin = 0.0;
    for (uint32_t seed = 1; seed < 200 && margin < 1e-4; ++seed) {
        mlp = ref::RefMlp::random(sizes, c.act, seed);
        margin = hidden_margin(ref::forward(mlp, x, labels, masks, rate));
    }
    ASSERT_GE(margin, 1e-4) << "no seed keeps the pre-activations away from the ReLU kink";

    const ref::RefForward f = ref::forward(mlp, x, labels, masks, rate);
    ASSERT_TRUE(std::isfinite(f.loss));
    const ref::RefGrads g = ref::backward(mlp, x, labels, f, masks, rate);
    const auto loss = [&] { return ref::forward(mlp, x, labels, masks, rate).loss; };

    int checked = 0, nonzero = 0;
    for (int l = 0; l < mlp.n_layers(); ++l) {
        ASSERT_EQ(g.dw[l].rows, mlp.w[l].rows);
        ASSERT_EQ(g.dw[l].cols, mlp.w[l].cols);
        ASSERT_EQ(g.db[l].size(), mlp.b[l].size());
        for (std::size_t i = 0; i < mlp.w[l].data.size(); ++i) {
            const double fd = central_difference(mlp.w[l].data[i], loss);
            EXPECT_TRUE(
                gradient_matches(g.dw[l].data[i], fd, "dW" + std::to_string(l) + "[" + std::to_string(i) + "]"));
            ++checked;
            nonzero += std::fabs(g.dw[l].data[i]) > 1e-6;
        }
        for (std::size_t i = 0; i < mlp.b[l].size(); ++i) {
            const double fd = central_difference(mlp.b[l][i], loss);
            EXPECT_TRUE(gradient_matches(g.db[l][i], fd, "db" + std::to_string(l) + "[" + std::to_string(i) + "]"));
            ++checked;
        }
    }
    for (std::size_t i = 0; i < x.data.size(); ++i) {
        const double fd = central_difference(x.data[i], loss);
        EXPECT_TRUE(gradient_matches(g.dx.data[i], fd, "dx[" + std::to_string(i) + "]"));
        ++checked;
    }
    EXPECT_EQ(checked, 7 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3 + batch * 7);
    // Guard against a vacuous pass (everything zero): most weight gradients are not.
    EXPECT_GT(nonzero, (7 * 5 + 5 * 4 + 4 * 3) / 3);
}

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceMlpGradients,
                         ::testing::Values(MlpCase{Act::Relu, false}, MlpCase{Act::Relu, true},
                                           MlpCase{Act::Sigmoid, false}, MlpCase{Act::Sigmoid, true},
                                           MlpCase{Act::None, false}),
                         [](const ::testing::TestParamInfo<MlpCase>& param_info) {
                             const MlpCase& c = param_info.param;
                             const char* act = c.act == Act::Relu ? "Relu" : c.act == Act::Sigmoid ? "Sigmoid" : "None";
                             return std::string(act) + (c.with_dropout ? "_FixedMask" : "_NoDropout");
                         });

// The fixed mask really changes the function: with it, the loss differs from the loss without it.
TEST(ReferenceMlp, MaskChangesTheLoss) {
    const std::vector<int> sizes = {7, 5, 4, 3};
    const ref::RefMlp mlp = ref::RefMlp::random(sizes, Act::Sigmoid, 3);
    Matrix x(2, 7, 0.5);
    const std::vector<int> labels = {1, 2};
    const std::vector<std::vector<uint8_t>> masks = {std::vector<uint8_t>(10, 0), std::vector<uint8_t>(8, 1)};
    const double plain = ref::forward(mlp, x, labels, {}, 0.0).loss;
    const double masked = ref::forward(mlp, x, labels, masks, 0.5).loss;
    EXPECT_NE(plain, masked);
    // First hidden layer fully dropped: the logits no longer depend on x.
    Matrix x2(2, 7, -0.25);
    EXPECT_EQ(ref::forward(mlp, x2, labels, masks, 0.5).loss, masked);
}

}  // namespace
