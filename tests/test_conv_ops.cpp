// The convolution, pooling and standalone activation/dropout ops of include/cumnist/ops.h on every
// backend against the double-precision oracle (tests/reference/), parameterised over Device
// {Cpu, Cuda} × odd geometries: 1×1 and 5×7 images, kernels larger than the image with `same`
// padding, strides 1, 2 and 3, 1, 3 and 7 channels, batches of 1 and 33, non-square kernels and
// asymmetric (SAME_UPPER) padding. CUDA cases are skipped, visibly and with the reason, where no GPU
// is usable. Inputs are made on the host from fixed seeds.
//
// Tolerances, each restated where it is used:
//   element-wise results vs double: 1e-6 absolute + 1e-5 relative (a few float roundings of O(1) values);
//   reductions (convolutions, bias gradients): 1e-4 absolute + 1e-4 relative for sums of up to 100
//     float terms of size ≤ 1, the absolute part scaled by √(terms / 100) beyond (float rounding
//     errors of a sum grow like the square root of its length; a dropped or wrong term, of size
//     ~0.1–1, is still far outside);
//   max pooling: exact (the output is one of the inputs; the argmax an integer; gradients of small
//     integers sum exactly in float).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <typeinfo>
#include <vector>

#include <gtest/gtest.h>

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
using cumnist::Conv2dGeometry;
using cumnist::Device;
using cumnist::Dropout;
using cumnist::MatrixView;
using cumnist::Pool2dGeometry;
namespace ops = cumnist::ops;
using cumnist_test::all_close;
using cumnist_test::reduction_tolerance;
using cumnist_test::Tolerance;
using cumnist_test::uniform_bytes;
using cumnist_test::uniform_floats;
using cumnist_test::widen;
using cumnist_test::make_workspace;
using cumnist_test::Workspace;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Element-wise results: a handful of float roundings of values of size ≤ ~10.
constexpr Tolerance kElementwise{1e-6, 1e-5};
// Exact: values copied from the input, integer-valued sums.
constexpr Tolerance kExact{0.0, 0.0};

const std::vector<Device> kDevices = {Device::Cpu, Device::Cuda};

ref::Act to_ref(Activation a) {
    switch (a) {
        case Activation::None: return ref::Act::None;
        case Activation::Relu: return ref::Act::Relu;
        case Activation::Sigmoid: return ref::Act::Sigmoid;
        case Activation::Tanh: return ref::Act::Tanh;
    }
    return ref::Act::None;
}

// Fixture base: the first tuple element is the device; CUDA cases skip when no GPU is usable.
template <class Param>
class OnDevice : public ::testing::TestWithParam<Param> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(device()); }
    Device device() const { return std::get<0>(this->GetParam()); }
};

std::vector<float> nan_floats(std::size_t n) { return std::vector<float>(n, kNaN); }

// The same bits (not merely equal values: +0 and −0 differ here).
bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

std::vector<double> prefix(const std::vector<double>& v, std::size_t count) {
    return std::vector<double>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(count));
}
std::vector<float> prefix(const std::vector<float>& v, std::size_t count) {
    return std::vector<float>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(count));
}


std::vector<uint8_t> expected_keep(const Dropout& d, uint64_t step, std::size_t n) {
    std::vector<uint8_t> keep(n);
    const uint32_t threshold = cumnist::dropout_keep_threshold(d.rate);
    for (std::size_t i = 0; i < n; ++i) keep[i] = cumnist::dropout_keep(d.seed, d.stream, step, i, threshold) ? 1 : 0;
    return keep;
}

// ================================================================================================
// conv2d_forward / conv2d_backward_data / conv2d_backward_filter / channel_bias_grad
// ================================================================================================

enum class Padding { Valid, Same, Explicit };

struct ConvCase {
    const char* name;
    int n, in_c, out_c, h, w, kh, kw, sh, sw;
    Padding padding;
    int pad_top, pad_bottom, pad_left, pad_right;  // Padding::Explicit only
};
void PrintTo(const ConvCase& c, std::ostream* os) { *os << c.name; }

struct ConvPads {
    ref::Pad1 h, w;
};

// The padding of each dimension as the oracle sees it: ref::pad_valid / ref::pad_same, or the
// explicit sizes with ops.h's output size.
ConvPads pads_of(const ConvCase& c) {
    switch (c.padding) {
        case Padding::Valid: return {ref::pad_valid(c.h, c.kh, c.sh), ref::pad_valid(c.w, c.kw, c.sw)};
        case Padding::Same: return {ref::pad_same(c.h, c.kh, c.sh), ref::pad_same(c.w, c.kw, c.sw)};
        case Padding::Explicit: break;
    }
    return {ref::Pad1{c.pad_top, c.pad_bottom, (c.h + c.pad_top + c.pad_bottom - c.kh) / c.sh + 1},
            ref::Pad1{c.pad_left, c.pad_right, (c.w + c.pad_left + c.pad_right - c.kw) / c.sw + 1}};
}

Conv2dGeometry geometry_of(const ConvCase& c, const ConvPads& p) {
    Conv2dGeometry g;
    g.n = c.n;
    g.in_c = c.in_c;
    g.in_h = c.h;
    g.in_w = c.w;
    g.out_c = c.out_c;
    g.k_h = c.kh;
    g.k_w = c.kw;
    g.stride_h = c.sh;
    g.stride_w = c.sw;
    g.pad_top = p.h.before;
    g.pad_bottom = p.h.after;
    g.pad_left = p.w.before;
    g.pad_right = p.w.after;
    return g;
}

bool asymmetric(const Conv2dGeometry& g) { return g.pad_top != g.pad_bottom || g.pad_left != g.pad_right; }

// kernels/conv.cu (build_plan): cuDNN pads symmetrically with (pad_top, pad_left) and derives the
// output size (in + 2·pad_before − k) / stride + 1; where the padding is asymmetric and that size
// differs from ops.h's out_h()/out_w(), conv2d_workspace_bytes (and every conv op) throws
// "asymmetric padding is not supported on the GPU". (SAME_UPPER with an odd total padding always
// lands here; an asymmetric padding whose extra row or column no window reaches does not.)
bool gpu_rejects(const Conv2dGeometry& g) {
    const int cudnn_h = (g.in_h + 2 * g.pad_top - g.k_h) / g.stride_h + 1;
    const int cudnn_w = (g.in_w + 2 * g.pad_left - g.k_w) / g.stride_w + 1;
    return asymmetric(g) && (cudnn_h != g.out_h() || cudnn_w != g.out_w());
}

