// Every op of include/cumnist/ops.h on every backend against the double-precision oracle
// (tests/reference/), parameterised over Device {Cpu, Cuda} × odd shapes. CUDA cases are skipped,
// visibly and with the reason, where no GPU is usable. Inputs are made on the host from fixed
// seeds, uploaded with Buffer<T>::from_host and read back with to_host().
//
// Tolerances (DESIGN §4), each restated where it is used:
//   element-wise ops vs double: 1e-6 absolute + 1e-5 relative (a few float roundings of O(1) values);
//   GEMM and reductions: 1e-4 absolute + 1e-4 relative (float accumulation of up to ~1000 terms).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

#include "core/cuda_host.h"
#include "cumnist/buffer.h"
#include "cumnist/device.h"
#include "cumnist/error.h"
#include "cumnist/ops.h"
#include "cumnist/philox.h"
#include "reference/reference.h"
#include "test_support.h"

namespace {

using cumnist_test::expect_rejected;

using cumnist::Activation;
using cumnist::Buffer;
using cumnist::Device;
using cumnist::Dropout;
using cumnist::MatrixView;
using cumnist::Trans;
namespace ops = cumnist::ops;
using cumnist_test::all_close;
using cumnist_test::Tolerance;
using cumnist_test::uniform_bytes;
using cumnist_test::uniform_floats;
using cumnist_test::scaled_to_max;
using cumnist_test::widen;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Element-wise results: a handful of float roundings of values of size ≤ ~10.
constexpr Tolerance kElementwise{1e-6, 1e-5};
// Reductions over up to ~1000 float terms.
constexpr Tolerance kReduction{1e-4, 1e-4};
// Exact: integer-valued results (labels, 0/1 flags, zeros).
constexpr Tolerance kExact{0.0, 0.0};

const std::vector<Device> kDevices = {Device::Cpu, Device::Cuda};

struct Shape {
    int rows;
    int cols;
};
// Odd sizes: single elements, sizes that are no multiple of a warp or a vector width, MNIST's 784
// and a 1000.
// {3, 700001}: 2.1 M elements, past one pass of the GPU's grid-stride loops and column tiles.
const std::vector<Shape> kShapes = {{1, 1}, {7, 33}, {33, 784}, {1000, 7}, {1, 1000}, {3, 700001}};

ref::Act to_ref(Activation a) {
    switch (a) {
        case Activation::None: return ref::Act::None;
        case Activation::Relu: return ref::Act::Relu;
        case Activation::Sigmoid: return ref::Act::Sigmoid;
        case Activation::Tanh: return ref::Act::Tanh;
    }
    return ref::Act::None;
}

void PrintTo(const Shape& s, std::ostream* os) { *os << "(" << s.rows << ", " << s.cols << ")"; }

std::string shape_name(Shape s) { return std::to_string(s.rows) + "x" + std::to_string(s.cols); }

// Fixture base: the first tuple element is the device; CUDA cases skip when no GPU is usable.
template <class Param>
class OnDevice : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(device()); }
    Device device() const { return std::get<0>(this->GetParam()); }
};

using DeviceParam = std::tuple<Device>;
using ShapeParam = std::tuple<Device, Shape>;

std::string device_param_name(const ::testing::TestParamInfo<DeviceParam>& info) {
    return cumnist_test::device_label(std::get<0>(info.param));
}
std::string shape_param_name(const ::testing::TestParamInfo<ShapeParam>& info) {
    return cumnist_test::device_label(std::get<0>(info.param)) + "_" + shape_name(std::get<1>(info.param));
}

#define CUMNIST_DEVICE_SUITE(Suite) \
    INSTANTIATE_TEST_SUITE_P(Ops, Suite, ::testing::Combine(::testing::ValuesIn(kDevices)), device_param_name)
#define CUMNIST_SHAPE_SUITE(Suite, shapes) \
    INSTANTIATE_TEST_SUITE_P(              \
        Ops, Suite, ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(shapes)), shape_param_name)

std::vector<uint8_t> expected_keep(const Dropout& d, uint64_t step, std::size_t n) {
    std::vector<uint8_t> keep(n);
    const uint32_t threshold = cumnist::dropout_keep_threshold(d.rate);
    for (std::size_t i = 0; i < n; ++i) keep[i] = cumnist::dropout_keep(d.seed, d.stream, step, i, threshold) ? 1 : 0;
    return keep;
}

// ================================================================================================
// gemm
// ================================================================================================

struct GemmShape {
    int m, n, k;
};
void PrintTo(const GemmShape& s, std::ostream* os) { *os << "m " << s.m << ", n " << s.n << ", k " << s.k; }
using GemmParam = std::tuple<Device, GemmShape, Trans, Trans>;
class Gemm : public OnDevice<GemmParam> {};

TEST_P(Gemm, AllAlphaBetaCasesMatchReference) {
    const auto [dev, s, ta, tb] = GetParam();
    const bool a_t = ta == Trans::Yes, b_t = tb == Trans::Yes;
    // Stored shapes: A (m, k) or (k, m); B (k, n) or (n, k).
    const int ar = a_t ? s.k : s.m, ac = a_t ? s.m : s.k;
    const int br = b_t ? s.n : s.k, bc = b_t ? s.k : s.n;
    const std::size_t mn = static_cast<std::size_t>(s.m) * s.n;
    const std::vector<float> ha = uniform_floats(static_cast<std::size_t>(ar) * ac, -1.0f, 1.0f, 101);
    const std::vector<float> hb = uniform_floats(static_cast<std::size_t>(br) * bc, -1.0f, 1.0f, 102);
    const std::vector<float> hc = uniform_floats(mn, -1.0f, 1.0f, 103);
    const ref::Matrix product =
        ref::matmul(ref::Matrix::from_float(ha, ar, ac), a_t, ref::Matrix::from_float(hb, br, bc), b_t);

    Buffer<float> a = Buffer<float>::from_host(ha, dev);
    Buffer<float> b = Buffer<float>::from_host(hb, dev);
    // Dot products of k terms of size ≤ 1: float accumulation error grows ~√k (DESIGN §4's 1e-4 is
    // for k ≤ 100; scaled by √(k/100) beyond).
    const double scale = std::max(1.0, std::sqrt(s.k / 100.0));
    const Tolerance tol{1e-4 * scale, 1e-4};

    struct Case {
        float alpha, beta;
        bool nan_c;  // C starts as NaN: beta == 0 must overwrite, never read it
    };
    for (const Case c :
         {Case{1.0f, 0.0f, true}, Case{-1.5f, 0.0f, true}, Case{1.0f, 1.0f, false}, Case{0.5f, -0.25f, false}}) {
        SCOPED_TRACE(::testing::Message() << "alpha " << c.alpha << ", beta " << c.beta);
        Buffer<float> cbuf = Buffer<float>::from_host(c.nan_c ? std::vector<float>(mn, kNaN) : hc, dev);
        if (c.alpha == 1.0f && c.beta == 0.0f)
            ops::gemm(cbuf.view(s.m, s.n), a.view(ar, ac), ta, b.view(br, bc), tb);  // the defaults
        else
            ops::gemm(cbuf.view(s.m, s.n), a.view(ar, ac), ta, b.view(br, bc), tb, c.alpha, c.beta);
        std::vector<double> want(mn);
        for (std::size_t i = 0; i < mn; ++i)
            want[i] = c.alpha * product.data[i] + (c.beta == 0.0f ? 0.0 : c.beta * static_cast<double>(hc[i]));
        EXPECT_TRUE(all_close(cbuf.to_host(), want, tol, "C"));
    }
}

// Accumulate twice into the same C with beta = 1 (how gradients of shared weights add up).
TEST_P(Gemm, BetaOneAccumulatesRepeatedly) {
    const auto [dev, s, ta, tb] = GetParam();
    const bool a_t = ta == Trans::Yes, b_t = tb == Trans::Yes;
    const int ar = a_t ? s.k : s.m, ac = a_t ? s.m : s.k;
    const int br = b_t ? s.n : s.k, bc = b_t ? s.k : s.n;
    const std::vector<float> ha = uniform_floats(static_cast<std::size_t>(ar) * ac, -1.0f, 1.0f, 111);
    const std::vector<float> hb = uniform_floats(static_cast<std::size_t>(br) * bc, -1.0f, 1.0f, 112);
    const ref::Matrix product =
        ref::matmul(ref::Matrix::from_float(ha, ar, ac), a_t, ref::Matrix::from_float(hb, br, bc), b_t);
    Buffer<float> a = Buffer<float>::from_host(ha, dev), b = Buffer<float>::from_host(hb, dev);
    Buffer<float> c = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.m) * s.n, 0.5f), dev);
    for (int i = 0; i < 3; ++i) ops::gemm(c.view(s.m, s.n), a.view(ar, ac), ta, b.view(br, bc), tb, 1.0f, 1.0f);
    std::vector<double> want(product.data.size());
    for (std::size_t i = 0; i < want.size(); ++i) want[i] = 0.5 + 3.0 * product.data[i];
    // Three accumulated GEMMs: the reduction tolerance, tripled.
    const double scale = std::max(1.0, std::sqrt(s.k / 100.0));
    EXPECT_TRUE(all_close(c.to_host(), want, Tolerance{3e-4 * scale, 1e-4}, "C"));
}

// {7, 33, 0}: an empty product (C = beta · C; an overwrite with zeros at beta = 0).
const std::vector<GemmShape> kGemmShapes = {{1, 1, 1},    {7, 33, 1},    {33, 7, 784},   {1, 1000, 7},
                                            {1000, 1, 33}, {784, 33, 1000}, {7, 33, 0}};

INSTANTIATE_TEST_SUITE_P(Ops, Gemm,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kGemmShapes),
                                            ::testing::Values(Trans::No, Trans::Yes),
                                            ::testing::Values(Trans::No, Trans::Yes)),
                         [](const ::testing::TestParamInfo<GemmParam>& param_info) {
                             const GemmParam& prm = param_info.param;
                             const GemmShape s = std::get<1>(prm);
                             return cumnist_test::device_label(std::get<0>(prm)) + "_m" + std::to_string(s.m) + "n" +
                                    std::to_string(s.n) + "k" + std::to_string(s.k) + "_" +
                                    (std::get<2>(prm) == Trans::Yes ? "T" : "N") +
                                    (std::get<3>(prm) == Trans::Yes ? "T" : "N");
                         });

// ================================================================================================
// bias_act_dropout_forward / act_dropout_backward
// ================================================================================================

struct DropoutCase {
    const char* name;
    Dropout dropout;
    uint64_t step;
};

