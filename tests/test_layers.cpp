// Layered models (include/cumnist/model.h):
//   - the layer string and the presets: parsing, shapes, parameter layout, JSON round trips, and
//     one clear error naming the offending token for every kind of bad specification;
//   - small convolutional models on every backend against a composition of the double-precision
//     oracle's ops (tests/reference/), forward and backward, with and without dropout masks;
//   - a convolutional model in the trainer: the same seed gives bit-identical parameters.
// CUDA cases are skipped, visibly and with the reason, where no GPU is usable.
//
// Tolerances, each restated where it is used: logits 1e-4 absolute + 1e-4 relative (float
// convolutions and GEMMs of up to ~300 terms through ≤ 4 layers against double); gradients
// 1e-4 · max |g| per tensor (sums of up to n·out_h·out_w ≈ 1,200 float products).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cumnist/buffer.h"
#include "cumnist/data.h"
#include "cumnist/error.h"
#include "cumnist/model.h"
#include "cumnist/ops.h"
#include "cumnist/philox.h"
#include "cumnist/predict.h"
#include "cumnist/trainer.h"
#include "reference/reference.h"
#include "test_support.h"

namespace {

using cumnist::Activation;
using cumnist::Buffer;
using cumnist::Device;
using cumnist::LayerKind;
using cumnist::LayerSpec;
using cumnist::MatrixView;
using cumnist::Model;
using cumnist::ModelSpec;
using cumnist::Padding;
using cumnist::Shape;
using cumnist::Workspace;
namespace ops = cumnist::ops;
using cumnist_test::all_close;
using cumnist_test::scaled_to_max;
using cumnist_test::Tolerance;
using cumnist_test::uniform_bytes;
using cumnist_test::uniform_floats;
using cumnist_test::widen;

// Reads a (possibly device-resident) view back to the host.
template <class T>
std::vector<float> read_back(MatrixView<T> v) {
    std::vector<float> out(v.size());
    if (!out.empty()) cumnist::memory::copy(out.data(), Device::Cpu, v.data, v.device, out.size() * sizeof(float));
    return out;
}

ModelSpec parse(const std::string& text, Shape input = {1, 28, 28}, int classes = 10) {
    return cumnist::parse_model(text, input, classes);
}

// The error `text` gets, or "" when it is accepted.
std::string error_of(const std::string& text, Shape input = {1, 28, 28}, int classes = 10) {
    try {
        parse(text, input, classes);
    } catch (const cumnist::Error& e) {
        return e.what();
    }
    return "";
}

// ---- The layer string ---------------------------------------------------------------------------

TEST(ModelSpec, LayerStringRoundTripsWithShapes) {
    const std::string text = "conv32k3,relu,pool2,conv64k3,relu,pool2,flatten,dropout0.5,dense10";
    const ModelSpec spec = parse(text);
    EXPECT_EQ(spec.layer_string(), text);
    EXPECT_EQ(spec.describe(), text);
    ASSERT_EQ(spec.layers.size(), 9u);
    EXPECT_EQ(spec.layers[0].kind, LayerKind::Conv2D);
    EXPECT_EQ(spec.layers[0].units, 32);
    EXPECT_EQ(spec.layers[0].k_h, 3);
    EXPECT_EQ(spec.layers[0].padding, Padding::Valid);
    EXPECT_EQ(spec.layers[2].kind, LayerKind::MaxPool2D);
    EXPECT_EQ(spec.layers[2].stride_h, 2);  // the window's size unless given
    EXPECT_FLOAT_EQ(spec.layers[7].rate, 0.5f);
    const std::vector<Shape> s = spec.shapes();
    const std::vector<Shape> want = {{32, 26, 26}, {32, 26, 26}, {32, 13, 13}, {64, 11, 11}, {64, 11, 11},
                                     {64, 5, 5},   {1600, 1, 1}, {1600, 1, 1}, {10, 1, 1}};
    ASSERT_EQ(s.size(), want.size());
    for (std::size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s[i], want[i]) << "layer " << i;
    // Parameters: (32·1·9 + 32) + (64·32·9 + 64) + (10·1600 + 10).
    EXPECT_EQ(cumnist::parameter_count(spec), 320u + 18496u + 16010u);
    const auto layout = cumnist::layer_layout(spec);
    ASSERT_EQ(layout.size(), 3u);
    EXPECT_EQ(layout[1].in, 32 * 9);
    EXPECT_EQ(layout[1].out, 64);
    EXPECT_EQ(layout[1].w_offset, 320u);
    EXPECT_EQ(layout[1].b_offset, 320u + 18432u);
    // Forward multiply-adds per image: 26·26·32·9, 11·11·64·288, 1600·10.
    const std::vector<double> macs = cumnist::layer_macs(spec);
    ASSERT_EQ(macs.size(), 3u);
    EXPECT_EQ(macs[0], 26.0 * 26 * 32 * 9);
    EXPECT_EQ(macs[1], 11.0 * 11 * 64 * 288);
    EXPECT_EQ(macs[2], 1600.0 * 10);
}

TEST(ModelSpec, StridesPaddingAndNonSquareWindows) {
    const ModelSpec spec = parse("conv8k3s2same,tanh,conv4k5x3,sigmoid,pool3s2,flatten,dense10");
    EXPECT_EQ(spec.layer_string(), "conv8k3s2same,tanh,conv4k5x3,sigmoid,pool3s2,flatten,dense10");
    const std::vector<Shape> s = spec.shapes();
    EXPECT_EQ(s[0], (Shape{8, 14, 14}));  // same: ceil(28 / 2)
    EXPECT_EQ(s[2], (Shape{4, 10, 12}));  // valid 5x3 on 14x14
    EXPECT_EQ(s[4], (Shape{4, 4, 5}));    // (10 − 3)/2 + 1, (12 − 3)/2 + 1
    EXPECT_EQ(spec.layers[2].k_h, 5);
    EXPECT_EQ(spec.layers[2].k_w, 3);
    // Non-square windows and strides print back as they parse (the stride is left out only when
    // it is the default: 1 for a convolution, the window for pooling).
    for (const char* text : {"pool2x3s2,flatten,dense10", "pool2x3,flatten,dense10", "pool3s2x1,flatten,dense10",
                             "conv4k3x5s2x1same,flatten,dense10", "conv4k3s1x2,flatten,dense10"}) {
        const ModelSpec m = parse(text);
        EXPECT_EQ(m.layer_string(), text);
        EXPECT_TRUE(parse(m.layer_string()) == m) << text;
    }
    EXPECT_EQ(parse("pool2x3s2,flatten,dense10").layers[0].stride_w, 2);
    EXPECT_EQ(parse("pool2x3,flatten,dense10").layers[0].stride_w, 3);
    // A kernel larger than the image is fine with same padding: 5x5 on 3x3 keeps 3x3.
    EXPECT_EQ(parse("conv2k5same,flatten,dense10", {1, 3, 3}).shapes()[0], (Shape{2, 3, 3}));
}

TEST(ModelSpec, PresetsAndTheMlp) {
    // mlp: the MLP the --hidden/--activation/--dropout flags describe, exactly ModelSpec(MlpConfig).
    const ModelSpec mlp = parse("mlp");
    EXPECT_TRUE(mlp == ModelSpec(cumnist::MlpConfig{}));
    EXPECT_EQ(mlp.layer_string(), "dense512,relu,dropout0.2,dense256,relu,dropout0.2,dense10");
    EXPECT_EQ(mlp.describe(), "784-512-256-10 relu, dropout 0.2");
    ASSERT_TRUE(cumnist::as_mlp(mlp).has_value());
    EXPECT_EQ(cumnist::as_mlp(mlp)->hidden, (std::vector<int>{512, 256}));
    EXPECT_FALSE(cumnist::as_mlp(parse("dense64,tanh,dense32,relu,dense10")).has_value());  // mixed activations
    // cnn: its layer string, which reaches the documented accuracy (README).
    const ModelSpec cnn = parse("cnn");
    EXPECT_EQ(cnn.layer_string(), cumnist::cnn_preset());
    EXPECT_FALSE(cumnist::as_mlp(cnn).has_value());
    EXPECT_EQ(cnn.describe(), cnn.layer_string());
}

TEST(ModelSpec, JsonRoundTrip) {
    for (const char* text : {"cnn", "mlp", "conv8k3s2same,tanh,conv4k5x3,sigmoid,pool3s2,flatten,dropout0.3,dense10",
                             "dense7,sigmoid,dense10"}) {
        SCOPED_TRACE(text);
        const ModelSpec spec = parse(text);
        const nlohmann::json j = cumnist::model_to_json(spec);
        const ModelSpec back = cumnist::model_from_json(nlohmann::json::parse(j.dump()));
        EXPECT_TRUE(back == spec) << back.layer_string();
        EXPECT_EQ(j.at("input"), nlohmann::json({1, 28, 28}));
    }
    const nlohmann::json conv = cumnist::model_to_json(parse("conv8k3s2same,flatten,dense10")).at("layers")[0];
    EXPECT_EQ(conv, nlohmann::json({{"type", "conv2d"},
                                    {"filters", 8},
                                    {"kernel", {3, 3}},
                                    {"stride", {2, 2}},
                                    {"padding", "same"}}));
}

TEST(ModelSpec, BadSpecificationsNameTheTokenAndWhy) {
    struct Case {
        std::string text, expected;
        Shape input{1, 28, 28};
    };
    const std::vector<Case> cases = {
        {"gelu,dense10", "model: 'gelu': unknown layer"},
        {"dense0", "model: 'dense0': the number of units must be in [1, 65536], got 0"},
        {"dense-5", "model: 'dense-5': expected dense<units>"},
        {"conv0k3,flatten,dense10", "model: 'conv0k3': the number of filters must be in [1, 4096], got 0"},
        {"conv8k0,flatten,dense10", "model: 'conv8k0': the window must be in [1, 64] on each side, got 0x0"},
        {"conv8,flatten,dense10", "model: 'conv8': expected conv<filters>k<kernel>"},
        {"conv8k3s0,flatten,dense10", "model: 'conv8k3s0': the stride must be in [1, 64], got 0"},
        {"conv8k3pad,flatten,dense10", "model: 'conv8k3pad': unexpected 'pad'"},
        {"pool0,flatten,dense10", "model: 'pool0': the window must be in [1, 64]"},
        {"dropout1.5,dense10", "model: 'dropout1.5': the rate must be in [0, 1), got 1.5"},
        {"dropoutx,dense10", "model: 'dropoutx': expected dropout<rate>"},
        {"dense10,,dense10", "model: empty layer in 'dense10,,dense10'"},
        {"", "model: empty layer in ''"},
        {"conv8k30,flatten,dense10", "model: layer 1 'conv8k30': the 30x30 kernel is larger than its 28x28 input "
                                     "(padding valid; 'same' pads)"},
        // Spatial sizes that shrink to nothing: 28 → 13 → 5 → 1, then a 3x3 window does not fit.
        {"conv4k3s2,conv4k3s2,conv4k3s2,conv4k3,flatten,dense10",
         "model: layer 4 'conv4k3': the 3x3 kernel is larger than its 2x2 input"},
        {"pool4,pool4,pool4,flatten,dense10", "model: layer 3 'pool4': the 4x4 window is larger than its 1x1 input"},
        {"conv8k3,dense10", "model: layer 2 'dense10': dense after a 8x26x26 spatial output needs 'flatten' before it"},
        {"dense32,conv8k3,flatten,dense10",
         "model: layer 2 'conv8k3': needs a (channels, height, width) input, got a flat vector of 32"},
        {"relu,flatten,dropout0.5", "has no layer with parameters (dense or conv)"},
        {"dense5", "model: 'dense5' ends in 5 values per image, expected 10 (one per class: end in dense10)"},
        {"conv10k28", "ends in 10 values per image"},  // 10x1x1, but spatial: flatten first
    };
    for (const Case& c : cases) {
        const std::string what = error_of(c.text, c.input);
        EXPECT_NE(what.find(c.expected), std::string::npos) << "'" << c.text << "' gave: '" << what << "'";
    }
    // And the valid neighbours of those cases are accepted.
    for (const char* ok : {"dense10", "conv8k28,flatten,dense10", "conv4k3s2,conv4k3s2,conv4k3s2,flatten,dense10",
                           "relu,dense10", "dropout0,dense10", "dense10,relu"})
        EXPECT_EQ(error_of(ok), "") << ok;
    EXPECT_NE(error_of("dense10", {1, 28, 28}, 1).find("number of classes must be in [2, 256]"), std::string::npos);
}

// ---- Small convolutional models against the reference -------------------------------------------

// The reference model: the spec's layers applied one by one with the oracle's double ops on
// (n, c, h, w) tensors (flat layers are (n, size, 1, 1)). It reads only the spec and the
// parameters, nothing of cumnist's implementation.
struct RefNet {
    ModelSpec spec;
    std::vector<ref::Tensor4> w;         // per layer with parameters: (out, in, kh, kw); dense (out, in, 1, 1)
    std::vector<std::vector<double>> b;  // (out)
};

ref::Act ref_act(Activation a) {
    switch (a) {
        case Activation::None: return ref::Act::None;
        case Activation::Relu: return ref::Act::Relu;
        case Activation::Sigmoid: return ref::Act::Sigmoid;
        case Activation::Tanh: return ref::Act::Tanh;
    }
    return ref::Act::None;
}

ref::Pad1 pad_of(const LayerSpec& l, int in, int k, int stride) {
    return l.padding == Padding::Same ? ref::pad_same(in, k, stride) : ref::pad_valid(in, k, stride);
}

ref::Tensor4 reshaped(ref::Tensor4 t, int c, int h, int w) {
    t.c = c, t.h = h, t.w = w;
    return t;
}

struct RefPass {
    std::vector<ref::Tensor4> out;  // per layer of the spec: its output
    ref::XentResult xent;
};

// masks[i]: the keep mask (one byte per output element) of spec layer i when it is an active dropout.
RefPass ref_forward(const RefNet& net, const ref::Tensor4& x, const std::vector<int>& labels,
                    const std::vector<std::vector<uint8_t>>& masks) {
    RefPass pass;
    ref::Tensor4 t = x;
    std::size_t p = 0;
    for (std::size_t i = 0; i < net.spec.layers.size(); ++i) {
        const LayerSpec& l = net.spec.layers[i];
        switch (l.kind) {
            case LayerKind::Conv2D:
                t = ref::conv2d(t, net.w[p], net.b[p], l.stride_h, l.stride_w, pad_of(l, t.h, l.k_h, l.stride_h),
                                pad_of(l, t.w, l.k_w, l.stride_w));
                ++p;
                break;
            case LayerKind::Dense: {
                const int in = t.c * t.h * t.w;
                ref::Matrix xm(t.n, in), wm(l.units, in);
                xm.data = t.data;
                wm.data = net.w[p].data;
                ref::Matrix y = ref::matmul(xm, false, wm, true);
                for (int r = 0; r < y.rows; ++r)
                    for (int c = 0; c < y.cols; ++c) y.at(r, c) += net.b[p][c];
                t = ref::Tensor4(t.n, l.units, 1, 1);
                t.data = y.data;
                ++p;
                break;
            }
            case LayerKind::MaxPool2D: t = ref::maxpool2d(t, l.k_h, l.k_w, l.stride_h, l.stride_w); break;
            case LayerKind::Flatten: t = reshaped(t, t.c * t.h * t.w, 1, 1); break;
            case LayerKind::Activation:
                for (double& v : t.data) v = ref::activate(v, ref_act(l.activation));
                break;
            case LayerKind::Dropout:
                if (!masks[i].empty())
                    for (std::size_t e = 0; e < t.data.size(); ++e) t.data[e] *= masks[i][e] / (1.0 - l.rate);
                break;
        }
        pass.out.push_back(t);
    }
    ref::Matrix logits(t.n, t.c);
    logits.data = t.data;
    pass.xent = ref::softmax_xent(logits, labels, 1.0 / t.n);
    return pass;
}

struct RefGradients {
    std::vector<ref::Tensor4> dw;
    std::vector<std::vector<double>> db;
};

RefGradients ref_backward(const RefNet& net, const ref::Tensor4& x, const RefPass& pass,
                          const std::vector<std::vector<uint8_t>>& masks) {
    RefGradients g;
    g.dw.resize(net.w.size());
    g.db.resize(net.b.size());
    const ref::Tensor4& last = pass.out.back();
    ref::Tensor4 d(last.n, last.c, last.h, last.w);
    d.data = pass.xent.dlogits.data;
    std::size_t p = net.w.size();
    for (std::size_t i = net.spec.layers.size(); i-- > 0;) {
        const LayerSpec& l = net.spec.layers[i];
        const ref::Tensor4& in = i > 0 ? pass.out[i - 1] : x;
        const ref::Tensor4& out = pass.out[i];
        switch (l.kind) {
            case LayerKind::Conv2D: {
                --p;
                const ref::Pad1 ph = pad_of(l, in.h, l.k_h, l.stride_h), pw = pad_of(l, in.w, l.k_w, l.stride_w);
                g.dw[p] = ref::conv2d_backward_filter(d, in, l.k_h, l.k_w, l.stride_h, l.stride_w, ph, pw);
                g.db[p] = ref::conv2d_bias_grad(d);
                d = ref::conv2d_backward_data(d, net.w[p], in.h, in.w, l.stride_h, l.stride_w, ph, pw);
                break;
            }
            case LayerKind::Dense: {
                --p;
                const int n_in = in.c * in.h * in.w;
                ref::Matrix dm(d.n, l.units), xm(in.n, n_in), wm(l.units, n_in);
                dm.data = d.data;
                xm.data = in.data;
                wm.data = net.w[p].data;
                g.dw[p] = ref::Tensor4(l.units, n_in, 1, 1);
                g.dw[p].data = ref::matmul(dm, true, xm, false).data;
                g.db[p] = ref::column_sums(dm);
                ref::Tensor4 dx(in.n, in.c, in.h, in.w);
                dx.data = ref::matmul(dm, false, wm, false).data;
                d = dx;
                break;
            }
            case LayerKind::MaxPool2D: d = ref::maxpool2d_backward(d, in, l.k_h, l.k_w, l.stride_h, l.stride_w); break;
            case LayerKind::Flatten: d = reshaped(d, in.c, in.h, in.w); break;
            case LayerKind::Activation:
                for (std::size_t e = 0; e < d.data.size(); ++e)
                    d.data[e] *= ref::activation_derivative_from_output(out.data[e], ref_act(l.activation));
                break;
            case LayerKind::Dropout:
                if (!masks[i].empty())
                    for (std::size_t e = 0; e < d.data.size(); ++e) d.data[e] *= masks[i][e] / (1.0 - l.rate);
                break;
        }
    }
    return g;
}

struct NetCase {
    const char* name;
    const char* layers;
    Shape input;
    int classes;
};

const std::vector<NetCase> kNets = {
    // The preset's shape in small: conv same, relu, pool, flatten, dropout, dense.
    {"conv_same_pool_dropout", "conv3k3same,relu,pool2,flatten,dropout0.3,dense4", {1, 5, 7}, 4},
    // Stride 2, three input channels, tanh and sigmoid fused into convolutions, a non-square kernel.
    {"stride2_tanh_sigmoid", "conv4k3s2,tanh,conv3k2x3,sigmoid,flatten,dense3", {3, 5, 7}, 3},
    // A kernel larger than the image (same padding) on a 3x3 image, seven filters.
    {"kernel_larger_than_image", "conv7k5same,relu,flatten,dense2", {1, 3, 3}, 2},
    // Standalone layers: relu after a pool, dropout before flatten, overlapping pooling windows,
    // dense + tanh fused, and a 1x1 image.
    {"standalone_layers", "conv3k3,pool3s1,relu,dropout0.5,flatten,dense5,tanh,dense2", {1, 6, 6}, 2},
    {"one_pixel", "conv3k1,relu,flatten,dense6,sigmoid,dropout0.2,dense2", {2, 1, 1}, 2},
    // A ReLU + dropout dense layer before an output layer with an activation of its own (which
    // overwrites its ∂loss/∂y in place before the layer before it reads it).
    {"relu_dropout_then_tanh_output", "conv2k3same,relu,flatten,dense7,relu,dropout0.4,dense3,tanh", {1, 4, 4}, 3},
    // Multiples of 16 channels: on the CPU the activations between the convolutions and poolings
    // are channel-blocked (nChw8c or nChw16c); the last pooling writes NCHW for flatten.
    {"blocked_16_channels", "conv16k3same,relu,pool2,conv16k2,relu,pool2,flatten,dropout0.3,dense3", {1, 8, 8}, 3},
    // Blocked with overlapping pooling windows (the general backward), and a blocked pooling input
    // with an NCHW output before flatten.
    {"blocked_overlapping_pool", "conv16k3same,relu,pool3s1,conv16k2,tanh,pool2,flatten,dense2", {2, 6, 6}, 2},
};

using NetParam = std::tuple<Device, NetCase, int>;

class ConvNetVsReference : public ::testing::TestWithParam<NetParam> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(dev()); }
    Device dev() const { return std::get<0>(GetParam()); }
    const NetCase& net() const { return std::get<1>(GetParam()); }
    int batch() const { return std::get<2>(GetParam()); }
    ModelSpec spec() const { return parse(net().layers, net().input, net().classes); }

    // Random parameters (non-zero biases), identical on both sides, written into the model.
    RefNet load_parameters(Model& model) const {
        RefNet r;
        r.spec = spec();
        const std::vector<float> values = uniform_floats(model.parameters().size(), -0.6f, 0.6f, 4001);
        model.parameters().copy_from_host(values.data(), values.size());
        const auto layout = model.layout();
        const std::vector<Shape> shapes = r.spec.shapes();
        Shape in = r.spec.input;
        std::size_t p = 0;
        for (std::size_t i = 0; i < r.spec.layers.size(); ++i) {
            const LayerSpec& l = r.spec.layers[i];
            if (l.kind == LayerKind::Conv2D || l.kind == LayerKind::Dense) {
                const auto& L = layout[p];
                const std::vector<float> w(values.begin() + static_cast<std::ptrdiff_t>(L.w_offset),
                                           values.begin() + static_cast<std::ptrdiff_t>(L.b_offset));
                r.w.push_back(l.kind == LayerKind::Conv2D ? ref::Tensor4::from_float(w, l.units, in.c, l.k_h, l.k_w)
                                                          : ref::Tensor4::from_float(w, l.units, L.in, 1, 1));
                r.b.push_back(widen(std::vector<float>(values.begin() + static_cast<std::ptrdiff_t>(L.b_offset),
                                                       values.begin() + static_cast<std::ptrdiff_t>(L.b_offset + L.out))));
                ++p;
            }
            in = shapes[i];
        }
        return r;
    }

    // The keep masks of each dropout layer (cumnist's dropout spec: stream kDropoutStreamBase + the
    // index of the dropout layer among the model's dropout layers, element i of its (n, size) output).
    std::vector<std::vector<uint8_t>> masks(bool training, uint64_t seed, uint64_t step) const {
        const ModelSpec s = spec();
        const std::vector<Shape> shapes = s.shapes();
        std::vector<std::vector<uint8_t>> out(s.layers.size());
        uint32_t ordinal = 0;
        for (std::size_t i = 0; i < s.layers.size(); ++i) {
            if (s.layers[i].kind != LayerKind::Dropout) continue;
            const uint32_t stream = cumnist::kDropoutStreamBase + ordinal++;
            if (!training) continue;
            const uint32_t threshold = cumnist::dropout_keep_threshold(static_cast<double>(s.layers[i].rate));
            const std::size_t count = static_cast<std::size_t>(batch()) * shapes[i].size();
            for (std::size_t e = 0; e < count; ++e)
                out[i].push_back(cumnist::dropout_keep(seed, stream, step, e, threshold) ? 1 : 0);
        }
        return out;
    }
};