const std::vector<ConvCase> kConvCases = {
    // name, n, in_c, out_c, h, w, kh, kw, sh, sw, padding, (explicit pads: top, bottom, left, right)
    {"Image1x1_K1_Valid", 1, 1, 1, 1, 1, 1, 1, 1, 1, Padding::Valid, 0, 0, 0, 0},
    {"Image1x1_K5_Same_KernelLargerThanImage", 33, 3, 7, 1, 1, 5, 5, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image3x3_K5_Same_S1", 1, 1, 3, 3, 3, 5, 5, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image3x3_K5_Same_S2", 33, 3, 3, 3, 3, 5, 5, 2, 2, Padding::Same, 0, 0, 0, 0},
    {"Image5x7_K3_Same_S1", 1, 7, 3, 5, 7, 3, 3, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image5x7_K3_Same_S2", 33, 3, 7, 5, 7, 3, 3, 2, 2, Padding::Same, 0, 0, 0, 0},
    {"Image5x7_K3_Valid_S3", 33, 7, 1, 5, 7, 3, 3, 3, 3, Padding::Valid, 0, 0, 0, 0},
    {"Image5x7_K3x2_Valid_S2x1", 1, 3, 7, 5, 7, 3, 2, 2, 1, Padding::Valid, 0, 0, 0, 0},
    {"Image7x5_K3x2_Same_S3", 33, 1, 3, 7, 5, 3, 2, 3, 3, Padding::Same, 0, 0, 0, 0},
    // SAME_UPPER with an odd total padding: pad_top 0, pad_bottom 1 (or left 0, right 1). The GPU
    // refuses these (gpu_rejects).
    {"Image4x4_K2_Same_S1_AsymmetricPad", 1, 1, 1, 4, 4, 2, 2, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image5x7_K3x2_Same_S1_AsymmetricPadW", 33, 3, 3, 5, 7, 3, 2, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image6x5_K3x2_Same_S2x1_AsymmetricPad", 1, 7, 1, 6, 5, 3, 2, 2, 1, Padding::Same, 0, 0, 0, 0},
    // pad_top 0, pad_bottom 1 where the extra bottom row changes no output size: every device.
    {"Image5x7_K3_S2_PadTop0Bottom1", 33, 3, 7, 5, 7, 3, 3, 2, 2, Padding::Explicit, 0, 1, 1, 1},
    // Stride 3 leaves rows and columns that no window reads: their dx is zero.
    {"Image7x7_K2_Valid_S3_Gaps", 33, 1, 3, 7, 7, 2, 2, 3, 3, Padding::Valid, 0, 0, 0, 0},
    // MNIST's first convolution.
    {"Image28x28_K5_Same_S1", 33, 1, 7, 28, 28, 5, 5, 1, 1, Padding::Same, 0, 0, 0, 0},
    // Few input channels and whole blocks of output channels: on the CPU a first layer's
    // backward (no dx) runs cumnist's own loop rather than oneDNN's padded one.
    {"Image28x28_K3_Same_FirstLayer32", 33, 1, 32, 28, 28, 3, 3, 1, 1, Padding::Same, 0, 0, 0, 0},
    // The same loop's 1-channel 3x3 form checks the bounds only outside the positions whose taps
    // all lie inside the image: those with none such, a stride, no padding, a padding of 2.
    {"Image2x2_K3_Same_In1Out16_KernelLargerThanImage", 1, 1, 16, 2, 2, 3, 3, 1, 1, Padding::Same, 0, 0, 0, 0},
    {"Image5x7_K3_Same_S2_In1Out8", 33, 1, 8, 5, 7, 3, 3, 2, 2, Padding::Same, 0, 0, 0, 0},
    {"Image6x5_K3_Valid_S2x1_In1Out8", 33, 1, 8, 6, 5, 3, 3, 2, 1, Padding::Valid, 0, 0, 0, 0},
    {"Image5x5_K3_Pad2_In1Out8", 1, 1, 8, 5, 5, 3, 3, 1, 1, Padding::Explicit, 2, 2, 2, 2},
    {"Image5x7_K3_Same_S2_In3Out16", 33, 3, 16, 5, 7, 3, 3, 2, 2, Padding::Same, 0, 0, 0, 0},
    {"Image6x6_K3_Valid_In7Out8", 1, 7, 8, 6, 6, 3, 3, 1, 1, Padding::Valid, 0, 0, 0, 0},
    {"Image6x5_K2_Same_S2x1_In1Out16_AsymmetricPad", 33, 1, 16, 6, 5, 2, 2, 2, 1, Padding::Same, 0, 0, 0, 0},
    {"Image6x6_K4_Valid_In4Out8_64Taps", 1, 4, 8, 6, 6, 4, 4, 1, 1, Padding::Valid, 0, 0, 0, 0},  // the loop's limit
};

using ConvParam = std::tuple<Device, ConvCase>;
class Conv2dVsReference : public OnDevice<ConvParam> {};

TEST_P(Conv2dVsReference, AllDirectionsMatchReference) {
    const Device dev = std::get<0>(GetParam());
    const ConvCase c = std::get<1>(GetParam());
    const ConvPads p = pads_of(c);
    const Conv2dGeometry g = geometry_of(c, p);
    ASSERT_GE(p.h.out, 1);
    ASSERT_GE(p.w.out, 1);
    ASSERT_EQ(g.out_h(), p.h.out) << "ops.h and the oracle disagree on the output height";
    ASSERT_EQ(g.out_w(), p.w.out) << "ops.h and the oracle disagree on the output width";
    const int in_size = g.in_size(), out_size = g.out_size(), filter_size = g.filter_size();
    const std::size_t in_elems = static_cast<std::size_t>(g.n) * in_size;
    const std::size_t out_elems = static_cast<std::size_t>(g.n) * out_size;
    const std::size_t w_elems = static_cast<std::size_t>(g.out_c) * filter_size;

    const std::vector<float> hx = uniform_floats(in_elems, -1.0f, 1.0f, 2101);
    const std::vector<float> hw = uniform_floats(w_elems, -1.0f, 1.0f, 2102);
    const std::vector<float> hb = uniform_floats(static_cast<std::size_t>(g.out_c), -1.0f, 1.0f, 2103);
    const std::vector<float> hdy = uniform_floats(out_elems, -1.0f, 1.0f, 2104);
    Buffer<float> x = Buffer<float>::from_host(hx, dev);
    Buffer<float> w = Buffer<float>::from_host(hw, dev);
    Buffer<float> b = Buffer<float>::from_host(hb, dev);
    Buffer<float> dy = Buffer<float>::from_host(hdy, dev);
    // Outputs start as NaN: every op overwrites.
    Buffer<float> y = Buffer<float>::from_host(nan_floats(out_elems), dev);
    Buffer<float> dx = Buffer<float>::from_host(nan_floats(in_elems), dev);
    Buffer<float> dw = Buffer<float>::from_host(nan_floats(w_elems), dev);
    Buffer<float> db = Buffer<float>::from_host(nan_floats(static_cast<std::size_t>(g.out_c)), dev);

    if (dev == Device::Cuda && gpu_rejects(g)) {
        // cuDNN's symmetric padding cannot give this output size: refused before anything runs,
        // by conv2d_workspace_bytes and, given no workspace, by every direction.
        const char* why = "asymmetric padding is not supported on the GPU";
        expect_rejected([&] { (void)ops::conv2d_workspace_bytes(g, dev); }, "conv2d", why);
        const MatrixView<uint8_t> none{nullptr, 0, 0, dev};
        expect_rejected(
            [&] {
                ops::conv2d_forward(y.view(g.n, out_size), x.view(g.n, in_size), w.view(g.out_c, filter_size),
                                    b.view(1, g.out_c), g, none);
            },
            "conv2d", why);
        expect_rejected(
            [&] {
                ops::conv2d_backward_data(dx.view(g.n, in_size), dy.view(g.n, out_size), w.view(g.out_c, filter_size),
                                          g, none);
            },
            "conv2d", why);
        expect_rejected(
            [&] {
                ops::conv2d_backward_filter(dw.view(g.out_c, filter_size), dy.view(g.n, out_size),
                                            x.view(g.n, in_size), g, none);
            },
            "conv2d", why);
        return;
    }

    const ref::Tensor4 rx = ref::Tensor4::from_float(hx, g.n, g.in_c, g.in_h, g.in_w);
    const ref::Tensor4 rw = ref::Tensor4::from_float(hw, g.out_c, g.in_c, g.k_h, g.k_w);
    const ref::Tensor4 rdy = ref::Tensor4::from_float(hdy, g.n, g.out_c, g.out_h(), g.out_w());
    const ref::Tensor4 y_want = ref::conv2d(rx, rw, widen(hb), g.stride_h, g.stride_w, p.h, p.w);
    const ref::Tensor4 dx_want =
        ref::conv2d_backward_data(rdy, rw, g.in_h, g.in_w, g.stride_h, g.stride_w, p.h, p.w);
    const ref::Tensor4 dw_want = ref::conv2d_backward_filter(rdy, rx, g.k_h, g.k_w, g.stride_h, g.stride_w, p.h, p.w);
    const std::vector<double> db_want = ref::conv2d_bias_grad(rdy);

    Workspace ws = make_workspace(g, dev);
    if (dev == Device::Cpu && !(g.in_c < 8 && g.out_c % 8 == 0 && g.in_c * g.k_h * g.k_w <= 64)) {
        EXPECT_EQ(ws.buffer.size(), 0u) << "the CPU needs no workspace but for a first layer's loop (ops.h)";
    }

    // Forward: each output sums in_c·kh·kw products and the bias.
    ops::conv2d_forward(y.view(g.n, out_size), x.view(g.n, in_size), w.view(g.out_c, filter_size), b.view(1, g.out_c),
                        g, ws.view);
    const Tolerance y_tol = reduction_tolerance(filter_size + 1);
    EXPECT_TRUE(all_close(y.to_host(), y_want.data, y_tol, "y"));
    // With the activation fused (a ReLU inside the primitive on the CPU): act of the same sums, each
    // activation 1-Lipschitz, so within y's tolerance (plus the activation's own rounding).
    for (const Activation act : {Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        Buffer<float> ya = Buffer<float>::from_host(nan_floats(out_elems), dev);
        ops::conv2d_forward(ya.view(g.n, out_size), x.view(g.n, in_size), w.view(g.out_c, filter_size),
                            b.view(1, g.out_c), g, ws.view, act);
        std::vector<double> want(y_want.data.size());
        for (std::size_t i = 0; i < want.size(); ++i) {
            const double v = y_want.data[i];
            want[i] = act == Activation::Relu ? std::max(v, 0.0)
                    : act == Activation::Sigmoid ? 1.0 / (1.0 + std::exp(-v))
                                                 : std::tanh(v);
        }
        const std::vector<float> got = ya.to_host();
        EXPECT_TRUE(all_close(got, want, {y_tol.abs + 1e-6, y_tol.rel + 1e-6}, fmt::format("act({}) y", to_string(act))));
        if (act == Activation::Relu)
            for (std::size_t i = 0; i < got.size(); ++i)
                if (want[i] < -y_tol.abs) {
                    ASSERT_EQ(got[i], 0.0f) << "ReLU of a negative sum, element " << i;
                }
        // Bit for bit what the convolution then act_dropout_forward give (the promise of ops.h),
        // NaN included: an input NaN makes the sums of its windows NaN, which the ReLU makes +0.
        std::vector<float> hx_nan = hx;
        hx_nan[hx_nan.size() / 2] = std::nanf("");
        Buffer<float> x_nan = Buffer<float>::from_host(hx_nan, dev);
        Buffer<float> fused = Buffer<float>::from_host(nan_floats(out_elems), dev);
        Buffer<float> apart = Buffer<float>::from_host(nan_floats(out_elems), dev);
        ops::conv2d_forward(fused.view(g.n, out_size), x_nan.view(g.n, in_size), w.view(g.out_c, filter_size),
                            b.view(1, g.out_c), g, ws.view, act);
        ops::conv2d_forward(apart.view(g.n, out_size), x_nan.view(g.n, in_size), w.view(g.out_c, filter_size),
                            b.view(1, g.out_c), g, ws.view);
        ops::act_dropout_forward(apart.view(g.n, out_size), apart.view(g.n, out_size), act, {}, nullptr);
        EXPECT_TRUE(bits_equal(fused.to_host(), apart.to_host()))
            << "conv2d_forward with " << to_string(act) << " differs from the convolution then the activation";
    }

    // Backward data: each input element sums at most out_c·kh·kw products.
    ops::conv2d_backward_data(dx.view(g.n, in_size), dy.view(g.n, out_size), w.view(g.out_c, filter_size), g, ws.view);
    const Tolerance dx_tol = reduction_tolerance(g.out_c * g.k_h * g.k_w);
    EXPECT_TRUE(all_close(dx.to_host(), dx_want.data, dx_tol, "dx"));

    // Backward filter: each weight sums n·out_h·out_w products.
    ops::conv2d_backward_filter(dw.view(g.out_c, filter_size), dy.view(g.n, out_size), x.view(g.n, in_size), g,
                                ws.view);
    const Tolerance dw_tol = reduction_tolerance(static_cast<double>(g.n) * g.out_h() * g.out_w());
    const std::vector<float> dw_first = dw.to_host();
    EXPECT_TRUE(all_close(dw_first, dw_want.data, dw_tol, "dw"));
    // Deterministic: the same inputs give the same bits (into a fresh NaN buffer).
    Buffer<float> dw_again = Buffer<float>::from_host(nan_floats(w_elems), dev);
    ops::conv2d_backward_filter(dw_again.view(g.out_c, filter_size), dy.view(g.n, out_size), x.view(g.n, in_size), g,
                                ws.view);
    EXPECT_TRUE(bits_equal(dw_again.to_host(), dw_first)) << "conv2d_backward_filter is not deterministic";

    // Bias gradient: each channel sums n·out_h·out_w values of dy.
    ops::channel_bias_grad(db.view(1, g.out_c), dy.view(g.n, out_size), g.out_c);
    EXPECT_TRUE(all_close(db.to_host(), db_want, dw_tol, "db"));

    // The whole backward in one call (dy reordered once on the CPU; db from the backward-weights
    // primitive there), with dx and without (a first layer's), deterministic.
    for (const bool with_dx : {true, false}) {
        SCOPED_TRACE(with_dx ? "conv2d_backward with dx" : "conv2d_backward without dx");
        Buffer<float> dx2 = Buffer<float>::from_host(nan_floats(in_elems), dev);
        Buffer<float> dw2 = Buffer<float>::from_host(nan_floats(w_elems), dev);
        Buffer<float> db2 = Buffer<float>::from_host(nan_floats(static_cast<std::size_t>(g.out_c)), dev);
        const MatrixView<float> dx_view = with_dx ? dx2.view(g.n, in_size) : MatrixView<float>{nullptr, 0, 0, dev};
        ops::conv2d_backward(dx_view, dw2.view(g.out_c, filter_size), db2.view(1, g.out_c), dy.view(g.n, out_size),
                             x.view(g.n, in_size), w.view(g.out_c, filter_size), g, ws.view);
        EXPECT_TRUE(all_close(dw2.to_host(), dw_want.data, dw_tol, "dw"));
        EXPECT_TRUE(all_close(db2.to_host(), db_want, dw_tol, "db"));
        if (with_dx) {
            EXPECT_TRUE(all_close(dx2.to_host(), dx_want.data, dx_tol, "dx"));
        } else {
            const std::vector<float> untouched = dx2.to_host();
            EXPECT_TRUE(std::all_of(untouched.begin(), untouched.end(), [](float v) { return std::isnan(v); }))
                << "dx was written though not asked for";
        }
        // The same call again (dx or not: a first layer's dw may come from a loop of its own).
        Buffer<float> dx3 = Buffer<float>::from_host(nan_floats(in_elems), dev);
        Buffer<float> dw3 = Buffer<float>::from_host(nan_floats(w_elems), dev);
        Buffer<float> db3 = Buffer<float>::from_host(nan_floats(static_cast<std::size_t>(g.out_c)), dev);
        ops::conv2d_backward(with_dx ? dx3.view(g.n, in_size) : MatrixView<float>{nullptr, 0, 0, dev},
                             dw3.view(g.out_c, filter_size), db3.view(1, g.out_c),
                             dy.view(g.n, out_size), x.view(g.n, in_size), w.view(g.out_c, filter_size), g, ws.view);
        EXPECT_TRUE(bits_equal(dw3.to_host(), dw2.to_host())) << "conv2d_backward's dw is not deterministic";
        EXPECT_TRUE(bits_equal(db3.to_host(), db2.to_host())) << "conv2d_backward's db is not deterministic";
        if (with_dx) {
            EXPECT_TRUE(bits_equal(dx3.to_host(), dx2.to_host())) << "conv2d_backward's dx is not deterministic";
        }
    }

    // The inputs are only read.
    EXPECT_TRUE(bits_equal(x.to_host(), hx)) << "x was written";
    EXPECT_TRUE(bits_equal(dy.to_host(), hdy)) << "dy was written";

    if (g.n > 5) {
        // A short batch (the last of an epoch): its first 5 images, with the workspace sized for g.n.
        SCOPED_TRACE("a short batch of 5 images, same workspace");
        const int rows = 5;
        const Conv2dGeometry gs = g.with_batch(rows);
        const std::size_t in5 = static_cast<std::size_t>(rows) * in_size;
        const std::size_t out5 = static_cast<std::size_t>(rows) * out_size;
        const ref::Tensor4 rx5 = ref::Tensor4::from_float(prefix(hx, in5), rows, g.in_c, g.in_h, g.in_w);
        const ref::Tensor4 rdy5 = ref::Tensor4::from_float(prefix(hdy, out5), rows, g.out_c, g.out_h(), g.out_w());
        Buffer<float> y5 = Buffer<float>::from_host(nan_floats(out5), dev);
        Buffer<float> dx5 = Buffer<float>::from_host(nan_floats(in5), dev);
        Buffer<float> dw5 = Buffer<float>::from_host(nan_floats(w_elems), dev);
        ops::conv2d_forward(y5.view(rows, out_size), x.view(rows, in_size), w.view(g.out_c, filter_size),
                            b.view(1, g.out_c), gs, ws.view);
        EXPECT_TRUE(all_close(y5.to_host(), prefix(y_want.data, out5), y_tol, "y (5 images)"));
        ops::conv2d_backward_data(dx5.view(rows, in_size), dy.view(rows, out_size), w.view(g.out_c, filter_size), gs,
                                  ws.view);
        EXPECT_TRUE(all_close(dx5.to_host(), prefix(dx_want.data, in5), dx_tol, "dx (5 images)"));
        ops::conv2d_backward_filter(dw5.view(g.out_c, filter_size), dy.view(rows, out_size), x.view(rows, in_size), gs,
                                    ws.view);
        const ref::Tensor4 dw5_want =
            ref::conv2d_backward_filter(rdy5, rx5, g.k_h, g.k_w, g.stride_h, g.stride_w, p.h, p.w);
        EXPECT_TRUE(all_close(dw5.to_host(), dw5_want.data,
                              reduction_tolerance(static_cast<double>(rows) * g.out_h() * g.out_w()), "dw (5 images)"));
    }
}

INSTANTIATE_TEST_SUITE_P(ConvOps, Conv2dVsReference,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kConvCases)),
                         [](const ::testing::TestParamInfo<ConvParam>& param_info) {
                             return cumnist_test::device_label(std::get<0>(param_info.param)) + "_" +
                                    std::get<1>(param_info.param).name;
                         });