std::vector<DropoutCase> dropout_cases() {
    const uint32_t stream = cumnist::kDropoutStreamBase + 1;
    return {
        {"off", Dropout{}, 0},
        {"inference (rate 0.2, training false)", Dropout{0.2f, 77, stream, false}, 3},
        {"rate 0 while training", Dropout{0.0f, 77, stream, true}, 3},
        {"rate 0.2", Dropout{0.2f, 1234567, stream, true}, 12},
        {"rate 0.3, step > 2^32, 64-bit seed", Dropout{0.3f, 0xDEADBEEF00000011ull, stream + 5, true},
         (uint64_t{1} << 32) + 9},
    };
}

class BiasActDropoutForward : public OnDevice<ShapeParam> {};

TEST_P(BiasActDropoutForward, MatchesReference) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    const std::vector<float> z = uniform_floats(size, -3.0f, 3.0f, 201);  // x·wᵀ on entry
    const std::vector<float> bias = uniform_floats(static_cast<std::size_t>(s.cols), -1.0f, 1.0f, 202);
    const ref::Matrix zr = ref::Matrix::from_float(z, s.rows, s.cols);
    Buffer<float> bias_buf = Buffer<float>::from_host(bias, dev);

    for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        const ref::Matrix a_want = ref::bias_act(zr, widen(bias), to_ref(act));
        for (const DropoutCase& dc : dropout_cases()) {
            SCOPED_TRACE(::testing::Message() << "activation " << cumnist::to_string(act) << ", dropout " << dc.name);
            Buffer<float> a = Buffer<float>::from_host(z, dev);
            Buffer<float> h = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
            Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{dc.step}, dev);
            ops::bias_act_dropout_forward(h.view(s.rows, s.cols), a.view(s.rows, s.cols), bias_buf.view(1, s.cols), act,
                                          dc.dropout, step.data());
            // The keep bits come from the shared spec (philox.h), computed here on the host.
            const std::vector<uint8_t> keep =
                dc.dropout.active() ? expected_keep(dc.dropout, dc.step, size) : std::vector<uint8_t>{};
            const ref::Matrix h_want = ref::dropout(a_want, keep, dc.dropout.rate);
            // Element-wise: a + bias, one activation and one scaling in float.
            EXPECT_TRUE(all_close(a.to_host(), a_want.data, kElementwise, "a"));
            EXPECT_TRUE(all_close(h.to_host(), h_want.data, kElementwise, "h"));

            if (!dc.dropout.active()) {
                // Without active dropout h may be the very same view as a.
                Buffer<float> inplace = Buffer<float>::from_host(z, dev);
                ops::bias_act_dropout_forward(inplace.view(s.rows, s.cols), inplace.view(s.rows, s.cols),
                                              bias_buf.view(1, s.cols), act, dc.dropout, step.data());
                EXPECT_TRUE(all_close(inplace.to_host(), a_want.data, kElementwise, "h aliasing a"));
            }
        }
    }
}
CUMNIST_SHAPE_SUITE(BiasActDropoutForward, kShapes);

class ActDropoutBackward : public OnDevice<ShapeParam> {};

TEST_P(ActDropoutBackward, MatchesReference) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    const std::vector<float> dh = uniform_floats(size, -1.0f, 1.0f, 301);
    const std::vector<float> pre = uniform_floats(size, -3.0f, 3.0f, 302);
    Buffer<float> dh_buf = Buffer<float>::from_host(dh, dev);

    for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        // The saved activation output a = act(pre), as the forward pass leaves it (float).
        std::vector<float> a(size);
        for (std::size_t i = 0; i < size; ++i)
            a[i] = static_cast<float>(ref::activate(static_cast<double>(pre[i]), to_ref(act)));
        Buffer<float> a_buf = Buffer<float>::from_host(a, dev);
        const ref::Matrix dhr = ref::Matrix::from_float(dh, s.rows, s.cols);
        const ref::Matrix ar = ref::Matrix::from_float(a, s.rows, s.cols);
        for (const DropoutCase& dc : dropout_cases()) {
            SCOPED_TRACE(::testing::Message() << "activation " << cumnist::to_string(act) << ", dropout " << dc.name);
            Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{dc.step}, dev);
            const std::vector<uint8_t> keep =
                dc.dropout.active() ? expected_keep(dc.dropout, dc.step, size) : std::vector<uint8_t>{};
            const ref::Matrix want = ref::act_dropout_backward(dhr, ar, keep, dc.dropout.rate, to_ref(act));
            // What the op reads (ops.h): for ReLU the forward's output h = keep ? a / (1 − rate) : 0
            // (in float, as the forward computes it), otherwise a.
            std::vector<float> saved = a;
            if (act == Activation::Relu && dc.dropout.active()) {
                const float scale = 1.0f / (1.0f - dc.dropout.rate);
                for (std::size_t i = 0; i < size; ++i) saved[i] = keep[i] ? a[i] * scale : 0.0f;
            }
            Buffer<float> saved_buf = Buffer<float>::from_host(saved, dev);

            Buffer<float> dpre = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
            ops::act_dropout_backward(dpre.view(s.rows, s.cols), dh_buf.view(s.rows, s.cols),
                                      saved_buf.view(s.rows, s.cols), act, dc.dropout, step.data());
            // Element-wise: two or three float products.
            EXPECT_TRUE(all_close(dpre.to_host(), want.data, kElementwise, "dpre"));

            // dpre may be the same view as dh.
            Buffer<float> inplace = Buffer<float>::from_host(dh, dev);
            ops::act_dropout_backward(inplace.view(s.rows, s.cols), inplace.view(s.rows, s.cols),
                                      saved_buf.view(s.rows, s.cols), act, dc.dropout, step.data());
            EXPECT_TRUE(all_close(inplace.to_host(), want.data, kElementwise, "dpre aliasing dh"));
        }
    }
}
CUMNIST_SHAPE_SUITE(ActDropoutBackward, kShapes);

// With db, the op also gives the bias gradient (ops.h): dpre with the very bits of the call
// without db, and db with the very bits bias_grad gives for that dpre, on each device (on the GPU
// that is one kernel, and the same column-sum order as bias_grad's). The wide shape has more
// column tiles than the GPU's grid holds (a second pass of the tile loop).
class ActDropoutBiasBackward : public OnDevice<ShapeParam> {};

TEST_P(ActDropoutBiasBackward, EqualsTheBackwardThenBiasGrad) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    const std::vector<float> dh = uniform_floats(size, -1.0f, 1.0f, 311);
    const std::vector<float> saved = uniform_floats(size, -0.5f, 1.0f, 312);  // negatives: ReLU's gate closed
    Buffer<float> dh_buf = Buffer<float>::from_host(dh, dev), saved_buf = Buffer<float>::from_host(saved, dev);
    const MatrixView<const float> dhv = dh_buf.view(s.rows, s.cols), sv = saved_buf.view(s.rows, s.cols);
    for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        for (const DropoutCase& dc : dropout_cases()) {
            SCOPED_TRACE(::testing::Message() << "activation " << cumnist::to_string(act) << ", dropout " << dc.name);
            Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{dc.step}, dev);
            Buffer<float> dpre(size, dev), db_want(static_cast<std::size_t>(s.cols), dev);
            ops::act_dropout_backward(dpre.view(s.rows, s.cols), dhv, sv, act, dc.dropout, step.data());
            ops::bias_grad(db_want.view(1, s.cols), dpre.view(s.rows, s.cols));

            Buffer<float> fused = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
            Buffer<float> db = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), kNaN), dev);
            ops::act_dropout_backward(fused.view(s.rows, s.cols), dhv, sv, act, dc.dropout, step.data(),
                                      db.view(1, s.cols));
            EXPECT_EQ(fused.to_host(), dpre.to_host()) << "dpre";
            EXPECT_EQ(db.to_host(), db_want.to_host()) << "db";

            // In place (dpre the same view as dh), as a Dense layer calls it.
            Buffer<float> inplace = Buffer<float>::from_host(dh, dev);
            ops::act_dropout_backward(inplace.view(s.rows, s.cols), inplace.view(s.rows, s.cols), sv, act, dc.dropout,
                                      step.data(), db.view(1, s.cols));
            EXPECT_EQ(inplace.to_host(), dpre.to_host()) << "dpre aliasing dh";
            EXPECT_EQ(db.to_host(), db_want.to_host()) << "db (dpre aliasing dh)";
        }
    }
    // An empty batch: the bias gradient is zero.
    Buffer<float> db = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), kNaN), dev);
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev);
    ops::act_dropout_backward(dh_buf.view(0, s.cols), dh_buf.view(0, s.cols), saved_buf.view(0, s.cols),
                              Activation::Relu, Dropout{}, step.data(), db.view(1, s.cols));
    EXPECT_EQ(db.to_host(), std::vector<float>(static_cast<std::size_t>(s.cols), 0.0f));
}
const std::vector<Shape> kBiasBackwardShapes = {{1, 1}, {7, 33}, {33, 784}, {1000, 7}, {9, 140001}};
CUMNIST_SHAPE_SUITE(ActDropoutBiasBackward, kBiasBackwardShapes);

// The backward epilogue that forms dh from the next (output) layer: act_dropout_backward_through
// equals the next layer's dx GEMM followed by act_dropout_backward with db. On the CPU it runs
// those two ops, so bit for bit. On the GPU each element's k-term dot product is its own
// (ascending fused multiply-adds, where cuBLAS sums in an order of its own): two float sums of the
// same k terms differ by at most 2·γ_k·Σ|terms| (γ_k = k·u/(1 − k·u)), which the epilogue scales
// by at most its dropout scale (every act' here is ≤ 1) and db sums over the rows in the same
// order on both sides; the gates and masks do not depend on dh. That bound, per element, is the
// tolerance. k = 1, the default model's 10 and the largest, 32.
class ActDropoutBackwardThrough : public OnDevice<ShapeParam> {};

