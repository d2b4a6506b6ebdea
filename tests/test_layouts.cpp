// The channel-blocked image layouts (ops.h, ImageLayout::Nchw8c and Nchw16c) against NCHW, and max pooling's
// ReLU gate against the ReLU's own backward. Every convolution and pooling op with its tensors in
// either layout must give the NCHW results' bits, element for element: the blocked paths are a
// change of layout and nothing else. The model plans the layouts as model.h says and gives an
// all-NCHW model's logits and gradients bit for bit. The layout is CPU-only; that the GPU refuses
// it is checked without a GPU (the check comes first).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <omp.h>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cumnist/buffer.h"
#include "cumnist/device.h"
#include "cumnist/error.h"
#include "cumnist/model.h"
#include "cumnist/ops.h"
#include "model/layer.h"  // conv_geometry
#include "reference/reference.h"
#include "test_support.h"

namespace {

using cumnist::Activation;
using cumnist::ActivationLayouts;
using cumnist::Buffer;
using cumnist::Conv2dGeometry;
using cumnist::Device;
using cumnist::ImageLayout;
using cumnist::MatrixView;
using cumnist::Model;
using cumnist::Pool2dGeometry;
namespace ops = cumnist::ops;
using cumnist_test::all_close;
using cumnist_test::expect_rejected;
using cumnist_test::make_workspace;
using cumnist_test::reduction_tolerance;
using cumnist_test::uniform_bytes;
using cumnist_test::uniform_floats;
using cumnist_test::Workspace;

constexpr ImageLayout kNchw = ImageLayout::Nchw;
constexpr ImageLayout kBlocked = ImageLayout::Nchw16c;

// `v`, a batch of n images of c channels and `plane` positions in layout `from`, in layout `to`
// (ops.h: element (c, p) at c·plane + p in NCHW, at (c/B)·plane·B + p·B + c mod B with blocks of B).
template <class T>
std::vector<T> relayout(const std::vector<T>& v, int n, int c, int plane, ImageLayout from, ImageLayout to) {
    auto offset = [&](ImageLayout l, int ch, int p) {
        const int b = cumnist::channel_block(l);
        return (static_cast<std::size_t>(ch / b) * plane + p) * b + ch % b;
    };
    std::vector<T> out(v.size());
    const std::size_t image = static_cast<std::size_t>(c) * plane;
    for (int i = 0; i < n; ++i)
        for (int ch = 0; ch < c; ++ch)
            for (int p = 0; p < plane; ++p) out[i * image + offset(to, ch, p)] = v[i * image + offset(from, ch, p)];
    return out;
}

// The same bits (+0 and −0 differ, NaNs must match bit for bit).
template <class T>
::testing::AssertionResult same_bits(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
    if (got.size() != want.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
    for (std::size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
            return ::testing::AssertionFailure() << what << ": element " << i << " is " << got[i] << ", want "
                                                 << want[i] << " (" << got.size() << " elements)";
    return ::testing::AssertionSuccess();
}

// The layouts a tensor of `channels` channels can be in.
std::vector<ImageLayout> layouts_for(int channels) {
    std::vector<ImageLayout> out;
    for (ImageLayout l : {kNchw, ImageLayout::Nchw8c, ImageLayout::Nchw16c})
        if (channels % cumnist::channel_block(l) == 0) out.push_back(l);
    return out;
}

// ================================================================================================
// Convolutions
// ================================================================================================

struct ConvCase {
    const char* name;
    int n, in_c, h, w, out_c, k, stride;
    bool same;
    Activation act;
};

const std::vector<ConvCase> kConvCases = {
    {"C16to32_5x7_Same_Relu", 3, 16, 5, 7, 32, 3, 1, true, Activation::Relu},
    {"C32to16_9x9_Stride2", 2, 32, 9, 9, 16, 3, 2, false, Activation::None},
    {"C1to16_6x6_Same_Relu", 33, 1, 6, 6, 16, 3, 1, true, Activation::Relu},  // only the output blocked
    {"C16to3_4x4_Tanh", 1, 16, 4, 4, 3, 2, 1, false, Activation::Tanh},       // only the input blocked
    {"C8to24_5x5_Same_Relu", 2, 8, 5, 5, 24, 3, 1, true, Activation::Relu},   // 8c only
    {"C32to64_14x14", 4, 32, 14, 14, 64, 3, 1, true, Activation::Relu},
    {"C32to16_14x14_Preset", 4, 32, 14, 14, 16, 3, 1, true, Activation::Relu},  // the cnn preset's conv2
};

class ConvLayouts : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvLayouts, EveryDirectionGivesTheNchwBits) {
    const ConvCase c = GetParam();
    Conv2dGeometry g;
    g.n = c.n, g.in_c = c.in_c, g.in_h = c.h, g.in_w = c.w, g.out_c = c.out_c, g.k_h = g.k_w = c.k;
    g.stride_h = g.stride_w = c.stride;
    if (c.same) g.pad_top = g.pad_left = (c.k - 1) / 2, g.pad_bottom = g.pad_right = c.k / 2;
    const int in_plane = g.in_h * g.in_w, out_plane = g.out_h() * g.out_w();
    const std::size_t x_n = static_cast<std::size_t>(g.n) * g.in_size(), y_n = static_cast<std::size_t>(g.n) * g.out_size();
    const std::vector<float> xh = uniform_floats(x_n, -1.0f, 1.0f, 5101);
    const std::vector<float> wh = uniform_floats(static_cast<std::size_t>(g.out_c) * g.filter_size(), -0.5f, 0.5f, 5102);
    const std::vector<float> bh = uniform_floats(static_cast<std::size_t>(g.out_c), -0.5f, 0.5f, 5103);
    const std::vector<float> dyh = uniform_floats(y_n, -1.0f, 1.0f, 5104);
    const Buffer<float> w = Buffer<float>::from_host(wh, Device::Cpu), b = Buffer<float>::from_host(bh, Device::Cpu);
    const Workspace ws = make_workspace(g, Device::Cpu);  // (only a first layer's loop needs one on the CPU)

    struct Results {
        std::vector<float> y, dx, dw, db, dx_data, dw_filter, dw_first, db_first;
    };
    auto run = [&](ImageLayout src, ImageLayout dst) {
        Conv2dGeometry gl = g;
        gl.src_layout = src, gl.dst_layout = dst;
        const Buffer<float> x = Buffer<float>::from_host(relayout(xh, g.n, g.in_c, in_plane, kNchw, src), Device::Cpu);
        const Buffer<float> dy = Buffer<float>::from_host(relayout(dyh, g.n, g.out_c, out_plane, kNchw, dst), Device::Cpu);
        Buffer<float> y(y_n, Device::Cpu), dx(x_n, Device::Cpu), dx2(x_n, Device::Cpu);
        Buffer<float> dw(wh.size(), Device::Cpu), dw2(wh.size(), Device::Cpu), db(bh.size(), Device::Cpu);
        ops::conv2d_forward(y.view(g.n, g.out_size()), x.view(g.n, g.in_size()), w.view(g.out_c, g.filter_size()),
                            b.view(1, g.out_c), gl, ws.view, c.act);
        ops::conv2d_backward(dx.view(g.n, g.in_size()), dw.view(g.out_c, g.filter_size()), db.view(1, g.out_c),
                             dy.view(g.n, g.out_size()), x.view(g.n, g.in_size()), w.view(g.out_c, g.filter_size()), gl,
                             ws.view);
        // Without dx, as a first layer's (on the CPU its own loop where the input channels are few).
        Buffer<float> dw3(wh.size(), Device::Cpu), db3(bh.size(), Device::Cpu);
        ops::conv2d_backward({nullptr, 0, 0, Device::Cpu}, dw3.view(g.out_c, g.filter_size()), db3.view(1, g.out_c),
                             dy.view(g.n, g.out_size()), x.view(g.n, g.in_size()), w.view(g.out_c, g.filter_size()), gl,
                             ws.view);
        ops::conv2d_backward_data(dx2.view(g.n, g.in_size()), dy.view(g.n, g.out_size()),
                                  w.view(g.out_c, g.filter_size()), gl, ws.view);
        ops::conv2d_backward_filter(dw2.view(g.out_c, g.filter_size()), dy.view(g.n, g.out_size()),
                                    x.view(g.n, g.in_size()), gl, ws.view);
        Results r;
        r.y = relayout(y.to_host(), g.n, g.out_c, out_plane, dst, kNchw);
        r.dx = relayout(dx.to_host(), g.n, g.in_c, in_plane, src, kNchw);
        r.dx_data = relayout(dx2.to_host(), g.n, g.in_c, in_plane, src, kNchw);
        r.dw = dw.to_host(), r.db = db.to_host(), r.dw_filter = dw2.to_host();
        r.dw_first = dw3.to_host(), r.db_first = db3.to_host();
        return r;
    };
    const Results want = run(kNchw, kNchw);
    for (ImageLayout src : layouts_for(g.in_c))
        for (ImageLayout dst : layouts_for(g.out_c)) {
            if (src == kNchw && dst == kNchw) continue;
            SCOPED_TRACE(std::string("src ") + cumnist::to_string(src) + ", dst " + cumnist::to_string(dst));
            const Results got = run(src, dst);
            EXPECT_TRUE(same_bits(got.y, want.y, "y"));
            EXPECT_TRUE(same_bits(got.dx, want.dx, "dx (conv2d_backward)"));
            EXPECT_TRUE(same_bits(got.dw, want.dw, "dw (conv2d_backward)"));
            EXPECT_TRUE(same_bits(got.db, want.db, "db (conv2d_backward)"));
            EXPECT_TRUE(same_bits(got.dx_data, want.dx_data, "dx (conv2d_backward_data)"));
            EXPECT_TRUE(same_bits(got.dw_filter, want.dw_filter, "dw (conv2d_backward_filter)"));
            EXPECT_TRUE(same_bits(got.dw_first, want.dw_first, "dw (conv2d_backward without dx)"));
            EXPECT_TRUE(same_bits(got.db_first, want.db_first, "db (conv2d_backward without dx)"));
        }
}

// A first layer's backward without dx (on the CPU cumnist's own loop for few input channels)
// gives the same bits on one thread as on all of them (ops.h).
// The first-layer loop shares the images between the threads and adds their sums in image order:
// the same bits on one thread and on all, for one group of output channels (16) and for two, and
// for a batch whose per-image sums do not fit the workspace at once (summed a chunk at a time).
TEST(ConvLayouts, FirstLayerBackwardIsTheSameOnAnyThreadCount) {
    struct Case {
        int n, out_c, k;
    };
    for (const Case c : {Case{9, 32, 3}, Case{33, 16, 3}, Case{1, 8, 5}, Case{400, 32, 7}}) {
        SCOPED_TRACE(testing::Message() << c.n << " images, " << c.out_c << " filters of " << c.k << "x" << c.k);
        Conv2dGeometry g;
        g.n = c.n, g.in_c = 1, g.in_h = g.in_w = 28, g.out_c = c.out_c, g.k_h = g.k_w = c.k;
        g.pad_top = g.pad_left = g.pad_bottom = g.pad_right = c.k / 2;
        const std::vector<float> xh = uniform_floats(static_cast<std::size_t>(g.n) * g.in_size(), 0.0f, 1.0f, 5111);
        const std::vector<float> dyh = uniform_floats(static_cast<std::size_t>(g.n) * g.out_size(), -1.0f, 1.0f, 5112);
        const Buffer<float> x = Buffer<float>::from_host(xh, Device::Cpu), dy = Buffer<float>::from_host(dyh, Device::Cpu);
        const Buffer<float> w(static_cast<std::size_t>(g.out_c) * g.filter_size(), Device::Cpu);
        Workspace ws = make_workspace(g, Device::Cpu);
        ASSERT_GT(ws.buffer.size(), 0u) << "the first-layer loop keeps its per-image sums in the workspace";
        const int before = omp_get_max_threads();
        auto run = [&](int threads) {
            omp_set_num_threads(threads);
            Buffer<float> dw(w.size(), Device::Cpu), db(static_cast<std::size_t>(g.out_c), Device::Cpu);
            ops::conv2d_backward({nullptr, 0, 0, Device::Cpu}, dw.view(g.out_c, g.filter_size()), db.view(1, g.out_c),
                                 dy.view(g.n, g.out_size()), x.view(g.n, g.in_size()), w.view(g.out_c, g.filter_size()),
                                 g, ws.view);
            std::vector<float> out = dw.to_host();
            const std::vector<float> b = db.to_host();
            out.insert(out.end(), b.begin(), b.end());
            return out;
        };
        const std::vector<float> one = run(1), many = run(std::max(2, before));
        omp_set_num_threads(before);
        EXPECT_TRUE(same_bits(many, one, "dw and db, all threads vs one"));
        // The sums themselves: against the double reference's filter gradient.
        const ref::Tensor4 rdy = ref::Tensor4::from_float(dyh, g.n, g.out_c, g.out_h(), g.out_w());
        const ref::Tensor4 rx = ref::Tensor4::from_float(xh, g.n, g.in_c, g.in_h, g.in_w);
        const ref::Tensor4 dw_want = ref::conv2d_backward_filter(rdy, rx, g.k_h, g.k_w, 1, 1, ref::pad_same(g.in_h, c.k, 1),
                                                                 ref::pad_same(g.in_w, c.k, 1));
        const std::vector<float> dw_got(one.begin(), one.begin() + static_cast<std::ptrdiff_t>(w.size()));
        EXPECT_TRUE(all_close(dw_got, dw_want.data, reduction_tolerance(g.n * g.out_h() * g.out_w()), "dw"));
        // A workspace short of what conv2d_workspace_bytes asks for is refused, not overrun.
        expect_rejected(
            [&] {
                Buffer<float> dw(w.size(), Device::Cpu), db(static_cast<std::size_t>(g.out_c), Device::Cpu);
                ops::conv2d_backward({nullptr, 0, 0, Device::Cpu}, dw.view(g.out_c, g.filter_size()),
                                     db.view(1, g.out_c), dy.view(g.n, g.out_size()), x.view(g.n, g.in_size()),
                                     w.view(g.out_c, g.filter_size()), g,
                                     ws.buffer.view(1, static_cast<int>(ws.buffer.size()) - 1));
            },
            "conv2d_backward", "workspace");
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ConvLayouts, ::testing::ValuesIn(kConvCases),
                         [](const ::testing::TestParamInfo<ConvCase>& param_info) { return std::string(param_info.param.name); });

// ================================================================================================
// Max pooling
// ================================================================================================

struct PoolCase {
    const char* name;
    int n, c, h, w, kh, kw, sh, sw;
};

const std::vector<PoolCase> kPoolCases = {
    {"K2S2_28x28_Tiled", 3, 32, 28, 28, 2, 2, 2, 2},       // every input in exactly one window
    {"K2S2_28x28_Threads", 24, 32, 28, 28, 2, 2, 2, 2},    // large enough for the parallel loops
    {"K2S2_7x9_Remainder", 2, 16, 7, 9, 2, 2, 2, 2},       // a last row and column in no window
    {"K3S2_7x9_Overlap", 2, 16, 7, 9, 3, 3, 2, 2},         // shared maxima, added in window order
    {"K2S3_8x8_Gaps", 1, 16, 8, 8, 2, 2, 3, 3},            // disjoint windows with gaps between
    {"K3x2S1x2_5x6_Overlap", 2, 32, 5, 6, 3, 2, 1, 2},
    {"K1S1_3x3_Identity", 1, 16, 3, 3, 1, 1, 1, 1},
    {"K2S2_6x6_EightChannels", 2, 8, 6, 6, 2, 2, 2, 2},    // nChw8c only
    {"K3S2_7x7_24Channels_Overlap", 1, 24, 7, 7, 3, 3, 2, 2},
};

class PoolLayouts : public ::testing::TestWithParam<PoolCase> {};

TEST_P(PoolLayouts, ForwardArgmaxAndBackwardGiveTheNchwBits) {
    const PoolCase c = GetParam();
    Pool2dGeometry g;
    g.n = c.n, g.c = c.c, g.in_h = c.h, g.in_w = c.w, g.k_h = c.kh, g.k_w = c.kw, g.stride_h = c.sh, g.stride_w = c.sw;
    const int in_plane = g.in_h * g.in_w, out_plane = g.out_h() * g.out_w();
    const std::size_t x_n = static_cast<std::size_t>(g.n) * g.in_size(), y_n = static_cast<std::size_t>(g.n) * g.out_size();
    // Values from {−0, +0, 1, 2} (ties in nearly every window, between zeros of both signs too)
    // and some NaNs; dy with zeros of both signs, so that where 0 + dy and a plain 0 are written
    // matters to the bits.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<uint8_t> levels = uniform_bytes(x_n, 0, 4, 5201);
    std::vector<float> xh(x_n);
    for (std::size_t i = 0; i < x_n; ++i) {
        const float table[5] = {-0.0f, 0.0f, 1.0f, 2.0f, nan};
        xh[i] = table[levels[i]];
    }
    std::vector<float> dyh = uniform_floats(y_n, -1.0f, 1.0f, 5202);
    const std::vector<uint8_t> zeros = uniform_bytes(y_n, 0, 3, 5203);
    for (std::size_t i = 0; i < y_n; ++i)
        if (zeros[i] == 0) dyh[i] = -0.0f;
        else if (zeros[i] == 1) dyh[i] = 0.0f;

    struct Results {
        std::vector<float> y, dx, gated_dx;
        std::vector<int32_t> argmax;
    };
    auto run = [&](ImageLayout in, ImageLayout out) {
        Pool2dGeometry gl = g;
        gl.in_layout = in, gl.out_layout = out;
        const Buffer<float> x = Buffer<float>::from_host(relayout(xh, g.n, g.c, in_plane, kNchw, in), Device::Cpu);
        const Buffer<float> dy = Buffer<float>::from_host(relayout(dyh, g.n, g.c, out_plane, kNchw, out), Device::Cpu);
        Buffer<float> y = Buffer<float>::from_host(std::vector<float>(y_n, nan), Device::Cpu);
        Buffer<int32_t> argmax = Buffer<int32_t>::from_host(std::vector<int32_t>(y_n, -1), Device::Cpu);
        Buffer<float> dx = Buffer<float>::from_host(std::vector<float>(x_n, nan), Device::Cpu);  // all overwritten
        ops::maxpool2d_forward(y.view(g.n, g.out_size()), argmax.view(g.n, g.out_size()), x.view(g.n, g.in_size()), gl);
        ops::maxpool2d_backward(dx.view(g.n, g.in_size()), dy.view(g.n, g.out_size()), argmax.view(g.n, g.out_size()),
                                gl);
        Buffer<float> gated = Buffer<float>::from_host(std::vector<float>(x_n, nan), Device::Cpu);
        ops::maxpool2d_backward(gated.view(g.n, g.in_size()), dy.view(g.n, g.out_size()),
                                argmax.view(g.n, g.out_size()), gl, y.view(g.n, g.out_size()));
        Results r;
        r.gated_dx = relayout(gated.to_host(), g.n, g.c, in_plane, in, kNchw);
        r.y = relayout(y.to_host(), g.n, g.c, out_plane, out, kNchw);
        r.argmax = relayout(argmax.to_host(), g.n, g.c, out_plane, out, kNchw);
        r.dx = relayout(dx.to_host(), g.n, g.c, in_plane, in, kNchw);
        return r;
    };
    const Results want = run(kNchw, kNchw);
    // The ReLU gate gives the bits of the ReLU's own backward (saved = x) run after the plain one.
    {
        Buffer<float> dx = Buffer<float>::from_host(want.dx, Device::Cpu);
        const Buffer<float> x = Buffer<float>::from_host(xh, Device::Cpu);
        ops::act_dropout_backward(dx.view(g.n, g.in_size()), dx.view(g.n, g.in_size()), x.view(g.n, g.in_size()),
                                  Activation::Relu, {}, nullptr);
        EXPECT_TRUE(same_bits(want.gated_dx, dx.to_host(), "dx with the ReLU gate, NCHW"));
    }
    for (ImageLayout in : layouts_for(g.c))
        for (ImageLayout out : layouts_for(g.c)) {
            if (in == kNchw && out == kNchw) continue;
            SCOPED_TRACE(std::string("in ") + cumnist::to_string(in) + ", out " + cumnist::to_string(out));
            const Results got = run(in, out);
            EXPECT_TRUE(same_bits(got.y, want.y, "y"));
            EXPECT_EQ(got.argmax, want.argmax) << "argmax";
            EXPECT_TRUE(same_bits(got.dx, want.dx, "dx"));
            EXPECT_TRUE(same_bits(got.gated_dx, want.gated_dx, "dx with the ReLU gate"));
        }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PoolLayouts, ::testing::ValuesIn(kPoolCases),
                         [](const ::testing::TestParamInfo<PoolCase>& param_info) { return std::string(param_info.param.name); });

// ================================================================================================
// Refusals
// ================================================================================================

TEST(LayoutChecks, BlockedNeedsSixteenChannelsAndTheCpu) {
    Conv2dGeometry g;
    g.n = 1, g.in_c = 8, g.in_h = g.in_w = 4, g.out_c = 16, g.k_h = g.k_w = 3;
    g.src_layout = kBlocked;
    expect_rejected([&] { ops::conv2d_workspace_bytes(g, Device::Cpu); }, "conv2d_workspace_bytes", "multiple of 16");
    Buffer<float> x(16, Device::Cpu), y(64, Device::Cpu), w(16 * 8 * 9, Device::Cpu), b(16, Device::Cpu);
    const MatrixView<uint8_t> none{nullptr, 0, 0, Device::Cpu};
    Conv2dGeometry small = g;
    small.in_c = 1, small.src_layout = kNchw, small.dst_layout = kBlocked, small.out_c = 4;
    expect_rejected(
        [&] {
            ops::conv2d_forward(y.view(1, 16), x.view(1, 16), w.view(4, 9), b.view(1, 4), small, none);
        },
        "conv2d_forward", "multiple of 16");
    // Checked before any GPU call, so this runs without a GPU too.
    Conv2dGeometry gpu = g;
    gpu.in_c = 16;
    expect_rejected([&] { ops::conv2d_workspace_bytes(gpu, Device::Cuda); }, "conv2d_workspace_bytes", "CPU-only");

    Pool2dGeometry p;
    p.n = 1, p.c = 8, p.in_h = p.in_w = 4, p.in_layout = kBlocked;
    Buffer<float> px(32 * 4, Device::Cpu), py(32, Device::Cpu);
    Buffer<int32_t> pa(32, Device::Cpu);
    expect_rejected([&] { ops::maxpool2d_forward(py.view(1, 32), pa.view(1, 32), px.view(1, 128), p); },
                    "maxpool2d_forward", "multiple of 16");
    expect_rejected([&] { ops::maxpool2d_backward(px.view(1, 128), py.view(1, 32), pa.view(1, 32), p); },
                    "maxpool2d_backward", "multiple of 16");
}

// ================================================================================================
// The model
// ================================================================================================

constexpr const char* kConvConvPoolPool = "conv16k3same,relu,conv32k3same,relu,pool2,pool2,flatten,dense10";

cumnist::ModelSpec parse(const char* layers, cumnist::Shape input = {1, 28, 28}, int classes = 10) {
    return cumnist::parse_model(layers, input, classes);
}

TEST(ModelLayouts, BlockedOnlyBetweenConvolutionsAndPoolingsOnTheCpu) {
    using V = std::vector<ImageLayout>;
    // cnn: conv1+relu, pool1, conv2+relu, pool2 (then flatten), dropout, dense128+relu+dropout,
    // dense10. Between conv1 and pool2 the layout conv1 writes and conv2 reads on this CPU.
    const cumnist::ModelSpec cnn = parse("cnn");
    Conv2dGeometry conv1 = cumnist::conv_geometry(cnn.layers[0], cnn.input);
    Conv2dGeometry conv2 = cumnist::conv_geometry(cnn.layers[3], cumnist::Shape{32, 14, 14});
    conv1.n = conv2.n = 1;
    const ImageLayout blocked = ops::conv2d_preferred_layouts(conv1, Device::Cpu).dst;
    EXPECT_EQ(ops::conv2d_preferred_layouts(conv2, Device::Cpu).src, blocked);
    // oneDNN's direct convolutions on AVX2 and AVX-512 work in nChw8c or nChw16c.
    if (__builtin_cpu_supports("avx2")) {
        EXPECT_NE(blocked, kNchw) << "no blocked layout on a CPU with AVX2";
    }
    std::cout << "this CPU's convolutions work in " << cumnist::to_string(blocked) << "\n";
    EXPECT_EQ(Model(cnn, Device::Cpu).output_layouts(), (V{blocked, blocked, blocked, kNchw, kNchw, kNchw, kNchw}));
    EXPECT_EQ(Model(cnn, Device::Cpu, ActivationLayouts::Nchw).output_layouts(), V(7, kNchw));
    // Three channels fill no block: NCHW.
    EXPECT_EQ(Model(parse("conv3k3,relu,pool2,conv3k3,flatten,dense10"), Device::Cpu).output_layouts(), V(4, kNchw));
    // A standalone activation or dropout between reads NCHW; so does a dense layer.
    const cumnist::ModelSpec standalone = parse("conv16k3,pool2,relu,conv16k3,dropout0.5,pool2,flatten,dense10");
    Conv2dGeometry c16 = cumnist::conv_geometry(standalone.layers[0], standalone.input);
    c16.n = 1;
    EXPECT_EQ(Model(standalone, Device::Cpu).output_layouts(),
              (V{ops::conv2d_preferred_layouts(c16, Device::Cpu).dst, kNchw, kNchw, kNchw, kNchw, kNchw, kNchw}));
    EXPECT_EQ(Model(parse("mlp"), Device::Cpu).output_layouts(), V(3, kNchw));
    // Two convolutions in a row, and two poolings: the blocked layout passes through both.
    EXPECT_EQ(Model(parse(kConvConvPoolPool), Device::Cpu).output_layouts(),
              (V{blocked, blocked, blocked, kNchw, kNchw}));
}

// A training pass (dropout on) and an inference pass of the cnn preset, and of a net with
// overlapping pooling, blocked and all-NCHW: the same logits and gradients, bit for bit.
TEST(ModelLayouts, BlockedModelGivesTheNchwModelsBits) {
    for (const char* layers :
         {"cnn", "conv16k3same,relu,pool3s1,conv32k3,tanh,pool2,flatten,dropout0.5,dense10", kConvConvPoolPool}) {
        SCOPED_TRACE(layers);
        const cumnist::ModelSpec spec = parse(layers);
        constexpr int n = 5;
        const std::vector<float> xh = uniform_floats(static_cast<std::size_t>(n) * spec.inputs(), 0.0f, 1.0f, 5301);
        const std::vector<uint8_t> labels = uniform_bytes(n, 0, 9, 5302);
        const std::vector<float> params = cumnist::glorot_uniform_init(spec, 42);
        const Buffer<float> x = Buffer<float>::from_host(xh, Device::Cpu);
        const Buffer<uint8_t> y = Buffer<uint8_t>::from_host(labels, Device::Cpu);
        const Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{11}, Device::Cpu);
        struct Results {
            std::vector<float> eval_logits, logits, grads;
        };
        auto run = [&](ActivationLayouts layouts) {
            Model model(spec, Device::Cpu, layouts);
            model.parameters().copy_from_host(params.data(), params.size());
            cumnist::Workspace ws(model, n);
            Results r;
            auto host = [](MatrixView<float> v) { return std::vector<float>(v.data, v.data + v.size()); };  // on the CPU
            r.eval_logits = host(model.forward(ws, x.view(n, spec.inputs()), false, 7, step.data()));
            const MatrixView<float> z = model.forward(ws, x.view(n, spec.inputs()), true, 7, step.data());
            r.logits = host(z);
            ops::softmax_xent(ws.dlogits(n), ws.row_loss.view(1, n), ws.row_correct.view(1, n), z, y.view(1, n),
                              1.0f / n);
            model.backward(ws, x.view(n, spec.inputs()), true, 7, step.data());
            r.grads = model.gradients().to_host();
            return r;
        };
        const Results blocked = run(ActivationLayouts::Fastest), plain = run(ActivationLayouts::Nchw);
        EXPECT_TRUE(same_bits(blocked.eval_logits, plain.eval_logits, "inference logits"));
        EXPECT_TRUE(same_bits(blocked.logits, plain.logits, "training logits"));
        EXPECT_TRUE(same_bits(blocked.grads, plain.grads, "gradients"));
    }
}

}  // namespace