// The oracle's reading of the case list itself: the asymmetric cases are asymmetric, and the GPU
// refuses exactly the three whose output size symmetric padding would change (so the CUDA runs
// above cover both the refusal and an accepted asymmetric padding).
TEST(Conv2dCases, AsymmetricPaddingAsIntended) {
    int asym = 0, rejected = 0;
    for (const ConvCase& c : kConvCases) {
        const Conv2dGeometry g = geometry_of(c, pads_of(c));
        asym += asymmetric(g);
        rejected += gpu_rejects(g);
        if (asymmetric(g)) {
            // cuDNN's size formula is only meaningful (and gpu_rejects only right) for a
            // non-negative numerator.
            EXPECT_GE(g.in_h + 2 * g.pad_top - g.k_h, 0) << c.name;
            EXPECT_GE(g.in_w + 2 * g.pad_left - g.k_w, 0) << c.name;
        }
    }
    EXPECT_EQ(asym, 5);      // the four "AsymmetricPad" cases and the first-layer one
    EXPECT_EQ(rejected, 4);  // all but the one whose extra column no window reaches
    const ref::Pad1 upper = ref::pad_same(4, 2, 1);  // SAME_UPPER, even kernel: the extra row goes after
    EXPECT_EQ(upper.before, 0);
    EXPECT_EQ(upper.after, 1);
}