TEST_P(ActDropoutBackwardThrough, EqualsTheNextLayersDxGemmThenTheBackward) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    const std::vector<float> saved = uniform_floats(size, -0.5f, 1.0f, 331);  // negatives: ReLU's gate closed
    Buffer<float> saved_buf = Buffer<float>::from_host(saved, dev);
    const MatrixView<const float> sv = saved_buf.view(s.rows, s.cols);
    for (int k : {1, 10, 32}) {
        Buffer<float> dy_next =
            Buffer<float>::from_host(uniform_floats(static_cast<std::size_t>(s.rows) * k, -1.0f, 1.0f, 332), dev);
        Buffer<float> w_next =
            Buffer<float>::from_host(uniform_floats(static_cast<std::size_t>(k) * s.cols, -0.3f, 0.3f, 333), dev);
        const MatrixView<const float> dyv = dy_next.view(s.rows, k), wv = w_next.view(k, s.cols);
        for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
            for (const DropoutCase& dc : dropout_cases()) {
                SCOPED_TRACE(::testing::Message() << "k " << k << ", activation " << cumnist::to_string(act)
                                                  << ", dropout " << dc.name);
                Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{dc.step}, dev);
                Buffer<float> want(size, dev), db_want(static_cast<std::size_t>(s.cols), dev);
                ops::gemm(want.view(s.rows, s.cols), dyv, Trans::No, wv, Trans::No);
                ops::act_dropout_backward(want.view(s.rows, s.cols), want.view(s.rows, s.cols), sv, act, dc.dropout,
                                          step.data(), db_want.view(1, s.cols));
                Buffer<float> got = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
                Buffer<float> db =
                    Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), kNaN), dev);
                ops::act_dropout_backward_through(got.view(s.rows, s.cols), dyv, wv, sv, act, dc.dropout, step.data(),
                                                  db.view(1, s.cols));
                if (dev == Device::Cpu) {
                    EXPECT_EQ(got.to_host(), want.to_host()) << "dpre";
                    EXPECT_EQ(db.to_host(), db_want.to_host()) << "db";
                } else {
                    const double u = std::ldexp(1.0, -24), gamma = k * u / (1 - k * u);
                    const double scale = dc.dropout.active() ? 1.0 / (1.0 - dc.dropout.rate) : 1.0;
                    const std::vector<float> dyh = dy_next.to_host(), wh = w_next.to_host(), g = got.to_host(),
                                             e = want.to_host(), gb = db.to_host(), eb = db_want.to_host();
                    std::vector<double> column_bound(static_cast<std::size_t>(s.cols), 0.0);
                    int bad = 0;
                    for (int r = 0; r < s.rows; ++r)
                        for (int c = 0; c < s.cols; ++c) {
                            double terms = 0;
                            for (int q = 0; q < k; ++q)
                                terms += std::fabs(static_cast<double>(dyh[static_cast<std::size_t>(r) * k + q]) *
                                                   wh[static_cast<std::size_t>(q) * s.cols + c]);
                            const std::size_t i = static_cast<std::size_t>(r) * s.cols + c;
                            // The bound, and one rounding of the scaled result on each side.
                            const double bound = 2 * gamma * terms * scale * (1 + 4 * u) + 2 * u * std::fabs(e[i]);
                            column_bound[c] += bound + 2 * u * std::fabs(e[i]) * s.rows;
                            if (!(std::fabs(static_cast<double>(g[i]) - e[i]) <= bound) && bad++ < 3)
                                ADD_FAILURE() << "dpre[" << r << ", " << c << "] = " << g[i] << ", expected " << e[i]
                                              << " within " << bound;
                        }
                    for (int c = 0; c < s.cols; ++c)
                        if (!(std::fabs(static_cast<double>(gb[c]) - eb[c]) <= column_bound[c]) && bad++ < 6)
                            ADD_FAILURE() << "db[" << c << "] = " << gb[c] << ", expected " << eb[c] << " within "
                                          << column_bound[c];
                    EXPECT_EQ(bad, 0);
                }
            }
        }
    }
}

// An empty batch: the bias gradient is zero, as bias_grad gives.
TEST_P(ActDropoutBackwardThrough, AnEmptyBatchGivesAZeroBiasGradient) {
    const auto [dev, s] = GetParam();
    Buffer<float> any(static_cast<std::size_t>(s.cols) * 10, dev);
    Buffer<float> db = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), kNaN), dev);
    ops::act_dropout_backward_through(any.view(0, s.cols), any.view(0, 10), any.view(10, s.cols), any.view(0, s.cols),
                                      Activation::Relu, {}, nullptr, db.view(1, s.cols));
    EXPECT_EQ(db.to_host(), std::vector<float>(static_cast<std::size_t>(s.cols), 0.0f));
}

TEST_P(ActDropoutBackwardThrough, RefusesWhatItCannotFold) {
    const auto [dev, s] = GetParam();
    if (s.rows != 7) GTEST_SKIP() << "one shape is enough";
    const int n = s.rows, cols = s.cols;
    Buffer<float> dpre(static_cast<std::size_t>(n) * cols, dev), saved(static_cast<std::size_t>(n) * cols, dev),
        db(static_cast<std::size_t>(cols), dev), dy(static_cast<std::size_t>(n) * 33, dev),
        w(static_cast<std::size_t>(33) * cols, dev);
    const char* op = "act_dropout_backward_through";
    const MatrixView<const float> sv = saved.view(n, cols);
    const auto call = [=](MatrixView<const float> dyv, MatrixView<const float> wv, MatrixView<float> d,
                          MatrixView<float> g) {
        return [=] { ops::act_dropout_backward_through(d, dyv, wv, sv, Activation::Relu, {}, nullptr, g); };
    };
    EXPECT_NO_THROW(call(dy.view(n, 10), w.view(10, cols), dpre.view(n, cols), db.view(1, cols))());
    expect_rejected(call(dy.view(n, 33), w.view(33, cols), dpre.view(n, cols), db.view(1, cols)), op, "33 outputs");
    expect_rejected(call(dy.view(n, 10), w.view(9, cols), dpre.view(n, cols), db.view(1, cols)), op, "w_next");
    expect_rejected(call(dy.view(n, 10), w.view(10, cols), dpre.view(n, cols), {}), op, "db");
    expect_rejected(call(dpre.view(n, 10), w.view(10, cols), dpre.view(n, cols), db.view(1, cols)), op, "overlaps");
}
const std::vector<Shape> kThroughShapes = {{1, 1}, {7, 33}, {33, 256}, {1000, 7}, {3, 140001}};
CUMNIST_SHAPE_SUITE(ActDropoutBackwardThrough, kThroughShapes);

// The dropout mask over a large tensor: exactly the shared spec's bits, the right kept fraction,
// a fresh mask for every step, stream and seed, the same mask forward and backward, and the same
// mask when repeated.
class DropoutMask : public OnDevice<DeviceParam> {
protected:
    static constexpr int kRows = 1000, kCols = 784;

    // Runs the forward epilogue with no activation on values in [0.5, 1.5) (never zero), so the
    // kept elements are exactly the non-zero outputs.
    std::vector<uint8_t> observed_mask(const Dropout& d, uint64_t step_value) {
        const std::size_t size = static_cast<std::size_t>(kRows) * kCols;
        static const std::vector<float> values = uniform_floats(size, 0.5f, 1.5f, 401);
        Buffer<float> a = Buffer<float>::from_host(values, device());
        Buffer<float> h(size, device());
        Buffer<float> bias = Buffer<float>::from_host(std::vector<float>(kCols, 0.0f), device());
        Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{step_value}, device());
        ops::bias_act_dropout_forward(h.view(kRows, kCols), a.view(kRows, kCols), bias.view(1, kCols), Activation::None,
                                      d, step.data());
        const std::vector<float> out = h.to_host();
        std::vector<uint8_t> mask(size);
        for (std::size_t i = 0; i < size; ++i) mask[i] = out[i] != 0.0f;
        return mask;
    }
};

double differing_fraction(const std::vector<uint8_t>& x, const std::vector<uint8_t>& y) {
    std::size_t diff = 0;
    for (std::size_t i = 0; i < x.size(); ++i) diff += x[i] != y[i];
    return static_cast<double>(diff) / static_cast<double>(x.size());
}

TEST_P(DropoutMask, MatchesSpecFractionAndVaries) {
    for (float rate : {0.2f, 0.5f}) {
        SCOPED_TRACE(::testing::Message() << "rate " << rate);
        const Dropout d{rate, 20240601, cumnist::kDropoutStreamBase, true};
        const uint64_t step = 41;
        const std::vector<uint8_t> mask = observed_mask(d, step);
        const std::size_t size = mask.size();

        // 1. Exactly the bits of the shared spec.
        EXPECT_EQ(mask, expected_keep(d, step, size));
        // 2. Kept fraction: Binomial(784000, 1 − rate) has standard deviation ≤ 5.7e-4; 0.005 is > 8σ.
        const double kept =
            static_cast<double>(std::accumulate(mask.begin(), mask.end(), std::size_t{0})) / static_cast<double>(size);
        EXPECT_NEAR(kept, 1.0 - rate, 0.005);
        // 3. Deterministic: the same inputs give the same mask.
        EXPECT_EQ(observed_mask(d, step), mask);
        // 4. Every input gives a fresh mask: independent masks differ in 2·rate·(1 − rate) of the
        //    elements (0.32 or 0.5); require more than 0.25 (an unused input would give 0).
        Dropout other = d;
        other.seed = d.seed + 1;
        EXPECT_GT(differing_fraction(observed_mask(other, step), mask), 0.25) << "seed + 1";
        other.seed = d.seed + (uint64_t{1} << 32);
        EXPECT_GT(differing_fraction(observed_mask(other, step), mask), 0.25) << "seed + 2^32";
        other = d;
        other.stream = d.stream + 1;
        EXPECT_GT(differing_fraction(observed_mask(other, step), mask), 0.25) << "stream + 1";
        EXPECT_GT(differing_fraction(observed_mask(d, step + 1), mask), 0.25) << "step + 1";
        EXPECT_GT(differing_fraction(observed_mask(d, step + (uint64_t{1} << 32)), mask), 0.25) << "step + 2^32";

        // 5. The backward pass drops the same elements: with dh = 1 and no activation,
        //    dpre = keep / (1 − rate).
        Buffer<float> dh = Buffer<float>::from_host(std::vector<float>(size, 1.0f), device());
        Buffer<float> a = Buffer<float>::from_host(std::vector<float>(size, 0.25f), device());
        Buffer<float> dpre(size, device());
        Buffer<uint64_t> step_buf = Buffer<uint64_t>::from_host(std::vector<uint64_t>{step}, device());
        ops::act_dropout_backward(dpre.view(kRows, kCols), dh.view(kRows, kCols), a.view(kRows, kCols),
                                  Activation::None, d, step_buf.data());
        const std::vector<float> g = dpre.to_host();
        std::size_t mismatches = 0;
        for (std::size_t i = 0; i < size; ++i) mismatches += (g[i] != 0.0f) != (mask[i] != 0);
        EXPECT_EQ(mismatches, 0u);
        EXPECT_NEAR(*std::max_element(g.begin(), g.end()), 1.0 / (1.0 - rate), 1e-6);
    }
}
CUMNIST_DEVICE_SUITE(DropoutMask);

// ================================================================================================
// bias_grad
// ================================================================================================

class BiasGrad : public OnDevice<ShapeParam> {};