TEST_P(ConvNetVsReference, ForwardAndBackwardMatchTheReference) {
    const int n = batch();
    const ModelSpec s = spec();
    const std::vector<float> xh = uniform_floats(static_cast<std::size_t>(n) * s.inputs(), 0.0f, 1.0f, 4002);
    const std::vector<uint8_t> yh = uniform_bytes(static_cast<std::size_t>(n), 0, s.classes - 1, 4003);
    const ref::Tensor4 xr = ref::Tensor4::from_float(xh, n, s.input.c, s.input.h, s.input.w);
    const std::vector<int> yr(yh.begin(), yh.end());
    Buffer<float> x = Buffer<float>::from_host(xh, dev());
    Buffer<uint8_t> y = Buffer<uint8_t>::from_host(yh, dev());
    constexpr uint64_t kSeed = 0x5EED5EEDull, kStep = 7;
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{kStep}, dev());

    for (const bool training : {false, true}) {
        SCOPED_TRACE(training ? "training (dropout masks)" : "inference");
        Model model(s, dev());
        const RefNet r = load_parameters(model);
        Workspace ws(model, n + 2);  // larger than the batch: only the first n rows may be used
        const auto keep = masks(training, kSeed, kStep);
        const RefPass f = ref_forward(r, xr, yr, keep);
        const MatrixView<float> logits = model.forward(ws, x.view(n, s.inputs()), training, kSeed, step.data());
        // Logits: float convolutions/GEMMs of up to ~300 terms through ≤ 4 layers vs double.
        const std::vector<float> got = read_back(logits);
        EXPECT_TRUE(all_close(got, f.out.back().data, Tolerance{1e-4, 1e-4}, "logits"));

        ops::softmax_xent(ws.dlogits(n), ws.row_loss.view(1, n), ws.row_correct.view(1, n), logits, y.view(1, n),
                          1.0f / static_cast<float>(n));
        model.gradients().copy_from_host(
            std::vector<float>(model.gradients().size(), std::numeric_limits<float>::quiet_NaN()).data(),
            model.gradients().size());  // backward overwrites every gradient
        model.backward(ws, x.view(n, s.inputs()), training, kSeed, step.data());
        const RefGradients g = ref_backward(r, xr, f, keep);
        for (std::size_t p = 0; p < g.dw.size(); ++p) {
            SCOPED_TRACE(::testing::Message() << "layer with parameters " << p);
            // Each gradient element sums up to n·out_h·out_w float products: 1e-4 of the tensor's
            // largest magnitude.
            const std::vector<float> dw = read_back(model.weight(model.gradients(), static_cast<int>(p)));
            const std::vector<float> db = read_back(model.bias(model.gradients(), static_cast<int>(p)));
            EXPECT_TRUE(all_close(dw, g.dw[p].data, scaled_to_max(g.dw[p].data, 1e-4), "dW"));
            EXPECT_TRUE(all_close(db, g.db[p], scaled_to_max(g.db[p], 1e-4), "db"));
        }
    }
}