// channel_bias_grad on its own, over (n, channels, spatial) shapes around the GPU kernel's block of
// 256 (a plane smaller than, equal to and larger than one block).
struct BiasShape {
    int n, channels, spatial;
};
void PrintTo(const BiasShape& s, std::ostream* os) { *os << s.n << "x" << s.channels << "x" << s.spatial; }
using BiasParam = std::tuple<Device, BiasShape>;
class ChannelBiasGradVsReference : public OnDevice<BiasParam> {};

TEST_P(ChannelBiasGradVsReference, SumsPerChannelDeterministically) {
    const Device dev = std::get<0>(GetParam());
    const BiasShape s = std::get<1>(GetParam());
    const int cols = s.channels * s.spatial;
    const std::vector<float> hdy = uniform_floats(static_cast<std::size_t>(s.n) * cols, -1.0f, 1.0f, 2201);
    Buffer<float> dy = Buffer<float>::from_host(hdy, dev);
    Buffer<float> db = Buffer<float>::from_host(nan_floats(static_cast<std::size_t>(s.channels)), dev);
    ops::channel_bias_grad(db.view(1, s.channels), dy.view(s.n, cols), s.channels);
    const std::vector<double> want =
        ref::conv2d_bias_grad(ref::Tensor4::from_float(hdy, s.n, s.channels, 1, s.spatial));
    // Each channel sums n·spatial values of size ≤ 1.
    const std::vector<float> first = db.to_host();
    EXPECT_TRUE(all_close(first, want, reduction_tolerance(static_cast<double>(s.n) * s.spatial), "db"));
    // Deterministic: a second call gives the same bits.
    Buffer<float> again = Buffer<float>::from_host(nan_floats(static_cast<std::size_t>(s.channels)), dev);
    ops::channel_bias_grad(again.view(1, s.channels), dy.view(s.n, cols), s.channels);
    EXPECT_TRUE(bits_equal(again.to_host(), first)) << "channel_bias_grad is not deterministic";
}

const std::vector<BiasShape> kBiasShapes = {{1, 1, 1},   {33, 7, 35}, {1000, 3, 1}, {33, 1, 784},
                                            {7, 3, 256}, {2, 7, 257}, {1, 3, 300},  {33, 7, 196}};

INSTANTIATE_TEST_SUITE_P(ConvOps, ChannelBiasGradVsReference,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kBiasShapes)),
                         [](const ::testing::TestParamInfo<BiasParam>& param_info) {
                             const BiasShape s = std::get<1>(param_info.param);
                             return cumnist_test::device_label(std::get<0>(param_info.param)) + "_n" +
                                    std::to_string(s.n) + "c" + std::to_string(s.channels) + "s" +
                                    std::to_string(s.spatial);
                         });

// ================================================================================================
// maxpool2d_forward / maxpool2d_backward
// ================================================================================================

struct PoolCase {
    const char* name;
    int n, c, h, w, kh, kw, sh, sw;
};
void PrintTo(const PoolCase& c, std::ostream* os) { *os << c.name; }

Pool2dGeometry pool_geometry(const PoolCase& c) {
    Pool2dGeometry g;
    g.n = c.n;
    g.c = c.c;
    g.in_h = c.h;
    g.in_w = c.w;
    g.k_h = c.kh;
    g.k_w = c.kw;
    g.stride_h = c.sh;
    g.stride_w = c.sw;
    return g;
}