TEST_P(BiasGrad, MatchesReference) {
    const auto [dev, s] = GetParam();
    const std::vector<float> dy = uniform_floats(static_cast<std::size_t>(s.rows) * s.cols, -1.0f, 1.0f, 501);
    Buffer<float> dy_buf = Buffer<float>::from_host(dy, dev);
    Buffer<float> db = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), kNaN), dev);
    ops::bias_grad(db.view(1, s.cols), dy_buf.view(s.rows, s.cols));
    // A sum of up to 1000 float terms: the reduction tolerance. Overwrites (the NaN is gone).
    EXPECT_TRUE(
        all_close(db.to_host(), ref::column_sums(ref::Matrix::from_float(dy, s.rows, s.cols)), kReduction, "db"));
    // Deterministic: a second call gives bit-identical sums.
    const std::vector<float> first = db.to_host();
    ops::bias_grad(db.view(1, s.cols), dy_buf.view(s.rows, s.cols));
    EXPECT_EQ(db.to_host(), first);
    // No rows: the empty sum, zeros over what was there.
    ops::bias_grad(db.view(1, s.cols), dy_buf.view(0, s.cols));
    EXPECT_EQ(db.to_host(), std::vector<float>(static_cast<std::size_t>(s.cols), 0.0f));
}
CUMNIST_SHAPE_SUITE(BiasGrad, kShapes);

// ================================================================================================
// softmax_xent / softmax
// ================================================================================================

// Classes ≤ 256: labels are uint8.
// {40001, 10}: more rows than one pass of the GPU's warp-per-row grid.
const std::vector<Shape> kXentShapes = {{1, 1}, {7, 10}, {33, 7}, {1000, 10}, {7, 256}, {40001, 10}};

class SoftmaxXent : public OnDevice<ShapeParam> {};

TEST_P(SoftmaxXent, MatchesReference) {
    const auto [dev, s] = GetParam();
    const int n = s.rows, classes = s.cols;
    const std::size_t size = static_cast<std::size_t>(n) * classes;
    const std::vector<uint8_t> labels = uniform_bytes(static_cast<std::size_t>(n), 0, classes - 1, 601);
    const std::vector<int> labels_int(labels.begin(), labels.end());
    Buffer<uint8_t> labels_buf = Buffer<uint8_t>::from_host(labels, dev);
    const float grad_scale = 1.0f / static_cast<float>(n);

    // Ordinary logits and logits of magnitude up to 100 (exp would overflow without the max shift).
    for (float magnitude : {3.0f, 100.0f}) {
        SCOPED_TRACE(::testing::Message() << "logits in ±" << magnitude);
        const std::vector<float> z = uniform_floats(size, -magnitude, magnitude, 602);
        const ref::XentResult want = ref::softmax_xent(ref::Matrix::from_float(z, n, classes), labels_int, grad_scale);
        Buffer<float> logits = Buffer<float>::from_host(z, dev);
        Buffer<float> dlogits = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
        Buffer<float> row_loss = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(n), kNaN), dev);
        Buffer<float> row_correct =
            Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(n), kNaN), dev);
        ops::softmax_xent(dlogits.view(n, classes), row_loss.view(1, n), row_correct.view(1, n),
                          logits.view(n, classes), labels_buf.view(1, n), grad_scale);
        // Loss: a log of a sum of ≤ 256 float exps plus a difference of logits up to 200 in
        // magnitude: 1e-5 absolute + 1e-5 relative.
        EXPECT_TRUE(all_close(row_loss.to_host(), want.row_loss, Tolerance{1e-5, 1e-5}, "row_loss"));
        EXPECT_TRUE(all_close(row_correct.to_host(), want.row_correct, kExact, "row_correct"));
        // Gradient: (p − onehot) · scale, p ≤ 1 from one exp and one division: element-wise.
        EXPECT_TRUE(all_close(dlogits.to_host(), want.dlogits.data, kElementwise, "dlogits"));

        // dlogits aliasing logits, with another grad_scale.
        const ref::XentResult want2 = ref::softmax_xent(ref::Matrix::from_float(z, n, classes), labels_int, 0.37);
        Buffer<float> inplace = Buffer<float>::from_host(z, dev);
        ops::softmax_xent(inplace.view(n, classes), row_loss.view(1, n), row_correct.view(1, n),
                          inplace.view(n, classes), labels_buf.view(1, n), 0.37f);
        EXPECT_TRUE(all_close(inplace.to_host(), want2.dlogits.data, kElementwise, "dlogits aliasing logits"));
        EXPECT_TRUE(all_close(row_loss.to_host(), want.row_loss, Tolerance{1e-5, 1e-5}, "row_loss (aliased call)"));
        EXPECT_TRUE(all_close(row_correct.to_host(), want.row_correct, kExact, "row_correct (aliased call)"));

        // dlogits.data null: no gradient, the same loss and correctness.
        Buffer<float> loss2 = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(n), kNaN), dev);
        Buffer<float> correct2 = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(n), kNaN), dev);
        ops::softmax_xent(MatrixView<float>{nullptr, n, classes, dev}, loss2.view(1, n), correct2.view(1, n),
                          logits.view(n, classes), labels_buf.view(1, n), grad_scale);
        EXPECT_TRUE(all_close(loss2.to_host(), want.row_loss, Tolerance{1e-5, 1e-5}, "row_loss (no dlogits)"));
        EXPECT_TRUE(all_close(correct2.to_host(), want.row_correct, kExact, "row_correct (no dlogits)"));
        EXPECT_EQ(logits.to_host(), z) << "logits must not be written";
    }
}
CUMNIST_SHAPE_SUITE(SoftmaxXent, kXentShapes);

// With totals, softmax_xent also accumulates the batch's metrics (ops.h): the rows' results are
// those of the call without totals, bit for bit, and the totals are accumulate_metrics's over
// them: its very bits on the CPU; on the GPU, where batches of up to 2,048 rows sum in the
// softmax kernel in an order of their own, equal within double rounding (n · 2⁻⁵³ ≪ 1e-12
// relative; correctness counts are integers, exact). 2,048 and 2,049 rows are the two sides of
// the GPU's one-kernel limit; 5,000 rows take several blocks.
class SoftmaxXentTotals : public OnDevice<DeviceParam> {};

TEST_P(SoftmaxXentTotals, AccumulateTheRowsMetrics) {
    const Device dev = device();
    for (int n : {1, 33, 2048, 2049, 5000}) {
        SCOPED_TRACE(::testing::Message() << "n = " << n);
        constexpr int classes = 10;
        const std::size_t size = static_cast<std::size_t>(n) * classes;
        const std::vector<float> z = uniform_floats(size, -4.0f, 4.0f, 611);
        Buffer<float> logits = Buffer<float>::from_host(z, dev);
        Buffer<uint8_t> labels =
            Buffer<uint8_t>::from_host(uniform_bytes(static_cast<std::size_t>(n), 0, classes - 1, 612), dev);
        const auto run = [&](double* totals, Buffer<float>& dz, Buffer<float>& loss, Buffer<float>& correct) {
            ops::softmax_xent(dz.view(n, classes), loss.view(1, n), correct.view(1, n), logits.view(n, classes),
                              labels.view(1, n), 0.5f, totals);
        };
        Buffer<float> dz(size, dev), loss(static_cast<std::size_t>(n), dev), correct(static_cast<std::size_t>(n), dev);
        run(nullptr, dz, loss, correct);
        Buffer<double> want = Buffer<double>::from_host(std::vector<double>{1.25, 3.0}, dev);
        ops::accumulate_metrics(want.data(), loss.view(1, n), correct.view(1, n));
        ops::accumulate_metrics(want.data(), loss.view(1, n), correct.view(1, n));

        Buffer<float> dz2(size, dev), loss2(static_cast<std::size_t>(n), dev), correct2(static_cast<std::size_t>(n), dev);
        Buffer<double> totals = Buffer<double>::from_host(std::vector<double>{1.25, 3.0}, dev);
        run(totals.data(), dz2, loss2, correct2);
        run(totals.data(), dz2, loss2, correct2);  // accumulates onto what is there
        EXPECT_EQ(dz2.to_host(), dz.to_host()) << "dlogits";
        EXPECT_EQ(loss2.to_host(), loss.to_host()) << "row_loss";
        EXPECT_EQ(correct2.to_host(), correct.to_host()) << "row_correct";
        const std::vector<double> got = totals.to_host(), expect = want.to_host();
        if (dev == Device::Cpu) {
            EXPECT_EQ(got, expect);
        }
        EXPECT_NEAR(got[0], expect[0], 1e-12 * expect[0]);
        EXPECT_EQ(got[1], expect[1]);
        // Deterministic: the same again gives the same bits.
        Buffer<double> again = Buffer<double>::from_host(std::vector<double>{1.25, 3.0}, dev);
        run(again.data(), dz2, loss2, correct2);
        run(again.data(), dz2, loss2, correct2);
        EXPECT_EQ(again.to_host(), got);
    }
}
CUMNIST_DEVICE_SUITE(SoftmaxXentTotals);

// The output layer's bias folded into the loss: bias_softmax_xent gives, bit for bit, what the
// three ops it replaces give in a training step (the bias add of the epilogue with no activation
// and no dropout, softmax_xent with totals, bias_grad): the biased logits, dlogits, the rows'
// loss and correctness, the totals and db. On the GPU, up to 2,048 rows run the one fused kernel
// (the case this test is for) and 2,049 rows and more the three kernels it replaces, as does the
// CPU always (there the test checks the op's plumbing); 37 classes take two column tiles, 256
// eight, 1 class a part of one. Outputs start from sentinels, so an element left unwritten shows.
class BiasSoftmaxXent : public OnDevice<DeviceParam> {};