// A training step's folds (what Trainer runs): the output bias into the loss op, the output
// layer's dx GEMM into the layer before it, each alone and both, give the unfolded step's logits,
// losses and gradients bit for bit, every gradient included (the output bias's from the loss op).
// On the CPU the folded ops run the same ops. On the GPU the folded loss kernel must match too; the
// folded dx forms each element's k-term dot product itself (ascending, fused multiply-adds) where
// cuBLAS forms it in an order of its own, so there the gradients agree to that rounding (the
// gates read the forward's outputs, untouched: dpre is continuous in dh).
TEST_P(ConvNetVsReference, TrainingFoldsChangeNoBit) {
    const int n = batch();
    const ModelSpec s = spec();
    const std::vector<float> xh = uniform_floats(static_cast<std::size_t>(n) * s.inputs(), 0.0f, 1.0f, 4012);
    Buffer<float> x = Buffer<float>::from_host(xh, dev());
    Buffer<uint8_t> y = Buffer<uint8_t>::from_host(uniform_bytes(static_cast<std::size_t>(n), 0, s.classes - 1, 4013), dev());
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{3}, dev());
    const std::vector<Model::StepFolds> variants = {{false, false}, {true, false}, {false, true}, {true, true}};
    std::vector<float> logits[4], loss[4], grads[4];
    std::vector<double> totals[4];
    for (std::size_t v = 0; v < variants.size(); ++v) {
        const Model::StepFolds folds = variants[v];
        SCOPED_TRACE(::testing::Message() << "output_bias " << folds.output_bias << ", output_dx " << folds.output_dx);
        Model model(s, dev());
        const Model::StepFolds allowed = model.step_folds();
        if ((folds.output_bias && !allowed.output_bias) || (folds.output_dx && !allowed.output_dx)) {
            // A fold this net does not allow (an output activation; a layer before the last that
            // is not dense) is refused.
            Workspace ws(model, n);
            if (folds.output_bias && !allowed.output_bias)
                EXPECT_THROW(model.forward(ws, x.view(n, s.inputs()), true, 99, step.data(), folds), cumnist::Error);
            else
                EXPECT_THROW(model.backward(ws, x.view(n, s.inputs()), true, 99, step.data(), folds), cumnist::Error);
            continue;
        }
        load_parameters(model);
        model.gradients().copy_from_host(
            std::vector<float>(model.gradients().size(), std::numeric_limits<float>::quiet_NaN()).data(),
            model.gradients().size());  // every gradient must be written, the folded db too
        Workspace ws(model, n);
        Buffer<double> sums(2, dev());
        sums.zero();
        const MatrixView<float> z = model.forward(ws, x.view(n, s.inputs()), true, 99, step.data(), folds);
        if (folds.output_bias)
            ops::bias_softmax_xent(ws.dlogits(n), model.output_bias(model.gradients()), ws.row_loss.view(1, n),
                                   ws.row_correct.view(1, n), z, model.output_bias(model.parameters()), y.view(1, n),
                                   1.0f / static_cast<float>(n), sums.data());
        else
            ops::softmax_xent(ws.dlogits(n), ws.row_loss.view(1, n), ws.row_correct.view(1, n), z, y.view(1, n),
                              1.0f / static_cast<float>(n), sums.data());
        model.backward(ws, x.view(n, s.inputs()), true, 99, step.data(), folds);
        logits[v] = read_back(z), loss[v] = read_back(ws.row_loss.view(1, n));
        grads[v] = model.gradients().to_host(), totals[v] = sums.to_host();
        if (v == 0) continue;
        EXPECT_EQ(logits[v], logits[0]);
        EXPECT_EQ(loss[v], loss[0]);
        EXPECT_EQ(totals[v], totals[0]);
        if (dev() == Device::Cuda && folds.output_dx) {
            for (const cumnist::LayerLayout& L : model.layout()) {  // each tensor against its own scale
                const std::size_t sizes[2] = {static_cast<std::size_t>(L.in) * L.out, static_cast<std::size_t>(L.out)};
                const std::size_t offsets[2] = {L.w_offset, L.b_offset};
                for (int part = 0; part < 2; ++part) {
                    const auto first = static_cast<std::ptrdiff_t>(offsets[part]);
                    const auto last = first + static_cast<std::ptrdiff_t>(sizes[part]);
                    const std::vector<float> g(grads[v].begin() + first, grads[v].begin() + last);
                    const std::vector<double> want(grads[0].begin() + first, grads[0].begin() + last);
                    EXPECT_TRUE(all_close(g, want, scaled_to_max(want, 1e-5), part == 0 ? "dW" : "db"));
                }
            }
        } else {
            EXPECT_EQ(grads[v], grads[0]);
        }
    }
}