const std::vector<PoolCase> kPoolCases = {
    // name, n, c, h, w, kh, kw, sh, sw
    {"Image1x1_K1", 1, 1, 1, 1, 1, 1, 1, 1},
    {"K2S2_4x4", 1, 1, 4, 4, 2, 2, 2, 2},
    {"K2S2_5x7_Odd", 33, 3, 5, 7, 2, 2, 2, 2},
    {"K3S2_5x7_Overlap", 33, 7, 5, 7, 3, 3, 2, 2},
    {"K3S1_5x7_Overlap", 1, 3, 5, 7, 3, 3, 1, 1},
    {"K3x2S1x2_7x5", 33, 1, 7, 5, 3, 2, 1, 2},
    {"K2S3_7x7_Gaps", 33, 3, 7, 7, 2, 2, 3, 3},
    {"K5x7_WholeImage", 1, 7, 5, 7, 5, 7, 1, 1},
    {"K2S2_28x28", 33, 7, 28, 28, 2, 2, 2, 2},
    {"K2S2_37x41_Wide", 3, 2, 37, 41, 2, 2, 2, 2},  // 20 outputs a row: a full vector of 16 and a part
};

using PoolParam = std::tuple<Device, PoolCase>;
class MaxPool2dVsReference : public OnDevice<PoolParam> {};

TEST_P(MaxPool2dVsReference, ForwardArgmaxAndBackwardMatchReference) {
    const Device dev = std::get<0>(GetParam());
    const PoolCase c = std::get<1>(GetParam());
    const Pool2dGeometry g = pool_geometry(c);
    const std::size_t in_elems = static_cast<std::size_t>(g.n) * g.in_size();
    const std::size_t out_elems = static_cast<std::size_t>(g.n) * g.out_size();
    ASSERT_GE(g.out_h(), 1);
    ASSERT_GE(g.out_w(), 1);

    // Random floats (no ties in practice), and values from {0, 1, 2} (ties in nearly every window,
    // maxima shared by overlapping windows): the first maximum must win on every device.
    const std::vector<float> random_x = uniform_floats(in_elems, -1.0f, 1.0f, 2401);
    std::vector<float> tied_x(in_elems);
    const std::vector<uint8_t> levels = uniform_bytes(in_elems, 0, 2, 2402);
    for (std::size_t i = 0; i < in_elems; ++i) tied_x[i] = static_cast<float>(levels[i]);
    struct Data {
        const char* name;
        const std::vector<float>& x;
    };
    for (const Data& d : {Data{"random values", random_x}, Data{"ties", tied_x}}) {
        SCOPED_TRACE(d.name);
        const ref::Tensor4 rx = ref::Tensor4::from_float(d.x, g.n, g.c, g.in_h, g.in_w);
        std::vector<int> argmax_want;
        const ref::Tensor4 y_want = ref::maxpool2d(rx, g.k_h, g.k_w, g.stride_h, g.stride_w, &argmax_want);
        ASSERT_EQ(y_want.size(), out_elems);

        Buffer<float> x = Buffer<float>::from_host(d.x, dev);
        Buffer<float> y = Buffer<float>::from_host(nan_floats(out_elems), dev);
        Buffer<int32_t> argmax = Buffer<int32_t>::from_host(std::vector<int32_t>(out_elems, -1), dev);
        ops::maxpool2d_forward(y.view(g.n, g.out_size()), argmax.view(g.n, g.out_size()), x.view(g.n, g.in_size()),
                               g);
        // Exact: the maximum is one of the inputs, and its position an integer.
        EXPECT_TRUE(all_close(y.to_host(), y_want.data, kExact, "y"));
        const std::vector<int32_t> got_argmax = argmax.to_host();
        EXPECT_EQ(std::vector<int>(got_argmax.begin(), got_argmax.end()), argmax_want) << "argmax";

        // Backward with small integers (−4..4): every sum of them is exact in float, so dx must
        // equal the oracle's exactly, overlapping windows included.
        std::vector<float> int_dy(out_elems);
        const std::vector<uint8_t> raw = uniform_bytes(out_elems, 0, 8, 2403);
        for (std::size_t i = 0; i < out_elems; ++i) int_dy[i] = static_cast<float>(raw[i]) - 4.0f;
        // And with random values in [−1, 1): at most ⌈kh/sh⌉·⌈kw/sw⌉ ≤ 9 float additions of values
        // below 1 per element, 1e-5 absolute.
        const std::vector<float> random_dy = uniform_floats(out_elems, -1.0f, 1.0f, 2404);
        struct Grad {
            const char* name;
            const std::vector<float>& dy;
            Tolerance tol;
        };
        const Tolerance random_tol{1e-5, 0.0};
        for (const Grad& gr : {Grad{"integer dy", int_dy, kExact}, Grad{"random dy", random_dy, random_tol}}) {
            SCOPED_TRACE(gr.name);
            const ref::Tensor4 rdy = ref::Tensor4::from_float(gr.dy, g.n, g.c, g.out_h(), g.out_w());
            const ref::Tensor4 dx_want = ref::maxpool2d_backward(rdy, rx, g.k_h, g.k_w, g.stride_h, g.stride_w);
            Buffer<float> dy = Buffer<float>::from_host(gr.dy, dev);
            Buffer<float> dx = Buffer<float>::from_host(nan_floats(in_elems), dev);
            ops::maxpool2d_backward(dx.view(g.n, g.in_size()), dy.view(g.n, g.out_size()),
                                    argmax.view(g.n, g.out_size()), g);
            EXPECT_TRUE(all_close(dx.to_host(), dx_want.data, gr.tol, "dx"));
            // With the ReLU gate (x a ReLU's output, relu_y this pooling's y): dx · [x > 0]. x here
            // also has values ≤ 0 (random in [−1, 1), ties of 0), so the gate shuts somewhere.
            std::vector<double> gated_want = dx_want.data;
            for (std::size_t i = 0; i < in_elems; ++i)
                if (!(d.x[i] > 0.0f)) gated_want[i] = 0.0;
            Buffer<float> gated = Buffer<float>::from_host(nan_floats(in_elems), dev);
            ops::maxpool2d_backward(gated.view(g.n, g.in_size()), dy.view(g.n, g.out_size()),
                                    argmax.view(g.n, g.out_size()), g, y.view(g.n, g.out_size()));
            EXPECT_TRUE(all_close(gated.to_host(), gated_want, gr.tol, "dx with the ReLU gate"));
            // And exactly the bits of the ReLU's own backward (saved = x) run on the plain dx, on this device.
            ops::act_dropout_backward(dx.view(g.n, g.in_size()), dx.view(g.n, g.in_size()), x.view(g.n, g.in_size()),
                                      Activation::Relu, {}, nullptr);
            EXPECT_TRUE(bits_equal(gated.to_host(), dx.to_host())) << "the gate differs from the ReLU backward";
        }
    }
}

INSTANTIATE_TEST_SUITE_P(ConvOps, MaxPool2dVsReference,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kPoolCases)),
                         [](const ::testing::TestParamInfo<PoolParam>& param_info) {
                             return cumnist_test::device_label(std::get<0>(param_info.param)) + "_" +
                                    std::get<1>(param_info.param).name;
                         });

// Hand-made windows: ties, overlapping windows sharing one maximum, NaN.
using DeviceParam = std::tuple<Device>;
class MaxPool2dEdges : public OnDevice<DeviceParam> {
protected:
    struct Result {
        std::vector<float> y;
        std::vector<int32_t> argmax;
        std::vector<float> dx;
    };
    // Forward, then backward with dy.
    Result run(const std::vector<float>& x, int h, int w, int k_h, int k_w, int s_h, int s_w,
               const std::vector<float>& dy) {
        Pool2dGeometry g;
        g.n = 1;
        g.c = 1;
        g.in_h = h;
        g.in_w = w;
        g.k_h = k_h;
        g.k_w = k_w;
        g.stride_h = s_h;
        g.stride_w = s_w;
        const std::size_t out = static_cast<std::size_t>(g.out_size());
        Buffer<float> xb = Buffer<float>::from_host(x, device());
        Buffer<float> y = Buffer<float>::from_host(nan_floats(out), device());
        Buffer<int32_t> am = Buffer<int32_t>::from_host(std::vector<int32_t>(out, -1), device());
        ops::maxpool2d_forward(y.view(1, g.out_size()), am.view(1, g.out_size()), xb.view(1, g.in_size()), g);
        Buffer<float> dyb = Buffer<float>::from_host(dy, device());
        Buffer<float> dx = Buffer<float>::from_host(nan_floats(x.size()), device());
        ops::maxpool2d_backward(dx.view(1, g.in_size()), dyb.view(1, g.out_size()), am.view(1, g.out_size()), g);
        return {y.to_host(), am.to_host(), dx.to_host()};
    }
};