TEST_P(BiasSoftmaxXent, EqualsTheBiasAddTheLossAndTheBiasGradient) {
    const Device dev = device();
    struct Case {
        int classes;
        std::vector<int> rows;
    };
    for (const Case& k : {Case{10, {0, 1, 33, 2048, 2049, 5000}}, Case{37, {1, 33, 2048, 2049}}, Case{1, {1, 33, 2048}},
                          Case{256, {7, 2048}}}) {
        const int classes = k.classes;
        for (int n : k.rows) {
            SCOPED_TRACE(::testing::Message() << "n = " << n << ", classes = " << classes);
            const std::size_t size = static_cast<std::size_t>(n) * classes;
            const std::vector<float> z = uniform_floats(size, -4.0f, 4.0f, 621);
            Buffer<float> bias = Buffer<float>::from_host(uniform_floats(classes, -2.0f, 2.0f, 622), dev);
            Buffer<uint8_t> labels =
                Buffer<uint8_t>::from_host(uniform_bytes(static_cast<std::size_t>(n), 0, classes - 1, 623), dev);
            struct Out {
                Buffer<float> logits, dz, loss, correct, db;
                Buffer<double> totals;
            };
            const auto make = [&] {
                const std::vector<float> rows(static_cast<std::size_t>(n), 9.0f);
                return Out{Buffer<float>::from_host(z, dev), Buffer<float>::from_host(std::vector<float>(size, 9.0f), dev),
                           Buffer<float>::from_host(rows, dev), Buffer<float>::from_host(rows, dev),
                           Buffer<float>::from_host(std::vector<float>(classes, 9.0f), dev),
                           Buffer<double>::from_host(std::vector<double>{1.25, 3.0}, dev)};
            };
            Out want = make(), got = make();
            ops::bias_act_dropout_forward(want.logits.view(n, classes), want.logits.view(n, classes), bias.view(1, classes),
                                          Activation::None, Dropout{}, nullptr);
            ops::softmax_xent(want.dz.view(n, classes), want.loss.view(1, n), want.correct.view(1, n),
                              want.logits.view(n, classes), labels.view(1, n), 0.25f, want.totals.data());
            ops::bias_grad(want.db.view(1, classes), want.dz.view(n, classes));
            ops::bias_softmax_xent(got.dz.view(n, classes), got.db.view(1, classes), got.loss.view(1, n),
                                   got.correct.view(1, n), got.logits.view(n, classes), bias.view(1, classes),
                                   labels.view(1, n), 0.25f, got.totals.data());
            EXPECT_EQ(got.logits.to_host(), want.logits.to_host()) << "biased logits";
            EXPECT_EQ(got.dz.to_host(), want.dz.to_host()) << "dlogits";
            EXPECT_EQ(got.loss.to_host(), want.loss.to_host()) << "row_loss";
            EXPECT_EQ(got.correct.to_host(), want.correct.to_host()) << "row_correct";
            EXPECT_EQ(got.totals.to_host(), want.totals.to_host()) << "totals";
            EXPECT_EQ(got.db.to_host(), want.db.to_host()) << "db";
            if (n == 0) {
                EXPECT_EQ(got.db.to_host(), std::vector<float>(classes, 0.0f)) << "the empty sum";
            }
        }
    }
}

TEST_P(BiasSoftmaxXent, RefusesOverlapsAndWrongShapes) {
    const Device dev = device();
    const int n = 4, classes = 3;
    Buffer<float> logits(n * classes, dev), dz(n * classes, dev), loss(n, dev), correct(n, dev), bias(classes, dev),
        db(classes, dev);
    Buffer<uint8_t> labels(n, dev);
    labels.zero();
    const MatrixView<float> C = correct.view(1, n), Z = logits.view(n, classes);
    const MatrixView<const uint8_t> Y = labels.view(1, n);
    const auto call = [=](MatrixView<float> d, MatrixView<float> g, MatrixView<const float> b, MatrixView<float> l) {
        return [=] { ops::bias_softmax_xent(d, g, l, C, Z, b, Y, 1.0f); };
    };
    const auto D = dz.view(n, classes), G = db.view(1, classes), L = loss.view(1, n);
    const MatrixView<const float> B = bias.view(1, classes);
    const char* op = "bias_softmax_xent";
    EXPECT_NO_THROW(call(D, G, B, L)());
    expect_rejected(call(logits.view(n, classes), G, B, L), op, "dlogits overlaps logits");
    expect_rejected(call(D, dz.view(1, classes), B, L), op, "db overlaps");
    expect_rejected(call(D, bias.view(1, classes), B, L), op, "db overlaps");
    expect_rejected(call(D, G, logits.view(1, classes), L), op, "bias overlaps");
    expect_rejected(call(D, G, B, logits.view(1, n)), op, "row_loss or row_correct overlaps");
    expect_rejected(call(D, db.view(1, 2), B, L), op, "db");
    expect_rejected(call(D, G, bias.view(1, 2), L), op, "bias");
    expect_rejected(call({}, G, B, L), op, "dlogits");
}
CUMNIST_DEVICE_SUITE(BiasSoftmaxXent);

// Hand-made rows: ties (the first maximum decides correctness), extreme logits (±100), one class.
class SoftmaxXentEdges : public OnDevice<DeviceParam> {};

TEST_P(SoftmaxXentEdges, TiesAndExtremeLogits) {
    const Device dev = device();
    const int n = 6, classes = 4;
    const std::vector<float> z = {
        1.0f,    3.0f,    3.0f,    0.0f,     // tie at 1 and 2, label 1: correct
        1.0f,    3.0f,    3.0f,    0.0f,     // same row, label 2: not correct (first maximum is 1)
        5.0f,    5.0f,    5.0f,    5.0f,     // all equal, label 0: correct, loss log 4
        5.0f,    5.0f,    5.0f,    5.0f,     // all equal, label 3: not correct
        100.0f,  -100.0f, 100.0f,  -100.0f,  // label 1: loss ≈ 200 + log 2
        -100.0f, -100.0f, -100.0f, 100.0f,   // label 3: loss ≈ 0, p of the others underflows
    };
    const std::vector<uint8_t> labels = {1, 2, 0, 3, 1, 3};
    const ref::XentResult want = ref::softmax_xent(ref::Matrix::from_float(z, n, classes),
                                                   std::vector<int>(labels.begin(), labels.end()), 1.0 / n);
    EXPECT_EQ(want.row_correct, (std::vector<double>{1, 0, 1, 0, 0, 1}));  // the oracle's own reading

    Buffer<float> logits = Buffer<float>::from_host(z, dev);
    Buffer<uint8_t> lab = Buffer<uint8_t>::from_host(labels, dev);
    Buffer<float> d(static_cast<std::size_t>(n) * classes, dev), loss(n, dev), correct(n, dev);
    ops::softmax_xent(d.view(n, classes), loss.view(1, n), correct.view(1, n), logits.view(n, classes), lab.view(1, n),
                      1.0f / static_cast<float>(n));
    EXPECT_TRUE(all_close(correct.to_host(), want.row_correct, kExact, "row_correct"));
    // Loss up to ~200: 1e-5 absolute + 1e-5 relative.
    EXPECT_TRUE(all_close(loss.to_host(), want.row_loss, Tolerance{1e-5, 1e-5}, "row_loss"));
    EXPECT_TRUE(all_close(d.to_host(), want.dlogits.data, kElementwise, "dlogits"));
    EXPECT_NEAR(loss.to_host()[2], std::log(4.0), 1e-6);

    // One class: p = 1, loss 0, always correct, zero gradient.
    Buffer<float> one = Buffer<float>::from_host(std::vector<float>{-7.0f, 0.0f, 42.0f}, dev);
    Buffer<uint8_t> zeros = Buffer<uint8_t>::from_host(std::vector<uint8_t>{0, 0, 0}, dev);
    Buffer<float> d1(3, dev), l1(3, dev), c1(3, dev);
    ops::softmax_xent(d1.view(3, 1), l1.view(1, 3), c1.view(1, 3), one.view(3, 1), zeros.view(1, 3), 1.0f / 3);
    EXPECT_TRUE(all_close(l1.to_host(), std::vector<double>(3, 0.0), kElementwise, "one-class loss"));
    EXPECT_TRUE(all_close(c1.to_host(), std::vector<double>(3, 1.0), kExact, "one-class correct"));
    EXPECT_TRUE(all_close(d1.to_host(), std::vector<double>(3, 0.0), kElementwise, "one-class dlogits"));
}
CUMNIST_DEVICE_SUITE(SoftmaxXentEdges);

const std::vector<Shape> kSoftmaxShapes = {{1, 1}, {7, 10}, {33, 784}, {1000, 10}, {1, 1000}, {40001, 10}};

class Softmax : public OnDevice<ShapeParam> {};

TEST_P(Softmax, MatchesReference) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    for (float magnitude : {3.0f, 100.0f}) {
        SCOPED_TRACE(::testing::Message() << "logits in ±" << magnitude);
        const std::vector<float> z = uniform_floats(size, -magnitude, magnitude, 701);
        const ref::Matrix want = ref::softmax(ref::Matrix::from_float(z, s.rows, s.cols));
        Buffer<float> logits = Buffer<float>::from_host(z, dev);
        Buffer<float> probs = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
        ops::softmax(probs.view(s.rows, s.cols), logits.view(s.rows, s.cols));
        // Probabilities ≤ 1 from one exp and a sum of ≤ 1000 terms: element-wise.
        EXPECT_TRUE(all_close(probs.to_host(), want.data, kElementwise, "probs"));
        // probs aliasing logits.
        ops::softmax(logits.view(s.rows, s.cols), logits.view(s.rows, s.cols));
        EXPECT_TRUE(all_close(logits.to_host(), want.data, kElementwise, "probs aliasing logits"));
    }
}
CUMNIST_SHAPE_SUITE(Softmax, kSoftmaxShapes);

// ================================================================================================
// accumulate_metrics
// ================================================================================================

class AccumulateMetrics : public OnDevice<DeviceParam> {};

TEST_P(AccumulateMetrics, AddsToTotalsInDouble) {
    const Device dev = device();
    for (int n : {1, 33, 1000}) {
        SCOPED_TRACE(::testing::Message() << "n = " << n);
        const std::vector<float> loss = uniform_floats(static_cast<std::size_t>(n), 0.0f, 5.0f, 801);
        std::vector<float> correct(static_cast<std::size_t>(n));
        const std::vector<uint8_t> bits = uniform_bytes(static_cast<std::size_t>(n), 0, 1, 802);
        for (int i = 0; i < n; ++i) correct[i] = bits[i];
        double loss_sum = 0.0, correct_sum = 0.0;
        for (int i = 0; i < n; ++i) loss_sum += loss[i], correct_sum += correct[i];

        Buffer<float> l = Buffer<float>::from_host(loss, dev), c = Buffer<float>::from_host(correct, dev);
        Buffer<double> totals = Buffer<double>::from_host(std::vector<double>{1.25, 3.0}, dev);
        // Called twice: it accumulates onto what is there (1.25, 3) rather than overwriting.
        ops::accumulate_metrics(totals.data(), l.view(1, n), c.view(1, n));
        ops::accumulate_metrics(totals.data(), l.view(1, n), c.view(1, n));
        const std::vector<double> got = totals.to_host();
        // Summed in double (the spec): only the summation order may differ from ours, a relative
        // difference of n · 2⁻⁵³ ≪ 1e-12. A float accumulator would be ~1e-7 off and fail here.
        EXPECT_NEAR(got[0], 1.25 + 2.0 * loss_sum, 1e-12 * (1.25 + 2.0 * loss_sum));
        EXPECT_EQ(got[1], 3.0 + 2.0 * correct_sum);  // integers: exact
    }
}
CUMNIST_DEVICE_SUITE(AccumulateMetrics);

// ================================================================================================
// gather_batch / u8_to_float
// ================================================================================================

// (batch size, cols)
const std::vector<Shape> kGatherShapes = {{1, 1}, {7, 784}, {33, 7}, {32, 784}};

class GatherBatch : public OnDevice<ShapeParam> {};