std::string net_param_name(const ::testing::TestParamInfo<NetParam>& info) {
    return cumnist_test::device_label(std::get<0>(info.param)) + "_" + std::get<1>(info.param).name + "_n" +
           std::to_string(std::get<2>(info.param));
}

void PrintTo(const NetCase& c, std::ostream* os) { *os << c.layers; }

INSTANTIATE_TEST_SUITE_P(Layers, ConvNetVsReference,
                         ::testing::Combine(::testing::Values(Device::Cpu, Device::Cuda), ::testing::ValuesIn(kNets),
                                            ::testing::Values(1, 33)),
                         net_param_name);

// Each fold only where it applies: the bias one when the last layer ends in a plain bias (an
// activation or a dropout after the last dense layer keeps that layer's own epilogue); the dx one
// when the last layer is dense with at most 32 outputs and the computing layer before it is dense
// (a standalone layer between them, or a convolution, is not). Asking for either elsewhere is an
// error.
TEST(ModelFold, EachFoldOnlyWhereItApplies) {
    struct Case {
        const char* text;
        bool output_bias, output_dx;
    };
    for (const Case& c : {Case{"mlp", true, true}, Case{"cnn", true, true}, Case{"flatten,dense10,relu", false, false},
                          Case{"flatten,dense10,dropout0.5", false, false}, Case{"flatten,dense64,relu,dense10,tanh", false, true},
                          Case{"conv4k3,relu,flatten,dense10", true, false},
                          Case{"flatten,dense64,dropout0.5,relu,dense10", true, false}}) {
        SCOPED_TRACE(c.text);
        Model model(parse(c.text), Device::Cpu);
        const Model::StepFolds f = model.step_folds();
        EXPECT_EQ(f.output_bias, c.output_bias);
        EXPECT_EQ(f.output_dx, c.output_dx);
        Workspace ws(model, 2);
        Buffer<float> x(2 * 784, Device::Cpu);
        x.zero();
        if (!c.output_bias) {
            EXPECT_THROW(model.forward(ws, x.view(2, 784), true, 1, nullptr, {true, false}), cumnist::Error);
        }
        if (!c.output_dx) {
            EXPECT_THROW(model.backward(ws, x.view(2, 784), true, 1, nullptr, {false, true}), cumnist::Error);
        }
    }
    // Up to 32 outputs for the inline dot products, not more.
    EXPECT_TRUE(Model(parse("flatten,dense64,relu,dense32", {1, 28, 28}, 32), Device::Cpu).step_folds().output_dx);
    EXPECT_FALSE(Model(parse("flatten,dense64,relu,dense33", {1, 28, 28}, 33), Device::Cpu).step_folds().output_dx);
}