TEST_P(MaxPool2dEdges, TiesOverlapAndNan) {
    {
        SCOPED_TRACE("ties, k2s2 on 2x4");
        // Left window all 3s: its first element. Right window [1 2; 2 2]: the first 2, (0, 3).
        const Result r = run({3, 3, 1, 2, 3, 3, 2, 2}, 2, 4, 2, 2, 2, 2, {10, 20});
        EXPECT_EQ(r.y, (std::vector<float>{3, 2}));
        EXPECT_EQ(r.argmax, (std::vector<int32_t>{0, 3}));
        EXPECT_EQ(r.dx, (std::vector<float>{10, 0, 0, 20, 0, 0, 0, 0}));
    }
    {
        SCOPED_TRACE("a constant row, k (1, 3) s 1: each window's first element");
        const Result r = run({5, 5, 5, 5, 5}, 1, 5, 1, 3, 1, 1, {1, 2, 4});
        EXPECT_EQ(r.argmax, (std::vector<int32_t>{0, 1, 2}));
        EXPECT_EQ(r.dx, (std::vector<float>{1, 2, 4, 0, 0}));
    }
    {
        SCOPED_TRACE("k3s1 on 3x4: both windows hold the 9 at (1, 2)");
        const Result r = run({1, 2, 3, 4, 5, 6, 9, 7, 0, 1, 2, 3}, 3, 4, 3, 3, 1, 1, {0.25f, 0.5f});
        EXPECT_EQ(r.y, (std::vector<float>{9, 9}));
        EXPECT_EQ(r.argmax, (std::vector<int32_t>{6, 6}));
        std::vector<float> want(12, 0.0f);
        want[6] = 0.75f;
        EXPECT_EQ(r.dx, want);
    }
    {
        SCOPED_TRACE("k3s2 on 5x5: the centre is the maximum of all four windows");
        std::vector<float> x(25);
        for (int i = 0; i < 25; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(-i);
        x[12] = 100.0f;
        const Result r = run(x, 5, 5, 3, 3, 2, 2, {1, 2, 4, 8});
        EXPECT_EQ(r.argmax, (std::vector<int32_t>{12, 12, 12, 12}));
        std::vector<float> want(25, 0.0f);
        want[12] = 15.0f;
        EXPECT_EQ(r.dx, want);
    }
    {
        SCOPED_TRACE("NaN, k2s2 on 2x6");
        // [1 NaN; 2 0]: NaN never replaces the 1, the 2 does. [5 NaN; 7 6]: the 7.
        // [NaN 1; 2 3]: a NaN first is never replaced (v > NaN is false): y NaN at (0, 4).
        const Result r = run({1, kNaN, 5, kNaN, kNaN, 1, 2, 0, 7, 6, 2, 3}, 2, 6, 2, 2, 2, 2, {1, 2, 4});
        ASSERT_EQ(r.y.size(), 3u);
        EXPECT_EQ(r.y[0], 2.0f);
        EXPECT_EQ(r.y[1], 7.0f);
        EXPECT_TRUE(std::isnan(r.y[2])) << r.y[2];
        EXPECT_EQ(r.argmax, (std::vector<int32_t>{6, 8, 4}));
        EXPECT_EQ(r.dx, (std::vector<float>{0, 0, 0, 0, 4, 0, 1, 0, 2, 0, 0, 0}));
    }
}

INSTANTIATE_TEST_SUITE_P(ConvOps, MaxPool2dEdges, ::testing::Combine(::testing::ValuesIn(kDevices)),
                         [](const ::testing::TestParamInfo<DeviceParam>& param_info) {
                             return cumnist_test::device_label(std::get<0>(param_info.param));
                         });

// ================================================================================================
// act_dropout_forward
// ================================================================================================

struct Shape {
    int rows;
    int cols;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << "(" << s.rows << ", " << s.cols << ")"; }
using ShapeParam = std::tuple<Device, Shape>;
class ActDropoutForwardVsReference : public OnDevice<ShapeParam> {};

TEST_P(ActDropoutForwardVsReference, ActivationsInPlaceAndDropoutMasks) {
    const Device dev = std::get<0>(GetParam());
    const Shape s = std::get<1>(GetParam());
    const std::size_t size = static_cast<std::size_t>(s.rows) * s.cols;
    const std::vector<float> hx = uniform_floats(size, -3.0f, 3.0f, 2301);
    Buffer<float> x = Buffer<float>::from_host(hx, dev);
    Buffer<float> zero_bias = Buffer<float>::from_host(std::vector<float>(static_cast<std::size_t>(s.cols), 0.0f), dev);

    const uint32_t stream = cumnist::kDropoutStreamBase + 2;
    const Dropout off{};
    const Dropout inference{0.3f, 99, stream, false};  // a rate, but not training: no dropout
    const Dropout on{0.3f, 0xC0FFEE0012345678ull, stream, true};
    const uint64_t step_value = (uint64_t{1} << 32) + 17;
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{step_value}, dev);
    const std::vector<uint8_t> keep = expected_keep(on, step_value, size);

    for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        SCOPED_TRACE(::testing::Message() << "activation " << cumnist::to_string(act));
        ref::Matrix a_want(s.rows, s.cols);
        for (std::size_t i = 0; i < size; ++i) a_want.data[i] = ref::activate(static_cast<double>(hx[i]), to_ref(act));

        // Without dropout, out of place: y = act(x) (element-wise: one activation in float).
        for (const Dropout& d : {off, inference}) {
            SCOPED_TRACE(d.rate == 0.0f ? "dropout off" : "rate 0.3, not training");
            Buffer<float> y = Buffer<float>::from_host(nan_floats(size), dev);
            ops::act_dropout_forward(y.view(s.rows, s.cols), x.view(s.rows, s.cols), act, d, step.data());
            EXPECT_TRUE(all_close(y.to_host(), a_want.data, kElementwise, "y"));
        }
        // In place (y the same view as x), without a step counter: it is read only with active dropout.
        Buffer<float> inplace = Buffer<float>::from_host(hx, dev);
        ops::act_dropout_forward(inplace.view(s.rows, s.cols), inplace.view(s.rows, s.cols), act, off, nullptr);
        EXPECT_TRUE(all_close(inplace.to_host(), a_want.data, kElementwise, "y aliasing x"));

        // With dropout: y = act(x) · keep / (1 − rate), keep from the shared spec (philox.h).
        Buffer<float> y = Buffer<float>::from_host(nan_floats(size), dev);
        ops::act_dropout_forward(y.view(s.rows, s.cols), x.view(s.rows, s.cols), act, on, step.data());
        const std::vector<float> got = y.to_host();
        EXPECT_TRUE(all_close(got, ref::dropout(a_want, keep, on.rate).data, kElementwise, "y with dropout"));
        EXPECT_TRUE(bits_equal(x.to_host(), hx)) << "x was written";

        // The same masks as the fused epilogue with a zero bias (a layer may be either).
        Buffer<float> a = Buffer<float>::from_host(hx, dev);
        Buffer<float> h = Buffer<float>::from_host(nan_floats(size), dev);
        ops::bias_act_dropout_forward(h.view(s.rows, s.cols), a.view(s.rows, s.cols), zero_bias.view(1, s.cols), act,
                                      on, step.data());
        const std::vector<float> fused = h.to_host();
        EXPECT_TRUE(all_close(got, widen(fused), kElementwise, "y vs bias_act_dropout_forward's h"));
        // Where act(x) ≠ 0, an element is non-zero exactly when it is kept, in both ops.
        std::size_t checked = 0, mismatches = 0;
        for (std::size_t i = 0; i < size; ++i) {
            if (a_want.data[i] == 0.0) continue;
            ++checked;
            mismatches += ((got[i] != 0.0f) != (keep[i] != 0)) + ((fused[i] != 0.0f) != (keep[i] != 0));
        }
        EXPECT_EQ(mismatches, 0u) << "elements whose keep bit differs from the spec's, in either op";
        if (act != Activation::Relu) {
            EXPECT_EQ(checked, size) << "act(x) is never 0 for x ≠ 0";
        }
    }
}