TEST_P(GatherBatch, RowsFollowOrderAndBatchIndex) {
    const auto [dev, s] = GetParam();
    const int batch = s.rows, cols = s.cols;
    const int n_samples = 3 * batch + batch / 2;  // three full batches and, unless batch is 1, a short one
    const std::vector<uint8_t> images = uniform_bytes(static_cast<std::size_t>(n_samples) * cols, 0, 255, 901);
    const std::vector<uint8_t> labels = uniform_bytes(static_cast<std::size_t>(n_samples), 0, 9, 902);
    std::vector<int32_t> order(static_cast<std::size_t>(n_samples));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(903));

    Buffer<uint8_t> img = Buffer<uint8_t>::from_host(images, dev);
    Buffer<uint8_t> lab = Buffer<uint8_t>::from_host(labels, dev);
    Buffer<int32_t> ord = Buffer<int32_t>::from_host(order, dev);
    Buffer<uint64_t> batch_index = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev);
    const int n_batches = (n_samples + batch - 1) / batch;
    for (int bi = 0; bi < n_batches; ++bi) {
        const int rows = std::min(batch, n_samples - bi * batch);
        SCOPED_TRACE(::testing::Message() << "batch index " << bi << ", rows " << rows);
        Buffer<float> x =
            Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(batch) * cols, kNaN), dev);
        Buffer<uint8_t> lab_out =
            Buffer<uint8_t>::from_host(std::vector<uint8_t>(static_cast<std::size_t>(batch), 0xEE), dev);
        ops::gather_batch(x.view(rows, cols), lab_out.view(1, rows), img.view(n_samples, cols), lab.view(1, n_samples),
                          ord.view(1, n_samples), batch_index.data(), batch);
        std::vector<double> want_x(static_cast<std::size_t>(batch) * cols, std::nan(""));
        std::vector<double> want_labels(static_cast<std::size_t>(batch), 0xEE);
        for (int r = 0; r < rows; ++r) {
            const int sample = order[static_cast<std::size_t>(bi) * batch + r];
            for (int c = 0; c < cols; ++c)
                want_x[static_cast<std::size_t>(r) * cols + c] =
                    images[static_cast<std::size_t>(sample) * cols + c] / 255.0;
            want_labels[r] = labels[sample];
        }
        const std::vector<float> got_x = x.to_host();
        // p / 255 in float: one rounding.
        EXPECT_TRUE(
            all_close(std::vector<float>(got_x.begin(), got_x.begin() + static_cast<std::ptrdiff_t>(rows) * cols),
                      std::vector<double>(want_x.begin(), want_x.begin() + static_cast<std::ptrdiff_t>(rows) * cols),
                      kElementwise, "x"));
        // Rows past a short batch are not touched.
        for (std::size_t i = static_cast<std::size_t>(rows) * cols; i < got_x.size(); ++i)
            ASSERT_TRUE(std::isnan(got_x[i])) << "x[" << i << "] written beyond the batch's rows";
        EXPECT_TRUE(all_close(lab_out.to_host(), want_labels, kExact, "labels"));
        ops::increment(batch_index.data(), dev);  // the step advances its own batch index
    }
    EXPECT_EQ(batch_index.to_host()[0], static_cast<uint64_t>(n_batches));
}
CUMNIST_SHAPE_SUITE(GatherBatch, kGatherShapes);

const std::vector<Shape> kPixelShapes = {{1, 1}, {1, 256}, {33, 784}, {1000, 7}};

class U8ToFloat : public OnDevice<ShapeParam> {};

TEST_P(U8ToFloat, DividesBy255) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    std::vector<uint8_t> pixels = uniform_bytes(size, 0, 255, 1001);
    if (size == 256)
        for (std::size_t i = 0; i < 256; ++i) pixels[i] = static_cast<uint8_t>(i);  // every value once
    if (size == 1) pixels[0] = 255;
    Buffer<uint8_t> p = Buffer<uint8_t>::from_host(pixels, dev);
    Buffer<float> x = Buffer<float>::from_host(std::vector<float>(size, kNaN), dev);
    ops::u8_to_float(x.view(s.rows, s.cols), p.view(s.rows, s.cols));
    std::vector<double> want(size);
    for (std::size_t i = 0; i < size; ++i) want[i] = pixels[i] / 255.0;
    // One float rounding.
    const std::vector<float> got = x.to_host();
    EXPECT_TRUE(all_close(got, want, kElementwise, "x"));
    // The end points are exact.
    for (std::size_t i = 0; i < size; ++i) {
        if (pixels[i] == 0) {
            ASSERT_EQ(got[i], 0.0f);
        }
        if (pixels[i] == 255) {
            ASSERT_EQ(got[i], 1.0f);
        }
    }
}
CUMNIST_SHAPE_SUITE(U8ToFloat, kPixelShapes);

// ================================================================================================
// increment / fill_zero
// ================================================================================================

class Increment : public OnDevice<DeviceParam> {};

TEST_P(Increment, AddsOneAcross32Bits) {
    const Device dev = device();
    Buffer<uint64_t> c = Buffer<uint64_t>::from_host(std::vector<uint64_t>{5, 41, 9}, dev);
    for (int i = 0; i < 3; ++i) ops::increment(c.data() + 1, dev);
    EXPECT_EQ(c.to_host(), (std::vector<uint64_t>{5, 44, 9}));  // neighbours untouched
    // A 64-bit counter: the carry out of the low word must not be lost.
    Buffer<uint64_t> wide = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0xFFFFFFFFull}, dev);
    ops::increment(wide.data(), dev);
    EXPECT_EQ(wide.to_host()[0], 0x100000000ull);
}
CUMNIST_DEVICE_SUITE(Increment);

class FillZero : public OnDevice<ShapeParam> {};

TEST_P(FillZero, ZeroesTheViewOnly) {
    const auto [dev, s] = GetParam();
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    Buffer<float> x = Buffer<float>::from_host(std::vector<float>(size + 3, kNaN), dev);
    ops::fill_zero(x.view(s.rows, s.cols));
    const std::vector<float> got = x.to_host();
    for (std::size_t i = 0; i < size; ++i) ASSERT_EQ(got[i], 0.0f) << "element " << i;
    for (std::size_t i = size; i < size + 3; ++i) ASSERT_TRUE(std::isnan(got[i])) << "written past the view at " << i;
    if (s.rows > 1) {
        // A row range: only those rows.
        Buffer<float> y = Buffer<float>::from_host(std::vector<float>(size, 7.0f), dev);
        ops::fill_zero(y.view(s.rows, s.cols).row_range(1, 1));
        const std::vector<float> gy = y.to_host();
        for (std::size_t i = 0; i < size; ++i) {
            const bool in_row = i >= static_cast<std::size_t>(s.cols) && i < 2 * static_cast<std::size_t>(s.cols);
            ASSERT_EQ(gy[i], in_row ? 0.0f : 7.0f) << "element " << i;
        }
    }
}
CUMNIST_SHAPE_SUITE(FillZero, kShapes);

// ================================================================================================
// Optimizer steps: several steps against the double formulas (tests/reference)
// ================================================================================================
//
// The float state drifts from the double state by a few ulp per step of quantities of size ≤ 1:
// element-wise tolerance, 1e-6 absolute + 1e-5 relative, after every step.

const std::vector<Shape> kParamShapes = {{1, 1}, {1, 7}, {1, 33}, {1, 784}, {1, 1000}};
constexpr int kOptimizerSteps = 5;

class AdamStep : public OnDevice<ShapeParam> {};

TEST_P(AdamStep, MatchesDoubleFormulas) {
    const auto [dev, s] = GetParam();
    const std::size_t n = static_cast<std::size_t>(s.cols);
    const int cols = s.cols;
    struct Case {
        ops::AdamConfig cfg;
        uint64_t first_step;
    };
    // The Keras defaults from step 0, and a non-default configuration resumed at step 1000 (bias
    // correction reads the device counter, not a host argument).
    for (const Case c : {Case{ops::AdamConfig{}, 0}, Case{ops::AdamConfig{0.01f, 0.8f, 0.99f, 1e-6f}, 1000}}) {
        SCOPED_TRACE(::testing::Message()
                     << "lr " << c.cfg.lr << ", beta1 " << c.cfg.beta1 << ", first step " << c.first_step);
        const std::vector<float> w0 = uniform_floats(n, -1.0f, 1.0f, 1101);
        Buffer<float> w = Buffer<float>::from_host(w0, dev);
        Buffer<float> m = Buffer<float>::from_host(std::vector<float>(n, 0.0f), dev);
        Buffer<float> v = Buffer<float>::from_host(std::vector<float>(n, 0.0f), dev);
        Buffer<float> g(n, dev);
        Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{c.first_step}, dev);
        std::vector<double> wd(w0.begin(), w0.end()), md(n, 0.0), vd(n, 0.0);
        for (int k = 0; k < kOptimizerSteps; ++k) {
            const std::vector<float> gh = uniform_floats(n, -1.0f, 1.0f, 1200 + static_cast<uint32_t>(k));
            g.copy_from_host(gh.data(), n);
            ops::adam_step(w.view(1, cols), m.view(1, cols), v.view(1, cols), g.view(1, cols), c.cfg, step.data());
            ops::increment(step.data(), dev);
            const uint64_t t = c.first_step + static_cast<uint64_t>(k) + 1;  // 1-based
            for (std::size_t i = 0; i < n; ++i)
                ref::adam(wd[i], md[i], vd[i], gh[i], c.cfg.lr, c.cfg.beta1, c.cfg.beta2, c.cfg.epsilon, t);
            SCOPED_TRACE(::testing::Message() << "after step " << k);
            EXPECT_TRUE(all_close(w.to_host(), wd, kElementwise, "w"));
            EXPECT_TRUE(all_close(m.to_host(), md, kElementwise, "m"));
            EXPECT_TRUE(all_close(v.to_host(), vd, kElementwise, "v"));
        }
        EXPECT_EQ(step.to_host()[0], c.first_step + kOptimizerSteps);  // adam_step itself does not advance it
    }
}
CUMNIST_SHAPE_SUITE(AdamStep, kParamShapes);

class SgdStep : public OnDevice<ShapeParam> {};