// predict() refuses outputs that are not finite rather than report "0 (nan%)": finite parameters
// of 3e38 overflow the logits to Inf.
TEST(Predict, NonFiniteOutputsAreAnError) {
    Model model(parse("dense10", {1, 2, 2}), Device::Cpu);
    const std::vector<float> huge(model.parameters().size(), 3e38f);
    model.parameters().copy_from_host(huge.data(), huge.size());
    try {
        cumnist::predict(model, std::vector<uint8_t>(8, 255), 2);
        ADD_FAILURE() << "predicted from infinite logits";
    } catch (const cumnist::Error& e) {
        EXPECT_NE(std::string(e.what()).find("predict: the model's outputs for image 1 are not finite"),
                  std::string::npos)
            << e.what();
    }
}

// ---- A convolutional model in the trainer -------------------------------------------------------

// 12x12 images of faint noise with one bright 2x2 patch whose position is the label (ten
// positions): a task a small convolutional model learns within a few epochs.
cumnist::Dataset synthetic(int n, uint32_t seed) {
    constexpr int kSide = 12;
    cumnist::Dataset d;
    d.name = "synthetic";
    d.n = n;
    d.rows = kSide;
    d.cols = kSide;
    d.images = uniform_bytes(static_cast<std::size_t>(n) * kSide * kSide, 0, 60, seed);
    d.labels = uniform_bytes(static_cast<std::size_t>(n), 0, 9, seed + 1);
    for (int i = 0; i < n; ++i) {
        const int k = d.labels[i], top = (k / 5) * 6 + 2, left = (k % 5) * 2 + 1;
        for (int dy = 0; dy < 2; ++dy)
            for (int dx = 0; dx < 2; ++dx)
                d.images[(static_cast<std::size_t>(i) * kSide + top + dy) * kSide + left + dx] = 255;
    }
    return d;
}