const std::vector<Shape> kActShapes = {{1, 1}, {7, 33}, {33, 784}, {1000, 7}};

INSTANTIATE_TEST_SUITE_P(ConvOps, ActDropoutForwardVsReference,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kActShapes)),
                         [](const ::testing::TestParamInfo<ShapeParam>& param_info) {
                             const Shape s = std::get<1>(param_info.param);
                             return cumnist_test::device_label(std::get<0>(param_info.param)) + "_" +
                                    std::to_string(s.rows) + "x" + std::to_string(s.cols);
                         });

// ================================================================================================
// Bad arguments: a cumnist::Error naming the op, before any backend runs (host buffers)
// ================================================================================================

class ConvOpsValidation : public ::testing::Test {
protected:
    static constexpr Device kCpu = Device::Cpu;
    Buffer<float> buf(std::size_t n) { return Buffer<float>::from_host(std::vector<float>(n, 0.5f), kCpu); }
    Buffer<uint64_t> step_{Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, kCpu)};
    const MatrixView<uint8_t> no_workspace_{nullptr, 0, 0, kCpu};

    // 2 images (3, 5, 5), 4 filters 3×3, padding 1, stride 1: output (4, 5, 5).
    static Conv2dGeometry geometry() {
        Conv2dGeometry g;
        g.n = 2;
        g.in_c = 3;
        g.in_h = 5;
        g.in_w = 5;
        g.out_c = 4;
        g.k_h = 3;
        g.k_w = 3;
        g.pad_top = g.pad_bottom = g.pad_left = g.pad_right = 1;
        return g;
    }
};

TEST_F(ConvOpsValidation, ActDropoutForwardShapesAliasingAndStep) {
    Buffer<float> x = buf(12), y = buf(12);
    const Dropout on{0.3f, 1, 2, true};
    EXPECT_NO_THROW(ops::act_dropout_forward(y.view(3, 4), x.view(3, 4), Activation::Tanh, on, step_.data()));
    expect_rejected([&] { ops::act_dropout_forward(y.view(4, 3), x.view(3, 4), Activation::Relu, {}, step_.data()); },
                    "act_dropout_forward");
    // y may be the same view as x only without active dropout.
    expect_rejected([&] { ops::act_dropout_forward(x.view(3, 4), x.view(3, 4), Activation::Relu, on, step_.data()); },
                    "act_dropout_forward", "alias");
    // A partial overlap is refused even without dropout.
    expect_rejected(
        [&] { ops::act_dropout_forward(x.view(2, 4, 4), x.view(2, 4, 0), Activation::Relu, {}, step_.data()); },
        "act_dropout_forward");
    // Active dropout needs the step counter; the rate must lie in [0, 1).
    expect_rejected([&] { ops::act_dropout_forward(y.view(3, 4), x.view(3, 4), Activation::Relu, on, nullptr); },
                    "act_dropout_forward", "step");
    expect_rejected(
        [&] {
            ops::act_dropout_forward(y.view(3, 4), x.view(3, 4), Activation::Relu, Dropout{1.0f, 1, 2, true},
                                     step_.data());
        },
        "act_dropout_forward", "rate");
}

TEST_F(ConvOpsValidation, ConvShapes) {
    const Conv2dGeometry g = geometry();
    ASSERT_EQ(g.in_size(), 75);
    ASSERT_EQ(g.out_size(), 100);
    ASSERT_EQ(g.filter_size(), 27);
    Buffer<float> x = buf(150), y = buf(200), w = buf(108), b = buf(4), dx = buf(150), dy = buf(200), dw = buf(108);
    EXPECT_NO_THROW(ops::conv2d_forward(y.view(2, 100), x.view(2, 75), w.view(4, 27), b.view(1, 4), g, no_workspace_));
    EXPECT_NO_THROW(ops::conv2d_backward_data(dx.view(2, 75), dy.view(2, 100), w.view(4, 27), g, no_workspace_));
    EXPECT_NO_THROW(ops::conv2d_backward_filter(dw.view(4, 27), dy.view(2, 100), x.view(2, 75), g, no_workspace_));
    const auto forward = [&](MatrixView<float> yv, MatrixView<const float> xv, MatrixView<const float> wv,
                             MatrixView<const float> bv) {
        expect_rejected([&] { ops::conv2d_forward(yv, xv, wv, bv, g, no_workspace_); }, "conv2d_forward");
    };
    forward(y.view(2, 100), x.view(1, 75), w.view(4, 27), b.view(1, 4));   // x rows differ from g.n
    forward(y.view(2, 100), x.view(2, 74), w.view(4, 27), b.view(1, 4));   // x cols differ from in_size
    forward(y.view(2, 99), x.view(2, 75), w.view(4, 27), b.view(1, 4));    // y cols
    forward(y.view(2, 100), x.view(2, 75), w.view(27, 4), b.view(1, 4));   // w transposed
    forward(y.view(2, 100), x.view(2, 75), w.view(4, 27), b.view(1, 3));   // bias size
    forward(y.view(2, 100), x.view(2, 75), w.view(4, 27), b.view(4, 1));   // bias a column
    const auto backward_data = [&](MatrixView<float> dxv, MatrixView<const float> dyv, MatrixView<const float> wv) {
        expect_rejected([&] { ops::conv2d_backward_data(dxv, dyv, wv, g, no_workspace_); }, "conv2d_backward_data");
    };
    backward_data(dx.view(2, 74), dy.view(2, 100), w.view(4, 27));  // dx cols
    backward_data(dx.view(2, 75), dy.view(1, 100), w.view(4, 27));  // dy rows
    backward_data(dx.view(2, 75), dy.view(2, 100), w.view(3, 27));  // w rows
    const auto backward_filter = [&](MatrixView<float> dwv, MatrixView<const float> dyv, MatrixView<const float> xv) {
        expect_rejected([&] { ops::conv2d_backward_filter(dwv, dyv, xv, g, no_workspace_); }, "conv2d_backward_filter");
    };
    backward_filter(dw.view(4, 26), dy.view(2, 100), x.view(2, 75));  // dw cols
    backward_filter(dw.view(4, 27), dy.view(2, 99), x.view(2, 75));   // dy cols
    backward_filter(dw.view(4, 27), dy.view(2, 100), x.view(1, 75));  // x rows
}

