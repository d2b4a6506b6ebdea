// Tests of the double-precision oracle itself (tests/reference/): hand-computed values for the
// single operations, and the MLP's analytic gradients against central finite differences. Every
// other test trusts the oracle only because these pass.
#include <algorithm>
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
    // tanh(z + b) = tanh(−0.5), tanh(−0.5), tanh(3): odd, and (e^2x − 1)/(e^2x + 1) written out.
    const Matrix t = ref::bias_act(z, bias, Act::Tanh);
    EXPECT_DOUBLE_EQ(t.data[0], -(std::exp(1.0) - 1.0) / (std::exp(1.0) + 1.0));
    EXPECT_EQ(t.data[0], t.data[1]);
    EXPECT_DOUBLE_EQ(t.data[2], (std::exp(6.0) - 1.0) / (std::exp(6.0) + 1.0));
    EXPECT_EQ(ref::activate(0.0, Act::Tanh), 0.0);
}

TEST(Reference, ActivationDerivativesFromOutput) {
    // The derivative is written through the output a: none 1, relu [a > 0], sigmoid a (1 − a),
    // tanh 1 − a² (hand values at a = 0.5 and a = 0).
    EXPECT_EQ(ref::activation_derivative_from_output(0.5, Act::None), 1.0);
    EXPECT_EQ(ref::activation_derivative_from_output(0.5, Act::Relu), 1.0);
    EXPECT_EQ(ref::activation_derivative_from_output(0.0, Act::Relu), 0.0);
    EXPECT_EQ(ref::activation_derivative_from_output(0.5, Act::Sigmoid), 0.25);
    EXPECT_EQ(ref::activation_derivative_from_output(0.5, Act::Tanh), 0.75);
    EXPECT_EQ(ref::activation_derivative_from_output(0.0, Act::Tanh), 1.0);
    // tanh(x) → ±1 for large |x|: the derivative vanishes, it does not go negative.
    EXPECT_EQ(ref::activation_derivative_from_output(ref::activate(30.0, Act::Tanh), Act::Tanh), 0.0);
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

// act'(x) from the output a = act(x) against the central difference of act itself, for every
// activation, at points away from ReLU's kink at 0 (the same tolerance as below).
TEST(ReferenceFiniteDifferences, ActivationDerivatives) {
    for (Act act : {Act::None, Act::Relu, Act::Sigmoid, Act::Tanh}) {
        for (double x0 : {-3.0, -1.25, -0.3, 0.05, 0.7, 2.0, 4.5}) {
            double x = x0;
            const double fd = central_difference(x, [&] { return ref::activate(x, act); });
            const double analytic = ref::activation_derivative_from_output(ref::activate(x0, act), act);
            EXPECT_TRUE(gradient_matches(analytic, fd,
                                         "act " + std::to_string(static_cast<int>(act)) + " at " + std::to_string(x0)));
        }
    }
}

struct MlpCase {
    Act act;
    bool with_dropout;
};

void PrintTo(const MlpCase& c, std::ostream* os) {
    *os << (c.act == Act::Relu      ? "relu"
            : c.act == Act::Sigmoid ? "sigmoid"
            : c.act == Act::Tanh    ? "tanh"
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
    // ReLU kink; the margin is asserted for sigmoid and tanh too, where it is harmless.
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
                                           MlpCase{Act::Tanh, false}, MlpCase{Act::Tanh, true},
                                           MlpCase{Act::None, false}),
                         [](const ::testing::TestParamInfo<MlpCase>& param_info) {
                             const MlpCase& c = param_info.param;
                             const char* act = c.act == Act::Relu      ? "Relu"
                                               : c.act == Act::Sigmoid ? "Sigmoid"
                                               : c.act == Act::Tanh    ? "Tanh"
                                                                       : "None";
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

// ---- Convolution and max pooling: hand-computed values ---------------------------------------

using ref::Pad1;
using ref::Tensor4;

Tensor4 make4(int n, int c, int h, int w, std::vector<double> values) {
    Tensor4 t(n, c, h, w);
    t.data = std::move(values);
    return t;
}

TEST(Reference, Tensor4LayoutAndFloatRoundTrip) {
    Tensor4 t(2, 3, 4, 5);
    EXPECT_EQ(t.size(), 120u);
    t.at(1, 2, 3, 4) = 7.0;  // the last element
    EXPECT_EQ(t.data.back(), 7.0);
    t.at(1, 0, 2, 1) = 3.0;  // ((1·3 + 0)·4 + 2)·5 + 1 = 71
    EXPECT_EQ(t.data[71], 3.0);
    const Tensor4 f = Tensor4::from_float({0.5f, -1.25f, 3.0f, 0.1f}, 1, 1, 2, 2);
    EXPECT_EQ(f.at(0, 0, 1, 0), 3.0);
    EXPECT_EQ(f.at(0, 0, 1, 1), static_cast<double>(0.1f));  // widened exactly
    EXPECT_EQ(f.to_float(), (std::vector<float>{0.5f, -1.25f, 3.0f, 0.1f}));
}

TEST(Reference, PadValidSizes) {
    const auto valid = [](int in, int k, int s) {
        const Pad1 p = ref::pad_valid(in, k, s);
        EXPECT_EQ(p.before, 0);
        EXPECT_EQ(p.after, 0);
        return p.out;
    };
    EXPECT_EQ(valid(28, 5, 1), 24);
    EXPECT_EQ(valid(3, 2, 1), 2);
    EXPECT_EQ(valid(5, 3, 2), 2);
    EXPECT_EQ(valid(7, 3, 2), 3);
    EXPECT_EQ(valid(6, 2, 2), 3);
    EXPECT_EQ(valid(7, 2, 3), 2);  // floor(5/3) + 1
    EXPECT_EQ(valid(1, 1, 1), 1);
    EXPECT_EQ(valid(4, 4, 3), 1);
    EXPECT_LE(valid(3, 5, 1), 0);  // kernel larger than the image: no valid output
    EXPECT_LE(valid(3, 6, 2), 0);
}

TEST(Reference, PadSameSizesAndSplit) {
    struct Case {
        int in, k, s, out, before, after;
    };
    const Case cases[] = {
        {5, 3, 2, 3, 1, 1},  // total 2
        {7, 3, 2, 4, 1, 1},  // total 2
        {4, 2, 2, 2, 0, 0},  // total 0
        {1, 5, 1, 1, 2, 2},  // kernel larger than the image: total 4
        {3, 5, 1, 3, 2, 2},
        {3, 5, 2, 2, 2, 2},    // (2 − 1)·2 + 5 − 3 = 4
        {6, 3, 2, 3, 0, 1},    // total 1: the odd element goes after (SAME_UPPER)
        {4, 2, 1, 4, 0, 1},    // total 1
        {2, 4, 1, 2, 1, 2},    // total 3
        {28, 5, 1, 28, 2, 2},  // stride 1: out = in
        {7, 1, 3, 3, 0, 0},    // (3 − 1)·3 + 1 − 7 = 0
        {8, 1, 3, 3, 0, 0},    // would be −1: clamped to 0
    };
    for (const Case& c : cases) {
        const Pad1 p = ref::pad_same(c.in, c.k, c.s);
        EXPECT_EQ(p.out, c.out) << c.in << " " << c.k << " " << c.s;
        EXPECT_EQ(p.before, c.before) << c.in << " " << c.k << " " << c.s;
        EXPECT_EQ(p.after, c.after) << c.in << " " << c.k << " " << c.s;
    }
}

TEST(Reference, Conv2dValidHandComputedWithBias) {
    // x = [1 2 3; 4 5 6; 7 8 9], w = [1 2; 3 4] (not flipped: cross-correlation), b = 0.5.
    const Tensor4 x = make4(1, 1, 3, 3, {1, 2, 3, 4, 5, 6, 7, 8, 9});
    const Tensor4 w = make4(1, 1, 2, 2, {1, 2, 3, 4});
    const Pad1 p = ref::pad_valid(3, 2, 1);
    const Tensor4 y = ref::conv2d(x, w, {0.5}, 1, 1, p, p);
    ASSERT_EQ(y.n, 1);
    ASSERT_EQ(y.c, 1);
    ASSERT_EQ(y.h, 2);
    ASSERT_EQ(y.w, 2);
    // 1+4+12+20, 2+6+15+24, 4+10+21+32, 5+12+24+36, each + 0.5. (A flipped kernel would give 23.5 first.)
    EXPECT_EQ(y.data, (std::vector<double>{37.5, 47.5, 67.5, 77.5}));
    EXPECT_EQ(ref::conv2d(x, w, {}, 1, 1, p, p).data, (std::vector<double>{37, 47, 67, 77}));  // no bias

    // Backward with dy = 1 everywhere: dx counts the kernel taps over each pixel, dw sums the
    // input under each tap, db = the number of outputs.
    const Tensor4 dy(1, 1, 2, 2, 1.0);
    const Tensor4 dx = ref::conv2d_backward_data(dy, w, 3, 3, 1, 1, p, p);
    EXPECT_EQ(dx.data, (std::vector<double>{1, 3, 2, 4, 10, 6, 3, 7, 4}));
    const Tensor4 dw = ref::conv2d_backward_filter(dy, x, 2, 2, 1, 1, p, p);
    EXPECT_EQ(dw.data, (std::vector<double>{12, 16, 24, 28}));
    EXPECT_EQ(ref::conv2d_bias_grad(dy), (std::vector<double>{4}));
}

TEST(Reference, Conv2dChannelsAndBatchIndexing) {
    // A 1×1 kernel mixes channels: y[n,o,·] = Σ_i w[o,i] x[n,i,·]. w = [1 2; 3 4] (o, i).
    const Tensor4 x = make4(2, 2, 1, 2, {1, 2, 3, 4, 5, 6, 7, 8});
    const Tensor4 w = make4(2, 2, 1, 1, {1, 2, 3, 4});
    const Pad1 ph = ref::pad_valid(1, 1, 1), pw = ref::pad_valid(2, 1, 1);
    const Tensor4 y = ref::conv2d(x, w, {10, 20}, 1, 1, ph, pw);
    ASSERT_EQ(y.n, 2);
    ASSERT_EQ(y.c, 2);
    EXPECT_EQ(y.data, (std::vector<double>{17, 20, 35, 42, 29, 32, 63, 70}));
    // db sums over batch and positions per output channel.
    const Tensor4 dy = make4(2, 2, 1, 2, {1, 2, 3, 4, 5, 6, 7, 8});
    EXPECT_EQ(ref::conv2d_bias_grad(dy), (std::vector<double>{1 + 2 + 5 + 6, 3 + 4 + 7 + 8}));
}

TEST(Reference, Conv2dSameStride2On5x7) {
    const Pad1 ph = ref::pad_same(5, 3, 2), pw = ref::pad_same(7, 3, 2);
    ASSERT_EQ(ph.out, 3);
    ASSERT_EQ(pw.out, 4);
    // All-ones input and kernel: each output counts the window's taps inside the image.
    // Rows covered: −1..1, 1..3, 3..5 → 2, 3, 2 inside; columns −1..1, 1..3, 3..5, 5..7 → 2, 3, 3, 2.
    const Tensor4 ones_x(1, 1, 5, 7, 1.0), ones_w(1, 1, 3, 3, 1.0);
    const Tensor4 y = ref::conv2d(ones_x, ones_w, {}, 2, 2, ph, pw);
    ASSERT_EQ(y.h, 3);
    ASSERT_EQ(y.w, 4);
    EXPECT_EQ(y.data, (std::vector<double>{4, 6, 6, 4, 6, 9, 9, 6, 4, 6, 6, 4}));
    // x[y][x] = 10y + x. A kernel with a single 1 at the centre picks x[2oy][2ox]; one at the
    // top-left corner picks x[2oy − 1][2ox − 1], zero where that is in the padding.
    Tensor4 x(1, 1, 5, 7);
    for (int r = 0; r < 5; ++r)
        for (int c = 0; c < 7; ++c) x.at(0, 0, r, c) = 10 * r + c;
    Tensor4 centre(1, 1, 3, 3), corner(1, 1, 3, 3);
    centre.at(0, 0, 1, 1) = 1.0;
    corner.at(0, 0, 0, 0) = 1.0;
    EXPECT_EQ(ref::conv2d(x, centre, {}, 2, 2, ph, pw).data,
              (std::vector<double>{0, 2, 4, 6, 20, 22, 24, 26, 40, 42, 44, 46}));
    EXPECT_EQ(ref::conv2d(x, corner, {}, 2, 2, ph, pw).data,
              (std::vector<double>{0, 0, 0, 0, 0, 11, 13, 15, 0, 31, 33, 35}));
}

TEST(Reference, Conv2dKernelLargerThanImageSame) {
    // 3×3 image of ones, 5×5 kernel w[ky][kx] = 5ky + kx, same, stride 1: pad 2 each side, and
    // y[oy][ox] = Σ w over ky ∈ [2 − oy, 4 − oy], kx ∈ [2 − ox, 4 − ox].
    const Pad1 p = ref::pad_same(3, 5, 1);
    ASSERT_EQ(p.out, 3);
    ASSERT_EQ(p.before, 2);
    ASSERT_EQ(p.after, 2);
    Tensor4 w(1, 1, 5, 5);
    for (int ky = 0; ky < 5; ++ky)
        for (int kx = 0; kx < 5; ++kx) w.at(0, 0, ky, kx) = 5 * ky + kx;
    const Tensor4 y = ref::conv2d(Tensor4(1, 1, 3, 3, 1.0), w, {}, 1, 1, p, p);
    // Σ_{ky∈K,kx∈X} (5ky + kx) = 15·ΣK + 3·ΣX, with ΣK, ΣX ∈ {9 (2..4), 6 (1..3), 3 (0..2)}.
    EXPECT_EQ(y.data, (std::vector<double>{162, 153, 144, 117, 108, 99, 72, 63, 54}));
    // A 1×1 image with a 5×5 kernel sees only the kernel's centre.
    const Pad1 p1 = ref::pad_same(1, 5, 1);
    EXPECT_EQ(ref::conv2d(Tensor4(1, 1, 1, 1, 2.0), w, {1.0}, 1, 1, p1, p1).data, (std::vector<double>{2 * 12 + 1}));
}

TEST(Reference, MaxPoolHandComputed) {
    const Tensor4 x = make4(1, 1, 4, 4, {1, 5, 2, 0,  //
                                         3, 4, 8, 7,  //
                                         -1, -2, -3, -4,  //
                                         -6, -5, 9, -9});
    std::vector<int> argmax;
    const Tensor4 y = ref::maxpool2d(x, 2, 2, 2, 2, &argmax);
    ASSERT_EQ(y.h, 2);
    ASSERT_EQ(y.w, 2);
    EXPECT_EQ(y.data, (std::vector<double>{5, 8, -1, 9}));  // an all-negative window keeps its max
    EXPECT_EQ(argmax, (std::vector<int>{1, 6, 8, 14}));
    const Tensor4 dx = ref::maxpool2d_backward(make4(1, 1, 2, 2, {10, 20, 30, 40}), x, 2, 2, 2, 2);
    EXPECT_EQ(dx.data, (std::vector<double>{0, 10, 0, 0, 0, 0, 20, 0, 30, 0, 0, 0, 0, 0, 40, 0}));
    // Odd sizes: 3×5 with k2s2 gives 1×2; row 2 and column 4 are in no window.
    const Tensor4 odd = make4(1, 1, 3, 5, {0, 1, 2, 3, 99, 4, 5, 6, 7, 99, 99, 99, 99, 99, 99});
    EXPECT_EQ(ref::maxpool2d(odd, 2, 2, 2, 2).data, (std::vector<double>{5, 7}));
    // Rectangular window and strides on two channels: k (1, 3), s (1, 2) on a 1×5 row.
    const Tensor4 rows = make4(1, 2, 1, 5, {3, 1, 4, 1, 5, -9, -2, -6, -5, -3});
    std::vector<int> am2;
    EXPECT_EQ(ref::maxpool2d(rows, 1, 3, 1, 2, &am2).data, (std::vector<double>{4, 5, -2, -3}));
    EXPECT_EQ(am2, (std::vector<int>{2, 4, 1, 4}));
}

TEST(Reference, MaxPoolTiesGoToTheFirstElement) {
    // 2×4, k2s2: the left window is all 3s (argmax: its first element); the right one is
    // [1 2; 2 2]: the first 2 in row-major order is (0, 3), before (1, 2) and (1, 3).
    const Tensor4 x = make4(1, 1, 2, 4, {3, 3, 1, 2, 3, 3, 2, 2});
    std::vector<int> argmax;
    EXPECT_EQ(ref::maxpool2d(x, 2, 2, 2, 2, &argmax).data, (std::vector<double>{3, 2}));
    EXPECT_EQ(argmax, (std::vector<int>{0, 3}));
    EXPECT_EQ(ref::maxpool2d_backward(make4(1, 1, 1, 2, {10, 20}), x, 2, 2, 2, 2).data,
              (std::vector<double>{10, 0, 0, 20, 0, 0, 0, 0}));
    // A tie within the column order: [5 1; 5 1] → (0, 0), not (1, 0).
    const Tensor4 col = make4(1, 1, 2, 2, {5, 1, 5, 1});
    EXPECT_EQ(ref::maxpool2d_backward(make4(1, 1, 1, 1, {1}), col, 2, 2, 2, 2).data,
              (std::vector<double>{1, 0, 0, 0}));
    // Overlapping windows over a constant row, k (1, 3) s 1: each window's first element wins.
    const Tensor4 flat(1, 1, 1, 5, 5.0);
    std::vector<int> am;
    ref::maxpool2d(flat, 1, 3, 1, 1, &am);
    EXPECT_EQ(am, (std::vector<int>{0, 1, 2}));
    EXPECT_EQ(ref::maxpool2d_backward(make4(1, 1, 1, 3, {1, 2, 4}), flat, 1, 3, 1, 1).data,
              (std::vector<double>{1, 2, 4, 0, 0}));
}

TEST(Reference, MaxPoolOverlappingWindowsAccumulate) {
    // k3s1 on 3×4: both windows (columns 0..2 and 1..3) hold the 9 at (1, 2).
    const Tensor4 x = make4(1, 1, 3, 4, {1, 2, 3, 4, 5, 6, 9, 7, 0, 1, 2, 3});
    std::vector<int> argmax;
    EXPECT_EQ(ref::maxpool2d(x, 3, 3, 1, 1, &argmax).data, (std::vector<double>{9, 9}));
    EXPECT_EQ(argmax, (std::vector<int>{6, 6}));
    Tensor4 expected(1, 1, 3, 4);
    expected.at(0, 0, 1, 2) = 0.25 + 0.5;
    EXPECT_EQ(ref::maxpool2d_backward(make4(1, 1, 1, 2, {0.25, 0.5}), x, 3, 3, 1, 1).data, expected.data);
    // k3s2 on 5×5 with the maximum at the centre (2, 2), shared by all four windows.
    Tensor4 x5(1, 1, 5, 5);
    for (int r = 0; r < 5; ++r)
        for (int c = 0; c < 5; ++c) x5.at(0, 0, r, c) = -(r * 5 + c);
    x5.at(0, 0, 2, 2) = 100.0;
    const Tensor4 dx = ref::maxpool2d_backward(make4(1, 1, 2, 2, {1, 2, 4, 8}), x5, 3, 3, 2, 2);
    Tensor4 e5(1, 1, 5, 5);
    e5.at(0, 0, 2, 2) = 15.0;
    EXPECT_EQ(dx.data, e5.data);
}

// ---- Convolution and max pooling: finite differences ----------------------------------------
//
// L = Σ f(x)·R with R a fixed random tensor of the output's shape, so dL/dy = R. Convolution is
// linear in each of x, w, b: the central difference is exact up to rounding, and the tolerance of
// gradient_matches (above) applies unchanged.

Tensor4 random4(int n, int c, int h, int w, std::mt19937& rng) {
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    Tensor4 t(n, c, h, w);
    for (double& v : t.data) v = dist(rng);
    return t;
}

double dot(const Tensor4& a, const Tensor4& b) {
    double s = 0.0;
    for (std::size_t i = 0; i < a.data.size(); ++i) s += a.data[i] * b.data[i];
    return s;
}

struct ConvCase {
    const char* name;
    int n, in_c, out_c, h, w, kh, kw, sh, sw;
    bool same, bias;
};

void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name; }

class ReferenceConvGradients : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ReferenceConvGradients, MatchFiniteDifferences) {
    const ConvCase c = GetParam();
    const Pad1 ph = c.same ? ref::pad_same(c.h, c.kh, c.sh) : ref::pad_valid(c.h, c.kh, c.sh);
    const Pad1 pw = c.same ? ref::pad_same(c.w, c.kw, c.sw) : ref::pad_valid(c.w, c.kw, c.sw);
    ASSERT_GE(ph.out, 1);
    ASSERT_GE(pw.out, 1);
    std::mt19937 rng(1234);
    Tensor4 x = random4(c.n, c.in_c, c.h, c.w, rng);
    Tensor4 w = random4(c.out_c, c.in_c, c.kh, c.kw, rng);
    std::vector<double> b;
    if (c.bias) {
        std::uniform_real_distribution<double> dist(-1.0, 1.0);
        for (int o = 0; o < c.out_c; ++o) b.push_back(dist(rng));
    }
    const Tensor4 r = random4(c.n, c.out_c, ph.out, pw.out, rng);
    const auto loss = [&] { return dot(ref::conv2d(x, w, b, c.sh, c.sw, ph, pw), r); };
    ASSERT_EQ(ref::conv2d(x, w, b, c.sh, c.sw, ph, pw).size(), r.size());

    const Tensor4 dx = ref::conv2d_backward_data(r, w, c.h, c.w, c.sh, c.sw, ph, pw);
    const Tensor4 dw = ref::conv2d_backward_filter(r, x, c.kh, c.kw, c.sh, c.sw, ph, pw);
    const std::vector<double> db = ref::conv2d_bias_grad(r);
    ASSERT_EQ(dx.n, x.n);
    ASSERT_EQ(dx.c, x.c);
    ASSERT_EQ(dx.h, x.h);
    ASSERT_EQ(dx.w, x.w);
    ASSERT_EQ(dw.n, w.n);
    ASSERT_EQ(dw.c, w.c);
    ASSERT_EQ(dw.h, w.h);
    ASSERT_EQ(dw.w, w.w);
    ASSERT_EQ(db.size(), static_cast<std::size_t>(c.out_c));

    int nonzero = 0;
    for (std::size_t i = 0; i < x.data.size(); ++i) {
        const double fd = central_difference(x.data[i], loss);
        EXPECT_TRUE(gradient_matches(dx.data[i], fd, "dx[" + std::to_string(i) + "]"));
        nonzero += std::fabs(dx.data[i]) > 1e-6;
    }
    for (std::size_t i = 0; i < w.data.size(); ++i) {
        const double fd = central_difference(w.data[i], loss);
        EXPECT_TRUE(gradient_matches(dw.data[i], fd, "dw[" + std::to_string(i) + "]"));
        nonzero += std::fabs(dw.data[i]) > 1e-6;
    }
    for (std::size_t i = 0; i < b.size(); ++i) {
        const double fd = central_difference(b[i], loss);
        EXPECT_TRUE(gradient_matches(db[i], fd, "db[" + std::to_string(i) + "]"));
    }
    EXPECT_GT(nonzero, 0);  // not vacuous
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ReferenceConvGradients,
    ::testing::Values(
        // name, n, in_c, out_c, h, w, kh, kw, sh, sw, same, bias
        ConvCase{"Image1x1_Kernel1x1", 1, 1, 1, 1, 1, 1, 1, 1, 1, false, true},
        ConvCase{"Image5x7_K3_Same_S2", 3, 3, 7, 5, 7, 3, 3, 2, 2, true, true},
        ConvCase{"Image5x7_K3_Same_S1", 1, 7, 3, 5, 7, 3, 3, 1, 1, true, true},
        ConvCase{"Image5x7_K3_Valid_S1", 3, 7, 1, 5, 7, 3, 3, 1, 1, false, true},
        ConvCase{"Image3x3_K5_Same_S1", 1, 1, 3, 3, 3, 5, 5, 1, 1, true, true},
        ConvCase{"Image3x3_K5_Same_S2", 3, 3, 3, 3, 3, 5, 5, 2, 2, true, true},
        ConvCase{"Image6x5_K3x2_Same_S2x1_AsymmetricPad", 2, 3, 3, 6, 5, 3, 2, 2, 1, true, true},
        ConvCase{"Image7x5_K3x2_Valid_S2_NoBias", 1, 7, 7, 7, 5, 3, 2, 2, 2, false, false},
        ConvCase{"Image7x7_K2_Valid_S3_Gaps", 3, 1, 3, 7, 7, 2, 2, 3, 3, false, true},
        ConvCase{"Image1x1_K5_Same", 3, 3, 1, 1, 1, 5, 5, 1, 1, true, true}),
    [](const ::testing::TestParamInfo<ConvCase>& param_info) { return std::string(param_info.param.name); });

struct PoolCase {
    const char* name;
    int n, c, h, w, kh, kw, sh, sw;
};

void PrintTo(const PoolCase& c, std::ostream* os) { *os << c.name; }

class ReferenceMaxPoolGradients : public ::testing::TestWithParam<PoolCase> {};

TEST_P(ReferenceMaxPoolGradients, MatchFiniteDifferences) {
    const PoolCase c = GetParam();
    std::mt19937 rng(77);
    // Distinct values 0.01 apart (a random permutation, scaled): a perturbation of 1e-6 never
    // changes a window's argmax, so the max is differentiable at x.
    Tensor4 x(c.n, c.c, c.h, c.w);
    std::vector<int> perm(x.size());
    for (std::size_t i = 0; i < perm.size(); ++i) perm[i] = static_cast<int>(i);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (std::size_t i = 0; i < perm.size(); ++i) x.data[i] = 0.01 * (perm[i] - static_cast<int>(perm.size()) / 2);
    const Tensor4 y = ref::maxpool2d(x, c.kh, c.kw, c.sh, c.sw);
    ASSERT_EQ(y.h, (c.h - c.kh) / c.sh + 1);
    ASSERT_EQ(y.w, (c.w - c.kw) / c.sw + 1);
    const Tensor4 r = random4(y.n, y.c, y.h, y.w, rng);
    const auto loss = [&] { return dot(ref::maxpool2d(x, c.kh, c.kw, c.sh, c.sw), r); };
    const Tensor4 dx = ref::maxpool2d_backward(r, x, c.kh, c.kw, c.sh, c.sw);
    ASSERT_EQ(dx.size(), x.size());
    int nonzero = 0;
    double total = 0.0, total_r = 0.0;
    for (std::size_t i = 0; i < x.data.size(); ++i) {
        const double fd = central_difference(x.data[i], loss);
        EXPECT_TRUE(gradient_matches(dx.data[i], fd, "dx[" + std::to_string(i) + "]"));
        nonzero += dx.data[i] != 0.0;
        total += dx.data[i];
    }
    for (double v : r.data) total_r += v;
    EXPECT_NEAR(total, total_r, 1e-12);  // every dy lands somewhere, exactly once
    EXPECT_GT(nonzero, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ReferenceMaxPoolGradients,
    ::testing::Values(
        // name, n, c, h, w, kh, kw, sh, sw
        PoolCase{"K2S2_4x4", 1, 1, 4, 4, 2, 2, 2, 2}, PoolCase{"K2S2_5x7_Odd", 3, 3, 5, 7, 2, 2, 2, 2},
        PoolCase{"K3S2_5x7_Overlap", 3, 3, 5, 7, 3, 3, 2, 2}, PoolCase{"K2S1_5x7_Overlap", 1, 3, 5, 7, 2, 2, 1, 1},
        PoolCase{"K3S1_5x7_Overlap", 2, 1, 5, 7, 3, 3, 1, 1}, PoolCase{"K2x3S1x2_5x7", 2, 7, 5, 7, 2, 3, 1, 2},
        PoolCase{"K1S1_Identity", 1, 1, 3, 2, 1, 1, 1, 1}),
    [](const ::testing::TestParamInfo<PoolCase>& param_info) { return std::string(param_info.param.name); });

}  // namespace