class ConvNetTraining : public ::testing::TestWithParam<Device> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(GetParam()); }
};

TEST_P(ConvNetTraining, SameSeedGivesBitIdenticalParametersAndTheLossFalls) {
    const cumnist::Dataset train = synthetic(192, 11);
    const ModelSpec spec = parse("conv4k3same,relu,pool2,conv6k3,relu,flatten,dropout0.25,dense10", {1, 12, 12});
    cumnist::TrainConfig t;
    t.device = GetParam();
    t.batch = 16;
    t.eval_batch = 32;
    t.seed = 5;
    cumnist::OptimizerConfig opt;
    opt.lr = 3e-3f;
    auto run = [&](int epochs, std::vector<double>* losses) {
        cumnist::Trainer trainer(spec, opt, t, train);
        for (int e = 1; e <= epochs; ++e) losses->push_back(trainer.train_epoch(e, nullptr).train_loss);
        return trainer.model().parameters().to_host();
    };
    std::vector<double> first, second;
    const std::vector<float> a = run(15, &first), b = run(15, &second);
    EXPECT_EQ(first, second);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin())) << "same seed, different parameters";
    // The patch's position is learnt: the training loss falls far below chance's ln 10 ≈ 2.30.
    EXPECT_LT(first.back(), 0.5 * first.front()) << "loss did not fall: " << first.front() << " → " << first.back();
}