TEST_F(ConvOpsValidation, ConvGeometry) {
    Buffer<float> x = buf(64), y = buf(64), w = buf(64), b = buf(4);
    // A 5×5 kernel on an unpadded 3×3 image: larger than the padded image.
    Conv2dGeometry big;
    big.n = 1;
    big.in_c = 1;
    big.in_h = 3;
    big.in_w = 3;
    big.out_c = 1;
    big.k_h = 5;
    big.k_w = 5;
    const char* larger = "larger than the padded";
    expect_rejected([&] { (void)ops::conv2d_workspace_bytes(big, kCpu); }, "conv2d_workspace_bytes", larger);
    expect_rejected(
        [&] { ops::conv2d_forward(y.view(1, 1), x.view(1, 9), w.view(1, 25), b.view(1, 1), big, no_workspace_); },
        "conv2d_forward", larger);
    expect_rejected([&] { ops::conv2d_backward_data(x.view(1, 9), y.view(1, 1), w.view(1, 25), big, no_workspace_); },
                    "conv2d_backward_data", larger);
    expect_rejected([&] { ops::conv2d_backward_filter(w.view(1, 25), y.view(1, 1), x.view(1, 9), big, no_workspace_); },
                    "conv2d_backward_filter", larger);
    // Only in height: 3 rows and 1 of padding < a kernel 5 high, with the width fine.
    Conv2dGeometry tall = big;
    tall.k_w = 3;
    tall.pad_top = 1;
    expect_rejected([&] { (void)ops::conv2d_workspace_bytes(tall, kCpu); }, "conv2d_workspace_bytes", larger);
    // Padded by 2 on each side (`same`) the 5×5 kernel fits.
    Conv2dGeometry same = big;
    same.pad_top = same.pad_bottom = same.pad_left = same.pad_right = 2;
    EXPECT_EQ(ops::conv2d_workspace_bytes(same, kCpu), 0u);
    // Padding must be smaller than the kernel, strides and sizes positive.
    Conv2dGeometry bad = same;
    bad.pad_bottom = 5;
    expect_rejected([&] { (void)ops::conv2d_workspace_bytes(bad, kCpu); }, "conv2d_workspace_bytes", "padding");
    bad = same;
    bad.stride_w = 0;
    expect_rejected([&] { (void)ops::conv2d_workspace_bytes(bad, kCpu); }, "conv2d_workspace_bytes", "strides");
    bad = same;
    bad.in_c = 0;
    expect_rejected([&] { (void)ops::conv2d_workspace_bytes(bad, kCpu); }, "conv2d_workspace_bytes", "positive");
}

TEST_F(ConvOpsValidation, ChannelBiasGradShapes) {
    Buffer<float> dy = buf(30), db = buf(4);
    EXPECT_NO_THROW(ops::channel_bias_grad(db.view(1, 2), dy.view(3, 10), 2));
    // 10 columns are not 3 channels of equal size.
    expect_rejected([&] { ops::channel_bias_grad(db.view(1, 3), dy.view(3, 10), 3); }, "channel_bias_grad", "channels");
    expect_rejected([&] { ops::channel_bias_grad(db.view(1, 4), dy.view(3, 10), 4); }, "channel_bias_grad", "channels");
    expect_rejected([&] { ops::channel_bias_grad(db.view(1, 0), dy.view(3, 10), 0); }, "channel_bias_grad");
    // db must be (1, channels).
    expect_rejected([&] { ops::channel_bias_grad(db.view(1, 4), dy.view(3, 10), 2); }, "channel_bias_grad");
    expect_rejected([&] { ops::channel_bias_grad(db.view(2, 1), dy.view(3, 10), 2); }, "channel_bias_grad");
}

TEST_F(ConvOpsValidation, MaxPoolShapesAndWindow) {
    Pool2dGeometry g;  // 2 images (3, 4, 4), k2s2: output (3, 2, 2)
    g.n = 2;
    g.c = 3;
    g.in_h = 4;
    g.in_w = 4;
    ASSERT_EQ(g.in_size(), 48);
    ASSERT_EQ(g.out_size(), 12);
    Buffer<float> x = buf(96), y = buf(24), dx = buf(96), dy = buf(24);
    Buffer<int32_t> am = Buffer<int32_t>::from_host(std::vector<int32_t>(24, 0), kCpu);
    EXPECT_NO_THROW(ops::maxpool2d_forward(y.view(2, 12), am.view(2, 12), x.view(2, 48), g));
    EXPECT_NO_THROW(ops::maxpool2d_backward(dx.view(2, 48), dy.view(2, 12), am.view(2, 12), g));
    expect_rejected([&] { ops::maxpool2d_forward(y.view(2, 11), am.view(2, 12), x.view(2, 48), g); },
                    "maxpool2d_forward");
    expect_rejected([&] { ops::maxpool2d_forward(y.view(2, 12), am.view(2, 11), x.view(2, 48), g); },
                    "maxpool2d_forward");
    expect_rejected([&] { ops::maxpool2d_forward(y.view(2, 12), am.view(2, 12), x.view(1, 48), g); },
                    "maxpool2d_forward");
    expect_rejected([&] { ops::maxpool2d_backward(dx.view(2, 47), dy.view(2, 12), am.view(2, 12), g); },
                    "maxpool2d_backward");
    expect_rejected([&] { ops::maxpool2d_backward(dx.view(2, 48), dy.view(2, 11), am.view(2, 12), g); },
                    "maxpool2d_backward");
    // A window larger than the image.
    Pool2dGeometry wide = g;
    wide.k_w = 5;
    expect_rejected([&] { ops::maxpool2d_forward(y.view(2, 12), am.view(2, 12), x.view(2, 48), wide); },
                    "maxpool2d_forward", "larger");
    expect_rejected([&] { ops::maxpool2d_backward(dx.view(2, 48), dy.view(2, 12), am.view(2, 12), wide); },
                    "maxpool2d_backward", "larger");
}

// Mixed devices: one tensor on the GPU, the rest on the host. Where a GPU is usable it is a real
// device buffer; elsewhere a view tagged Cuda over host memory, which ops.cpp must reject before
// any backend could touch it.
TEST_F(ConvOpsValidation, MixedDevices) {
    Buffer<float> host = buf(256);
    Buffer<float> gpu_storage;
    if (cumnist::cuda_available()) gpu_storage = Buffer<float>(256, Device::Cuda);
    const auto on_gpu = [&](int rows, int cols) {
        return cumnist::cuda_available() ? gpu_storage.view(rows, cols)
                                         : MatrixView<float>{host.data(), rows, cols, Device::Cuda};
    };
    const Conv2dGeometry g = geometry();
    Buffer<float> x = buf(150), y = buf(200), w = buf(108), b = buf(4);
    expect_rejected(
        [&] { ops::conv2d_forward(y.view(2, 100), x.view(2, 75), on_gpu(4, 27), b.view(1, 4), g, no_workspace_); },
        "conv2d_forward", "device");
    expect_rejected([&] { ops::conv2d_backward_data(on_gpu(2, 75), y.view(2, 100), w.view(4, 27), g, no_workspace_); },
                    "conv2d_backward_data", "device");
    expect_rejected(
        [&] { ops::conv2d_backward_filter(w.view(4, 27), on_gpu(2, 100), x.view(2, 75), g, no_workspace_); },
        "conv2d_backward_filter", "device");
    expect_rejected([&] { ops::channel_bias_grad(on_gpu(1, 4), y.view(2, 100), 4); }, "channel_bias_grad", "device");
    expect_rejected([&] { ops::act_dropout_forward(on_gpu(2, 75), x.view(2, 75), Activation::Relu, {}, step_.data()); },
                    "act_dropout_forward", "device");
    Pool2dGeometry pg;
    pg.n = 1;
    pg.c = 1;
    pg.in_h = 4;
    pg.in_w = 4;
    Buffer<int32_t> am = Buffer<int32_t>::from_host(std::vector<int32_t>(4, 0), kCpu);
    expect_rejected([&] { ops::maxpool2d_forward(on_gpu(1, 4), am.view(1, 4), x.view(1, 16), pg); },
                    "maxpool2d_forward", "device");
    expect_rejected([&] { ops::maxpool2d_backward(x.view(1, 16), on_gpu(1, 4), am.view(1, 4), pg); },
                    "maxpool2d_backward", "device");
}

}  // namespace