TEST_P(SgdStep, MatchesDoubleFormulas) {
    const auto [dev, s] = GetParam();
    const std::size_t n = static_cast<std::size_t>(s.cols);
    const int cols = s.cols;
    for (const ops::SgdConfig cfg : {ops::SgdConfig{0.05f, 0.0f}, ops::SgdConfig{0.01f, 0.9f}}) {
        SCOPED_TRACE(::testing::Message() << "lr " << cfg.lr << ", momentum " << cfg.momentum);
        const std::vector<float> w0 = uniform_floats(n, -1.0f, 1.0f, 1301);
        Buffer<float> w = Buffer<float>::from_host(w0, dev);
        Buffer<float> vel = Buffer<float>::from_host(std::vector<float>(n, 0.0f), dev);
        Buffer<float> g(n, dev);
        std::vector<double> wd(w0.begin(), w0.end()), vd(n, 0.0);
        for (int k = 0; k < kOptimizerSteps; ++k) {
            const std::vector<float> gh = uniform_floats(n, -1.0f, 1.0f, 1400 + static_cast<uint32_t>(k));
            g.copy_from_host(gh.data(), n);
            ops::sgd_step(w.view(1, cols), vel.view(1, cols), g.view(1, cols), cfg);
            for (std::size_t i = 0; i < n; ++i) ref::sgd(wd[i], vd[i], gh[i], cfg.lr, cfg.momentum);
            SCOPED_TRACE(::testing::Message() << "after step " << k);
            EXPECT_TRUE(all_close(w.to_host(), wd, kElementwise, "w"));
            EXPECT_TRUE(all_close(vel.to_host(), vd, kElementwise, "velocity"));
        }
    }
}
CUMNIST_SHAPE_SUITE(SgdStep, kParamShapes);

class RmspropStep : public OnDevice<ShapeParam> {};

TEST_P(RmspropStep, MatchesDoubleFormulas) {
    const auto [dev, s] = GetParam();
    const std::size_t n = static_cast<std::size_t>(s.cols);
    const int cols = s.cols;
    for (const ops::RmsPropConfig cfg : {ops::RmsPropConfig{}, ops::RmsPropConfig{0.01f, 0.8f, 1e-5f}}) {
        SCOPED_TRACE(::testing::Message() << "lr " << cfg.lr << ", rho " << cfg.rho << ", epsilon " << cfg.epsilon);
        const std::vector<float> w0 = uniform_floats(n, -1.0f, 1.0f, 1501);
        Buffer<float> w = Buffer<float>::from_host(w0, dev);
        Buffer<float> st = Buffer<float>::from_host(std::vector<float>(n, 0.0f), dev);
        Buffer<float> g(n, dev);
        std::vector<double> wd(w0.begin(), w0.end()), sd(n, 0.0);
        for (int k = 0; k < kOptimizerSteps; ++k) {
            const std::vector<float> gh = uniform_floats(n, -1.0f, 1.0f, 1600 + static_cast<uint32_t>(k));
            g.copy_from_host(gh.data(), n);
            ops::rmsprop_step(w.view(1, cols), st.view(1, cols), g.view(1, cols), cfg);
            for (std::size_t i = 0; i < n; ++i) ref::rmsprop(wd[i], sd[i], gh[i], cfg.lr, cfg.rho, cfg.epsilon);
            SCOPED_TRACE(::testing::Message() << "after step " << k);
            EXPECT_TRUE(all_close(w.to_host(), wd, kElementwise, "w"));
            EXPECT_TRUE(all_close(st.to_host(), sd, kElementwise, "s"));
        }
    }
}
CUMNIST_SHAPE_SUITE(RmspropStep, kParamShapes);

// TF32 GEMMs (cuda::MathModeScope(true), what --tf32 selects): 33 × 784 · 784 × 512 against the
// double reference. TF32 keeps 10 of float's 23 mantissa bits, so each product carries up to
// ~2⁻¹⁰ relative error; over 784 terms of uniform [−1, 1) values (|C| ≈ 9) the errors add up
// like a random walk to ~0.01. Tolerance 0.05 + 1e-3·|C|, ~5x that: loose enough for TF32,
// tight enough that a wrong transpose or a dropped term (errors of order 1) fails. (GPUs before
// Ampere have no TF32 and compute in FP32, which passes too.)
TEST(GemmTf32, WithinTf32RoundingOfTheReference) {
    CUMNIST_SKIP_WITHOUT_GPU();
    const int m = 33, k = 784, n = 512;
    const std::vector<float> ha = uniform_floats(static_cast<std::size_t>(m) * k, -1.0f, 1.0f, 1801);
    const std::vector<float> hb = uniform_floats(static_cast<std::size_t>(n) * k, -1.0f, 1.0f, 1802);
    const ref::Matrix want =
        ref::matmul(ref::Matrix::from_float(ha, m, k), false, ref::Matrix::from_float(hb, n, k), true);
    Buffer<float> a = Buffer<float>::from_host(ha, Device::Cuda), b = Buffer<float>::from_host(hb, Device::Cuda);
    Buffer<float> c(static_cast<std::size_t>(m) * n, Device::Cuda);
    {
        cumnist::cuda::MathModeScope tf32(true);
        ops::gemm(c.view(m, n), a.view(m, k), Trans::No, b.view(n, k), Trans::Yes);
    }
    EXPECT_FALSE(cumnist::cuda::tf32_enabled()) << "the scope did not restore FP32";
    EXPECT_TRUE(all_close(c.to_host(), want.data, Tolerance{0.05, 1e-3}, "TF32 C"));
}

// The GPU's optimizer updates equal the CPU's bit for bit: both run philox.h's per-element
// formulas with IEEE square root and division, without FMA contraction (kernels/optim.cu is built
// with -fmad=false, the CPU with -ffp-contract=off) and with denormals flushed on both. Adam's
// bias-correction factor comes from pow() in double on each side; with β1 = 0.5 and β2 = 0.25 its
// powers are exact, so the factor is the same on both and the comparison can demand equality.
// 3,000,001 parameters: more than one pass of every grid-stride loop, and an odd tail.
TEST(OptimizerStepsOnTheGpu, EqualTheCpusBitForBit) {
    CUMNIST_SKIP_WITHOUT_GPU();
    constexpr std::size_t n = 3000001;
    constexpr int cols = static_cast<int>(n);
    const std::vector<float> w0 = uniform_floats(n, -1.0f, 1.0f, 1701), g0 = uniform_floats(n, -0.1f, 0.1f, 1702);
    const std::vector<float> m0 = uniform_floats(n, -0.01f, 0.01f, 1703), v0 = uniform_floats(n, 0.0f, 1e-4f, 1704);
    struct Run {
        std::vector<float> w, a, b;
    };
    const auto run = [&](Device dev, int kind) {
        Buffer<float> w = Buffer<float>::from_host(w0, dev), g = Buffer<float>::from_host(g0, dev);
        Buffer<float> a = Buffer<float>::from_host(m0, dev), b = Buffer<float>::from_host(v0, dev);
        Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{2}, dev);  // t = 3
        for (int k = 0; k < 3; ++k) {
            if (kind == 0)
                ops::adam_step(w.view(1, cols), a.view(1, cols), b.view(1, cols), g.view(1, cols),
                               {1e-3f, 0.5f, 0.25f, 1e-7f}, step.data());
            else if (kind == 1)
                ops::sgd_step(w.view(1, cols), a.view(1, cols), g.view(1, cols), {0.05f, 0.9f});
            else
                ops::rmsprop_step(w.view(1, cols), b.view(1, cols), g.view(1, cols), {1e-3f, 0.9f, 1e-7f});
            ops::increment(step.data(), dev);
        }
        return Run{w.to_host(), a.to_host(), b.to_host()};
    };
    const char* names[] = {"adam", "sgd", "rmsprop"};
    for (int kind = 0; kind < 3; ++kind) {
        SCOPED_TRACE(names[kind]);
        const Run cpu = run(Device::Cpu, kind), gpu = run(Device::Cuda, kind);
        std::size_t differ = 0;
        for (std::size_t i = 0; i < n; ++i)
            differ += (cpu.w[i] != gpu.w[i]) + (cpu.a[i] != gpu.a[i]) + (cpu.b[i] != gpu.b[i]);
        EXPECT_EQ(differ, 0u) << "values that differ between the CPU and the GPU";
    }
}

// An optimizer step given `advance` (ops.h) ends the training step: the parameters and state get
// exactly the bits of the same step without it (so Adam read the step counter before it moved, in
// every block: 3,000,001 parameters are ~12,000 blocks on a GPU, more than run at once), and the
// step counter and batch index are one higher, the zero slot zero again. Three steps in a row
// (the slot is reused), and an empty parameter view (the counters still advance).
class OptimizerAdvance : public OnDevice<DeviceParam> {};

TEST_P(OptimizerAdvance, EndsTheStepWithTheSameUpdate) {
    const Device dev = device();
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{3000001}}) {
        const int cols = static_cast<int>(n);
        const std::vector<float> w0 = uniform_floats(n, -1.0f, 1.0f, 1801), g0 = uniform_floats(n, -0.1f, 0.1f, 1802);
        const std::vector<float> m0 = uniform_floats(n, -0.01f, 0.01f, 1803), v0 = uniform_floats(n, 0.0f, 1e-4f, 1804);
        for (int kind = 0; kind < 3; ++kind) {
            SCOPED_TRACE(::testing::Message() << (kind == 0 ? "adam" : kind == 1 ? "sgd" : "rmsprop") << ", " << n
                                              << " parameters");
            const auto run = [&](bool advance, std::vector<uint64_t>& counters_out) {
                Buffer<float> w = Buffer<float>::from_host(w0, dev), g = Buffer<float>::from_host(g0, dev);
                Buffer<float> a = Buffer<float>::from_host(m0, dev), b = Buffer<float>::from_host(v0, dev);
                // {step, batch index, 0}; steps from 41 so the bias correction differs per step.
                Buffer<uint64_t> counters = Buffer<uint64_t>::from_host(std::vector<uint64_t>{41, 7, 0}, dev);
                uint64_t* adv = advance ? counters.data() : nullptr;
                for (int k = 0; k < 3; ++k) {
                    if (kind == 0)
                        ops::adam_step(w.view(1, cols), a.view(1, cols), b.view(1, cols), g.view(1, cols), {},
                                       counters.data(), adv);
                    else if (kind == 1)
                        ops::sgd_step(w.view(1, cols), a.view(1, cols), g.view(1, cols), {0.05f, 0.9f}, adv);
                    else
                        ops::rmsprop_step(w.view(1, cols), b.view(1, cols), g.view(1, cols), {}, adv);
                    if (!advance) {  // the two increments the advance replaces
                        ops::increment(counters.data(), dev);
                        ops::increment(counters.data() + 1, dev);
                    }
                }
                counters_out = counters.to_host();
                return std::vector<std::vector<float>>{w.to_host(), a.to_host(), b.to_host()};
            };
            std::vector<uint64_t> plain_counters, advanced_counters;
            const auto plain = run(false, plain_counters);
            const auto advanced = run(true, advanced_counters);
            EXPECT_TRUE(plain == advanced) << "the update differs with advance";
            EXPECT_EQ(plain_counters, (std::vector<uint64_t>{44, 10, 0}));
            EXPECT_EQ(advanced_counters, (std::vector<uint64_t>{44, 10, 0}));
        }
    }
}
CUMNIST_DEVICE_SUITE(OptimizerAdvance);