// The captured step of a convolutional model replays exactly what plain launches do, with a short
// last batch (200 = 12·16 + 8, run as plain launches with its own cuDNN plan) and an evaluation of
// another batch size between the epochs.
TEST(ConvNetGraph, ReplayMatchesPlainLaunchesWithAShortBatchAndEvaluation) {
    CUMNIST_SKIP_WITHOUT_GPU();
    const cumnist::Dataset train = synthetic(200, 12), test = synthetic(50, 13);
    const ModelSpec spec = parse("conv4k3same,relu,pool2,conv6k3s2,tanh,dropout0.2,flatten,dense10", {1, 12, 12});
    cumnist::TrainConfig t;
    t.device = Device::Cuda;
    t.batch = 16;
    t.eval_batch = 24;
    std::vector<float> params[2];
    double accuracy[2] = {};
    for (const bool graph : {false, true}) {
        t.use_graph = graph;
        cumnist::Trainer trainer(spec, cumnist::OptimizerConfig{}, t, train);
        const cumnist::ResidentData eval(test, Device::Cuda);
        for (int e = 1; e <= 2; ++e) accuracy[graph] = trainer.train_epoch(e, &eval).test_accuracy;
        params[graph] = trainer.model().parameters().to_host();
        if (graph) {
            EXPECT_GT(trainer.graph_nodes(), 0u) << "no graph was captured: " << trainer.graph_failure();
            EXPECT_EQ(trainer.graph_failure(), "");
        }
    }
    ASSERT_EQ(params[0].size(), params[1].size());
    EXPECT_TRUE(std::equal(params[0].begin(), params[0].end(), params[1].begin())) << "graph replay differs";
    EXPECT_EQ(accuracy[0], accuracy[1]);
}

INSTANTIATE_TEST_SUITE_P(Layers, ConvNetTraining, ::testing::Values(Device::Cpu, Device::Cuda),
                         [](const ::testing::TestParamInfo<Device>& i) { return cumnist_test::device_label(i.param); });

}  // namespace