// ================================================================================================
// ops.cpp rejects bad shapes, aliasing and mixed devices with a cumnist::Error naming the op
// ================================================================================================


// All validation happens before any backend runs, so these use host buffers throughout.
class OpsValidation : public ::testing::Test {
protected:
    static constexpr Device kCpu = Device::Cpu;
    Buffer<float> buf(std::size_t n) { return Buffer<float>::from_host(std::vector<float>(n, 0.5f), kCpu); }
    Buffer<uint64_t> step_{Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, kCpu)};
};

TEST_F(OpsValidation, GemmShapes) {
    Buffer<float> a = buf(6), b = buf(12), c = buf(8);
    // (2, 3) · (3, 4) is fine; each mismatch below is not.
    EXPECT_NO_THROW(ops::gemm(c.view(2, 4), a.view(2, 3), Trans::No, b.view(3, 4), Trans::No));
    expect_rejected([&] { ops::gemm(c.view(2, 4), a.view(2, 3), Trans::No, b.view(4, 3), Trans::No); }, "gemm");
    expect_rejected([&] { ops::gemm(c.view(2, 4), a.view(2, 3), Trans::Yes, b.view(3, 4), Trans::No); }, "gemm");
    expect_rejected([&] { ops::gemm(c.view(4, 2), a.view(2, 3), Trans::No, b.view(3, 4), Trans::No); }, "gemm");
    expect_rejected([&] { ops::gemm(c.view(2, 3), a.view(2, 3), Trans::No, b.view(3, 4), Trans::No); }, "gemm");
}

TEST_F(OpsValidation, EpilogueShapesAliasingAndStep) {
    Buffer<float> a = buf(12), h = buf(12), bias = buf(4);
    const Dropout on{0.2f, 1, 2, true};
    expect_rejected(
        [&] {
            ops::bias_act_dropout_forward(h.view(3, 4), a.view(3, 4), bias.view(1, 3), Activation::Relu, {},
                                          step_.data());
        },
        "bias_act_dropout_forward");
    expect_rejected(
        [&] {
            ops::bias_act_dropout_forward(h.view(4, 3), a.view(3, 4), bias.view(1, 4), Activation::Relu, {},
                                          step_.data());
        },
        "bias_act_dropout_forward");
    // h may be the same view as a only without active dropout.
    expect_rejected(
        [&] {
            ops::bias_act_dropout_forward(a.view(3, 4), a.view(3, 4), bias.view(1, 4), Activation::Relu, on,
                                          step_.data());
        },
        "bias_act_dropout_forward");
    // Active dropout needs the step counter.
    expect_rejected(
        [&] {
            ops::bias_act_dropout_forward(h.view(3, 4), a.view(3, 4), bias.view(1, 4), Activation::Relu, on, nullptr);
        },
        "bias_act_dropout_forward");
    expect_rejected(
        [&] {
            ops::act_dropout_backward(h.view(3, 4), a.view(3, 4), bias.view(1, 4), Activation::Relu, {}, step_.data());
        },
        "act_dropout_backward");
    expect_rejected(
        [&] {
            ops::act_dropout_backward(h.view(3, 4), a.view(4, 3), a.view(3, 4), Activation::Relu, {}, step_.data());
        },
        "act_dropout_backward");
}

TEST_F(OpsValidation, ReductionAndLossShapes) {
    Buffer<float> dy = buf(12), db = buf(4), logits = buf(12), loss = buf(3), correct = buf(3);
    Buffer<uint8_t> labels = Buffer<uint8_t>::from_host(std::vector<uint8_t>{0, 1, 2}, kCpu);
    expect_rejected([&] { ops::bias_grad(db.view(1, 3), dy.view(3, 4)); }, "bias_grad");
    expect_rejected(
        [&] {
            ops::softmax_xent(dy.view(3, 4), loss.view(1, 3), correct.view(1, 3), logits.view(4, 3), labels.view(1, 3),
                              1.0f);
        },
        "softmax_xent");  // 4 rows of logits, 3 labels
    expect_rejected(
        [&] {
            ops::softmax_xent(dy.view(4, 3), loss.view(1, 3), correct.view(1, 3), logits.view(3, 4), labels.view(1, 3),
                              1.0f);
        },
        "softmax_xent");  // dlogits shape
    expect_rejected(
        [&] {
            ops::softmax_xent(dy.view(3, 4), loss.view(1, 2), correct.view(1, 3), logits.view(3, 4), labels.view(1, 3),
                              1.0f);
        },
        "softmax_xent");  // row_loss size
    expect_rejected([&] { ops::softmax(dy.view(4, 3), logits.view(3, 4)); }, "softmax");
    Buffer<double> totals = Buffer<double>::from_host(std::vector<double>{0, 0}, kCpu);
    expect_rejected([&] { ops::accumulate_metrics(totals.data(), loss.view(1, 3), correct.view(1, 2)); },
                    "accumulate_metrics");
}

TEST_F(OpsValidation, BatchShapes) {
    Buffer<uint8_t> images = Buffer<uint8_t>::from_host(std::vector<uint8_t>(10 * 6, 1), kCpu);
    Buffer<uint8_t> labels = Buffer<uint8_t>::from_host(std::vector<uint8_t>(10, 1), kCpu);
    Buffer<int32_t> order = Buffer<int32_t>::from_host(std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, kCpu);
    Buffer<float> x = buf(4 * 6);
    Buffer<uint8_t> lab_out = Buffer<uint8_t>::from_host(std::vector<uint8_t>(4, 0), kCpu);
    Buffer<uint64_t> bi = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, kCpu);
    EXPECT_NO_THROW(ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 6), labels.view(1, 10),
                                      order.view(1, 10), bi.data(), 4));
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 5), labels.view(1, 10),
                              order.view(1, 10), bi.data(), 4);
        },
        "gather_batch");  // image width differs from x
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 6), labels.view(1, 9),
                              order.view(1, 10), bi.data(), 4);
        },
        "gather_batch");  // one label too few
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 6), labels.view(1, 10),
                              order.view(2, 5), bi.data(), 4);
        },
        "gather_batch");  // order of more than one row
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 6), labels.view(1, 10),
                              order.view(1, 3), bi.data(), 4);
        },
        "gather_batch");  // order shorter than one batch
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 3), images.view(10, 6), labels.view(1, 10),
                              order.view(1, 10), bi.data(), 4);
        },
        "gather_batch");  // labels_out rows
    expect_rejected(
        [&] {
            ops::gather_batch(x.view(4, 6), lab_out.view(1, 4), images.view(10, 6), labels.view(1, 10),
                              order.view(1, 10), bi.data(), 3);
        },
        "gather_batch");  // more rows than the batch size
    Buffer<uint8_t> pixels = Buffer<uint8_t>::from_host(std::vector<uint8_t>(24, 0), kCpu);
    expect_rejected([&] { ops::u8_to_float(x.view(4, 6), pixels.view(6, 4)); }, "u8_to_float");
}

TEST_F(OpsValidation, OptimizerShapes) {
    Buffer<float> w = buf(8), m = buf(8), v = buf(8), g = buf(8), small = buf(7);
    expect_rejected(
        [&] { ops::adam_step(w.view(1, 8), small.view(1, 7), v.view(1, 8), g.view(1, 8), {}, step_.data()); },
        "adam_step");
    expect_rejected(
        [&] { ops::adam_step(w.view(1, 8), m.view(1, 8), v.view(1, 8), small.view(1, 7), {}, step_.data()); },
        "adam_step");
    expect_rejected([&] { ops::adam_step(w.view(1, 8), m.view(1, 8), v.view(1, 8), g.view(1, 8), {}, nullptr); },
                    "adam_step");
    expect_rejected([&] { ops::sgd_step(w.view(1, 8), small.view(1, 7), g.view(1, 8), {}); }, "sgd_step");
    expect_rejected([&] { ops::rmsprop_step(w.view(1, 8), m.view(1, 8), small.view(1, 7), {}); }, "rmsprop_step");
}

// Mixed devices: one tensor on the GPU, the rest on the host. Where a GPU is usable it is a real
// device buffer; elsewhere a view tagged Cuda over host memory, which ops.cpp must reject before
// any backend could touch it.
TEST_F(OpsValidation, MixedDevices) {
    Buffer<float> host = buf(64);
    Buffer<float> gpu_storage;
    if (cumnist::cuda_available()) gpu_storage = Buffer<float>(64, Device::Cuda);
    const auto on_gpu = [&](int rows, int cols) {
        return cumnist::cuda_available() ? gpu_storage.view(rows, cols)
                                         : MatrixView<float>{host.data(), rows, cols, Device::Cuda};
    };
    Buffer<float> c = buf(16), a = buf(16), g = buf(16);
    expect_rejected([&] { ops::gemm(c.view(4, 4), on_gpu(4, 4), Trans::No, a.view(4, 4), Trans::No); }, "gemm",
                    "device");
    expect_rejected([&] { ops::gemm(on_gpu(4, 4), a.view(4, 4), Trans::No, c.view(4, 4), Trans::No); }, "gemm",
                    "device");
    expect_rejected(
        [&] {
            ops::bias_act_dropout_forward(c.view(4, 4), a.view(4, 4), on_gpu(1, 4), Activation::Relu, {}, step_.data());
        },
        "bias_act_dropout_forward", "device");
    expect_rejected(
        [&] {
            ops::act_dropout_backward(c.view(4, 4), on_gpu(4, 4), a.view(4, 4), Activation::Relu, {}, step_.data());
        },
        "act_dropout_backward", "device");
    expect_rejected([&] { ops::bias_grad(on_gpu(1, 4), a.view(4, 4)); }, "bias_grad", "device");
    expect_rejected([&] { ops::softmax(on_gpu(4, 4), a.view(4, 4)); }, "softmax", "device");
    Buffer<float> correct = buf(4);
    Buffer<uint8_t> labels = Buffer<uint8_t>::from_host(std::vector<uint8_t>{0, 1, 2, 3}, kCpu);
    expect_rejected(
        [&] {
            ops::softmax_xent(c.view(4, 4), on_gpu(1, 4), correct.view(1, 4), a.view(4, 4), labels.view(1, 4), 0.25f);
        },
        "softmax_xent", "device");
    expect_rejected([&] { ops::sgd_step(a.view(1, 16), on_gpu(1, 16), g.view(1, 16), {}); }, "sgd_step", "device");
    expect_rejected(
        [&] { ops::adam_step(a.view(1, 16), c.view(1, 16), on_gpu(1, 16), g.view(1, 16), {}, step_.data()); },
        "adam_step", "device");
    expect_rejected([&] { ops::rmsprop_step(a.view(1, 16), c.view(1, 16), on_gpu(1, 16), {}); }, "rmsprop_step",
                    "device");
}

}  // namespace
