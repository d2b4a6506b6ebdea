// The model (include/cumnist/mlp.h) and the optimizers (include/cumnist/optim.h) as wholes:
//   - the flat parameter layout and parameter count, checked against literal numbers;
//   - Glorot-uniform initialisation: determinism, bounds, variance, zero biases;
//   - Mlp::forward and Mlp::backward on every backend against the double-precision oracle
//     (tests/reference/), with dropout off and with the fixed masks of the shared spec (philox.h);
//   - Optimizer::step on every backend against values worked out by hand.
// Parameterised over Device {Cpu, Cuda}; CUDA cases are skipped, visibly and with the reason,
// where no GPU is usable.
//
// Tolerances (DESIGN §4), each restated where it is used:
//   whole-model outputs and gradients: 1e-4 absolute + 1e-4 relative (chains of float GEMMs and
//   reductions over up to 33 terms, compared with double);
//   hand-computed optimizer steps: 1e-6 absolute (a few float roundings of values of size ≤ 2).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include "cumnist/buffer.h"
#include "cumnist/device.h"
#include "cumnist/error.h"
#include "cumnist/model.h"
#include "cumnist/ops.h"
#include "cumnist/optim.h"
#include "cumnist/philox.h"
#include "reference/reference.h"
#include "test_support.h"

namespace {

using cumnist::Activation;
using cumnist::Buffer;
using cumnist::Device;
using cumnist::LayerLayout;
using cumnist::MatrixView;
using cumnist::Model;
using cumnist::MlpConfig;
using cumnist::Workspace;
using cumnist::Optimizer;
using cumnist::OptimizerConfig;
using cumnist::OptimizerKind;
namespace ops = cumnist::ops;
using cumnist_test::all_close;
using cumnist_test::scaled_to_max;
using cumnist_test::Tolerance;
using cumnist_test::uniform_bytes;
using cumnist_test::uniform_floats;
using cumnist_test::widen;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Whole-model forward/backward vs the double reference: every output is a chain of float GEMMs
// (dot products of up to 33 terms), bias additions, activations and, for the gradients, row sums
// over the batch (up to 33 rows). DESIGN §4's GEMM/reduction tolerance.
constexpr Tolerance kModel{1e-4, 1e-4};
// Gradients are small (the 33-33-17-10 sigmoid case's layer-0 dW has max |g| ≈ 4.8e-3, median
// ≈ 7.5e-4), so a fixed 1e-4 would let a 2-13 % error pass. Their tolerance is scaled to the
// tensor: |err| ≤ kGradient · max |g| over the tensor. Each element sums ≤ 33 float products
// whose factors carry the forward pass's rounding through ≤ 3 layers: a few tens of float
// roundings (2⁻²⁴ ≈ 6e-8 each) of the largest magnitudes involved. Measured worst on the CPU:
// 5.2e-7 · max |g|; 1e-5 leaves room for the GPU's other summation order and FMA contraction
// and still catches a gradient off by 0.01 %.
constexpr double kGradient = 1e-5;
// Hand-computed optimizer steps: parameters of size ≤ 2 moved by ≤ 0.2; float keeps ~1.2e-7
// relative, so a few roundings stay well inside 1e-6 absolute.
constexpr Tolerance kOptimizer{1e-6, 0.0};

const std::vector<Device> kDevices = {Device::Cpu, Device::Cuda};

std::string device_param_name(const ::testing::TestParamInfo<Device>& param_info) {
    return cumnist_test::device_label(param_info.param);
}

ref::Act to_ref(Activation a) {
    switch (a) {
        case Activation::None: return ref::Act::None;
        case Activation::Relu: return ref::Act::Relu;
        case Activation::Sigmoid: return ref::Act::Sigmoid;
        case Activation::Tanh: return ref::Act::Tanh;
    }
    return ref::Act::None;
}

// Reads a (possibly device-resident) view back to the host.
template <class T>
std::vector<std::remove_const_t<T>> read_view(MatrixView<T> v) {
    std::vector<std::remove_const_t<T>> out(v.size());
    if (!out.empty()) cumnist::memory::copy(out.data(), Device::Cpu, v.data, v.device, out.size() * sizeof(T));
    return out;
}

// Writes host values into a (possibly device-resident) view.
void write_view(MatrixView<float> v, const std::vector<float>& values) {
    ASSERT_EQ(values.size(), v.size());
    if (!values.empty()) cumnist::memory::copy(v.data, v.device, values.data(), Device::Cpu, values.size() * sizeof(float));
}

std::vector<float> head(const std::vector<float>& v, std::size_t n) {
    return std::vector<float>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
}

MlpConfig make_config(int inputs, std::vector<int> hidden, int classes, Activation act = Activation::Relu,
                      float dropout = 0.2f) {
    MlpConfig c;
    c.inputs = inputs;
    c.hidden = std::move(hidden);
    c.classes = classes;
    c.activation = act;
    c.dropout = dropout;
    return c;
}

// ================================================================================================
// layer_layout / parameter_count
// ================================================================================================

void expect_layout(const std::vector<LayerLayout>& got, const std::vector<LayerLayout>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t l = 0; l < want.size(); ++l) {
        SCOPED_TRACE(::testing::Message() << "layer " << l);
        EXPECT_EQ(got[l].in, want[l].in);
        EXPECT_EQ(got[l].out, want[l].out);
        EXPECT_EQ(got[l].w_offset, want[l].w_offset);
        EXPECT_EQ(got[l].b_offset, want[l].b_offset);
    }
}

TEST(LayerLayout, DefaultConfigIs784_512_256_10) {
    const MlpConfig c;  // the defaults
    EXPECT_EQ(c.n_layers(), 3);
    EXPECT_EQ(c.describe(), "784-512-256-10 relu, dropout 0.2");
    // Each layer: weights (out, in) then bias (out), back to back.
    //   layer 0: w 784·512 = 401408 at 0,      b at 401408, ends 401408 + 512 = 401920
    //   layer 1: w 512·256 = 131072 at 401920, b at 532992, ends 532992 + 256 = 533248
    //   layer 2: w 256·10  =   2560 at 533248, b at 535808, ends 535808 + 10  = 535818
    expect_layout(cumnist::layer_layout(c), {{784, 512, 0, 401408}, {512, 256, 401920, 532992}, {256, 10, 533248, 535808}});
    EXPECT_EQ(cumnist::parameter_count(c), 535818u);
}

TEST(LayerLayout, NoHiddenLayer) {
    // 7 → 3: w 7·3 = 21 at 0, b at 21, ends 24.
    const MlpConfig c = make_config(7, {}, 3);
    EXPECT_EQ(c.n_layers(), 1);
    expect_layout(cumnist::layer_layout(c), {{7, 3, 0, 21}});
    EXPECT_EQ(cumnist::parameter_count(c), 24u);
}

TEST(LayerLayout, HiddenLayerOfOneUnit) {
    // 7 → 1 → 3: layer 0 w 7·1 = 7 at 0, b at 7, ends 8; layer 1 w 1·3 = 3 at 8, b at 11, ends 14.
    const MlpConfig c = make_config(7, {1}, 3);
    EXPECT_EQ(c.n_layers(), 2);
    expect_layout(cumnist::layer_layout(c), {{7, 1, 0, 7}, {1, 3, 8, 11}});
    EXPECT_EQ(cumnist::parameter_count(c), 14u);
}

TEST(LayerLayout, OddHiddenSizes) {
    // 5 → 33 → 7 → 10:
    //   layer 0: w 5·33 = 165 at 0,   b at 165, ends 165 + 33 = 198
    //   layer 1: w 33·7 = 231 at 198, b at 429, ends 429 + 7  = 436
    //   layer 2: w 7·10 =  70 at 436, b at 506, ends 506 + 10 = 516
    const MlpConfig c = make_config(5, {33, 7}, 10, Activation::Sigmoid, 0.5f);
    EXPECT_EQ(c.n_layers(), 3);
    EXPECT_EQ(c.describe(), "5-33-7-10 sigmoid, dropout 0.5");
    expect_layout(cumnist::layer_layout(c), {{5, 33, 0, 165}, {33, 7, 198, 429}, {7, 10, 436, 506}});
    EXPECT_EQ(cumnist::parameter_count(c), 516u);
}

// ================================================================================================
// glorot_uniform_init
// ================================================================================================

TEST(GlorotInit, DeterministicPerSeedAndSeedsDiffer) {
    for (const MlpConfig& c : {MlpConfig{}, make_config(7, {}, 3), make_config(7, {1}, 3), make_config(5, {33, 7}, 10)}) {
        SCOPED_TRACE(c.describe());
        const std::vector<float> a = cumnist::glorot_uniform_init(c, 42);
        const std::vector<float> b = cumnist::glorot_uniform_init(c, 42);
        const std::vector<float> other = cumnist::glorot_uniform_init(c, 43);
        const std::vector<float> high = cumnist::glorot_uniform_init(c, 42 + (uint64_t{1} << 32));  // high seed bits
        ASSERT_EQ(a.size(), cumnist::parameter_count(c));
        EXPECT_EQ(a, b) << "same seed, different values";
        // Different seeds: (almost) every weight differs. Biases are zero under every seed.
        std::size_t weights = 0, same_other = 0, same_high = 0;
        for (const LayerLayout& l : cumnist::layer_layout(c)) {
            for (std::size_t i = l.w_offset; i < l.b_offset; ++i) {
                ++weights;
                same_other += a[i] == other[i];
                same_high += a[i] == high[i];
            }
        }
        EXPECT_LE(same_other * 100, weights) << same_other << " of " << weights << " weights equal under seeds 42 and 43";
        EXPECT_LE(same_high * 100, weights) << same_high << " of " << weights
                                            << " weights equal under seeds 42 and 42 + 2^32";
    }
}

TEST(GlorotInit, BoundsVarianceAndZeroBiases) {
    for (const MlpConfig& c : {MlpConfig{}, make_config(7, {}, 3), make_config(7, {1}, 3), make_config(5, {33, 7}, 10)}) {
        SCOPED_TRACE(c.describe());
        const std::vector<float> p = cumnist::glorot_uniform_init(c, 2024);
        for (const LayerLayout& l : cumnist::layer_layout(c)) {
            SCOPED_TRACE(::testing::Message() << "layer " << l.in << " → " << l.out);
            const double limit = std::sqrt(6.0 / (l.in + l.out));
            const std::size_t n = static_cast<std::size_t>(l.in) * l.out;
            double sum = 0.0, sum_sq = 0.0, lo = HUGE_VAL, hi = -HUGE_VAL;
            std::size_t out_of_range = 0;
            for (std::size_t i = l.w_offset; i < l.w_offset + n; ++i) {
                const double w = p[i];
                out_of_range += !(std::fabs(w) <= limit);
                sum += w, sum_sq += w * w;
                lo = std::min(lo, w), hi = std::max(hi, w);
            }
            EXPECT_EQ(out_of_range, 0u) << "weights outside ±" << limit << " (seen " << lo << " .. " << hi << ")";
            for (int j = 0; j < l.out; ++j) EXPECT_EQ(p[l.b_offset + j], 0.0f) << "bias " << j;
            if (n < 1000) continue;  // too few weights for the statistics below
            // U(−L, L): mean 0, E[w²] = L²/3, Var(w²) = L⁴/5 − L⁴/9 = 4L⁴/45. The sample moments
            // are allowed 6 standard errors (the draws are seeded, so this cannot flake).
            const double count = static_cast<double>(n);
            const double mean = sum / count, mean_sq = sum_sq / count, want_sq = limit * limit / 3.0;
            EXPECT_LE(std::fabs(mean), 6.0 * limit / std::sqrt(3.0 * count)) << "mean " << mean;
            // Relative standard error of the mean of w²: √(4L⁴/45/n)/(L²/3) = √(0.8/n).
            EXPECT_NEAR(mean_sq / want_sq, 1.0, 6.0 * std::sqrt(0.8 / count))
                << "E[w²] " << mean_sq << ", expected L²/3 = " << want_sq;
            // The whole interval is used (not, say, [0, L) or a narrower range).
            EXPECT_LT(lo, -0.99 * limit);
            EXPECT_GT(hi, 0.99 * limit);
        }
    }
}

TEST(GlorotInit, LayersDrawIndependentValues) {
    // 9-9-9: two layers of the same shape (9, 9) and so the same limit L; their weights must not
    // repeat one another (each layer draws its own Philox values).
    const MlpConfig c = make_config(9, {9}, 9);
    const std::vector<float> p = cumnist::glorot_uniform_init(c, 7);
    const auto layout = cumnist::layer_layout(c);
    std::size_t same = 0;
    for (std::size_t i = 0; i < 81; ++i) same += p[layout[0].w_offset + i] == p[layout[1].w_offset + i];
    EXPECT_LT(same, 5u) << "layers 0 and 1 share " << same << " of 81 weights";
}

// ================================================================================================
// Mlp parameters, views and workspace on each device
// ================================================================================================

class MlpParameters : public ::testing::TestWithParam<Device> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(GetParam()); }
};

TEST_P(MlpParameters, FlatBuffersViewsAndWorkspace) {
    const Device dev = GetParam();
    for (const MlpConfig& c : {MlpConfig{}, make_config(7, {}, 3), make_config(7, {1}, 3), make_config(5, {33, 7}, 10)}) {
        SCOPED_TRACE(c.describe());
        Model model(c, dev);
        const std::size_t count = cumnist::parameter_count(c);
        EXPECT_EQ(model.device(), dev);
        ASSERT_EQ(model.parameters().size(), count);
        ASSERT_EQ(model.gradients().size(), count);
        EXPECT_EQ(model.parameters().device(), dev);
        EXPECT_EQ(model.gradients().device(), dev);
        EXPECT_TRUE(all_close(model.parameters().to_host(), std::vector<double>(count, 0.0), {0, 0}, "fresh parameters"));
        EXPECT_TRUE(all_close(model.gradients().to_host(), std::vector<double>(count, 0.0), {0, 0}, "fresh gradients"));

        // The views sit at the layout's offsets, on the model's device, and read back the init.
        const std::vector<float> init = cumnist::glorot_uniform_init(c, 99);
        model.parameters().copy_from_host(init.data(), init.size());
        const auto layout = model.layout();
        ASSERT_EQ(layout.size(), static_cast<std::size_t>(c.n_layers()));
        for (int l = 0; l < c.n_layers(); ++l) {
            SCOPED_TRACE(::testing::Message() << "layer " << l);
            const MatrixView<float> w = model.weight(model.parameters(), l);
            const MatrixView<float> b = model.bias(model.parameters(), l);
            EXPECT_EQ(w.data, model.parameters().data() + layout[l].w_offset);
            EXPECT_EQ(b.data, model.parameters().data() + layout[l].b_offset);
            EXPECT_EQ(w.rows, layout[l].out);
            EXPECT_EQ(w.cols, layout[l].in);
            EXPECT_EQ(b.rows, 1);
            EXPECT_EQ(b.cols, layout[l].out);
            EXPECT_EQ(w.device, dev);
            EXPECT_EQ(b.device, dev);
            const std::vector<float> wh = read_view(w), bh = read_view(b);
            EXPECT_TRUE(std::equal(wh.begin(), wh.end(), init.begin() + static_cast<std::ptrdiff_t>(layout[l].w_offset)));
            EXPECT_TRUE(std::equal(bh.begin(), bh.end(), init.begin() + static_cast<std::ptrdiff_t>(layout[l].b_offset)));
            const MatrixView<float> gw = model.weight(model.gradients(), l);
            EXPECT_EQ(gw.data, model.gradients().data() + layout[l].w_offset);
        }

        // One computing layer per dense layer (activation and dropout fused into it): its output,
        // the output's gradient, and the activation before dropout for a hidden layer with dropout.
        Workspace ws(model, 13);
        EXPECT_EQ(ws.max_batch, 13);
        ASSERT_EQ(ws.y.size(), static_cast<std::size_t>(c.n_layers()));
        ASSERT_EQ(ws.dy.size(), static_cast<std::size_t>(c.n_layers()));
        ASSERT_EQ(ws.aux.size(), static_cast<std::size_t>(c.n_layers()));
        for (int l = 0; l < c.n_layers(); ++l) {
            EXPECT_EQ(ws.y[l].size(), 13u * layout[l].out);
            EXPECT_EQ(ws.dy[l].size(), 13u * layout[l].out);
            EXPECT_EQ(ws.y[l].device(), dev);
            const bool dropped = l + 1 < c.n_layers() && c.dropout > 0.0f;
            EXPECT_EQ(ws.aux[l].size(), dropped ? 13u * layout[l].out : 0u);
        }
        EXPECT_EQ(ws.scratch.size(), 0u);  // no convolution
        EXPECT_EQ(ws.row_loss.size(), 13u);
        EXPECT_EQ(ws.row_correct.size(), 13u);
    }
}

INSTANTIATE_TEST_SUITE_P(Devices, MlpParameters, ::testing::ValuesIn(kDevices),
                         device_param_name);

// Rejected configurations and batches name what is wrong.
void expect_error(const std::function<void()>& call, const std::string& needle) {
    try {
        call();
        ADD_FAILURE() << "accepted, expected a cumnist::Error mentioning '" << needle << "'";
    } catch (const cumnist::Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message does not mention '" << needle << "': " << e.what();
    }
}

TEST(ModelValidation, BadConfigurationsAndBatches) {
    expect_error([] { Model m(make_config(0, {5}, 3), Device::Cpu); }, "input size");
    expect_error([] { Model m(make_config(7, {5}, 1), Device::Cpu); }, "classes");
    expect_error([] { Model m(make_config(7, {5}, 257), Device::Cpu); }, "classes");
    expect_error([] { Model m(make_config(7, {5, 0}, 3), Device::Cpu); }, "hidden");
    expect_error([] { Model m(make_config(7, {5}, 3, Activation::Relu, 1.0f), Device::Cpu); }, "dropout");
    expect_error([] { Model m(make_config(7, {5}, 3, Activation::Relu, -0.1f), Device::Cpu); }, "dropout");
    expect_error([] { Model m(make_config(7, {5}, 3), Device::Cpu); Workspace ws(m, 0); }, "batch");

    Model model(make_config(7, {5}, 3), Device::Cpu);
    Workspace ws(model, 4);
    Buffer<float> x = Buffer<float>::from_host(std::vector<float>(5 * 7, 0.5f), Device::Cpu);
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, Device::Cpu);
    expect_error([&] { model.forward(ws, x.view(5, 7), false, 1, step.data()); }, "exceeds");
}

// A buffer too large for the flat view's int counts is refused, not wrapped around to a prefix
// (the optimizers update the flat view of the parameters): 2^31 bytes, allocated but never touched.
TEST(BufferValidation, FlatViewOfMoreThanIntMaxElementsIsRefused) {
    Buffer<uint8_t> big(cumnist::kMaxViewElements + 1, Device::Cpu);
    expect_error([&] { (void)big.flat(); }, "2147483648 elements has no flat view (at most 2147483647)");
    EXPECT_EQ(big.view(1, 16, cumnist::kMaxViewElements - 15).cols, 16);  // views inside it still work
}

// ================================================================================================
// Whole-model forward and backward against the reference
// ================================================================================================

struct ModelCase {
    const char* name;
    int inputs;
    std::vector<int> hidden;
    int classes;
    Activation activation;
};
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

// Odd shapes: no multiple of a warp or vector width; a layer without hidden units in between, a
// one-unit bottleneck, and a hidden layer wider than the input.
const std::vector<ModelCase> kModelCases = {
    {"in7_h5x4_c3_relu", 7, {5, 4}, 3, Activation::Relu},
    {"in7_h5x4_c3_sigmoid", 7, {5, 4}, 3, Activation::Sigmoid},
    {"in33_h33x17_c10_relu", 33, {33, 17}, 10, Activation::Relu},
    {"in33_h33x17_c10_sigmoid", 33, {33, 17}, 10, Activation::Sigmoid},
    {"in33_h1_c3_sigmoid", 33, {1}, 3, Activation::Sigmoid},
    {"in7_nohidden_c10", 7, {}, 10, Activation::Relu},
};
const std::vector<int> kBatches = {1, 7, 33};

// How a pass is run: inference (dropout configured but off), training with dropout at a few steps,
// and training with a zero rate (no masks at all).
struct DropoutMode {
    const char* name;
    bool training;
    float rate;
    uint64_t step;
};
const std::vector<DropoutMode> kDropoutModes = {
    {"inference, rate 0.2", false, 0.2f, 5},
    {"training, rate 0.2, step 5", true, 0.2f, 5},
    {"training, rate 0.2, step 2^32 + 3", true, 0.2f, (uint64_t{1} << 32) + 3},
    {"training, rate 0", true, 0.0f, 5},
};
constexpr uint64_t kDropoutSeed = 0x9E3779B97F4A7C15ull;  // uses both 32-bit halves of the key

using ModelParam = std::tuple<Device, ModelCase, int>;

std::string model_param_name(const ::testing::TestParamInfo<ModelParam>& info) {
    return cumnist_test::device_label(std::get<0>(info.param)) + "_" + std::get<1>(info.param).name + "_n" +
           std::to_string(std::get<2>(info.param));
}

// One model on the device and the reference holding bit-identical parameters, inputs and labels.
class MlpVsReference : public ::testing::TestWithParam<ModelParam> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(std::get<0>(GetParam())); }

    Device dev() const { return std::get<0>(GetParam()); }
    const ModelCase& model_case() const { return std::get<1>(GetParam()); }
    int batch() const { return std::get<2>(GetParam()); }

    MlpConfig config(float rate) const {
        const ModelCase& mc = model_case();
        return make_config(mc.inputs, mc.hidden, mc.classes, mc.activation, rate);
    }

    // The reference's random parameters (Glorot weights, non-zero biases), rounded to float so that
    // both sides compute with exactly the same values, written into the model through its views.
    ref::RefMlp load_parameters(Model& model) const {
        const MlpConfig c = config(0.0f);
        std::vector<int> sizes = {c.inputs};
        sizes.insert(sizes.end(), c.hidden.begin(), c.hidden.end());
        sizes.push_back(c.classes);
        ref::RefMlp r = ref::RefMlp::random(sizes, to_ref(c.activation), 3001);
        for (int l = 0; l < r.n_layers(); ++l) {
            const std::vector<float> wf = r.w[l].to_float();
            std::vector<float> bf(r.b[l].begin(), r.b[l].end());
            r.w[l] = ref::Matrix::from_float(wf, r.w[l].rows, r.w[l].cols);
            r.b[l] = widen(bf);
            write_view(model.weight(model.parameters(), l), wf);
            write_view(model.bias(model.parameters(), l), bf);
        }
        return r;
    }

    // The keep masks of the shared spec (philox.h), in the reference's explicit format: one byte per
    // element of each hidden layer's (n, out) activation, row-major; element i of layer l at step t
    // is kept iff dropout_keep(seed, kDropoutStreamBase + l, t, i, dropout_keep_threshold(rate)).
    // Empty when no dropout applies.
    std::vector<std::vector<uint8_t>> masks(const DropoutMode& mode, std::size_t* dropped) const {
        *dropped = 0;
        if (!mode.training || mode.rate == 0.0f || model_case().hidden.empty()) return {};
        const uint32_t threshold = cumnist::dropout_keep_threshold(static_cast<double>(mode.rate));
        std::vector<std::vector<uint8_t>> out;
        for (std::size_t l = 0; l < model_case().hidden.size(); ++l) {
            const std::size_t n = static_cast<std::size_t>(batch()) * model_case().hidden[l];
            std::vector<uint8_t> keep(n);
            for (std::size_t i = 0; i < n; ++i) {
                keep[i] = cumnist::dropout_keep(kDropoutSeed, cumnist::kDropoutStreamBase + static_cast<uint32_t>(l),
                                                mode.step, i, threshold)
                              ? 1
                              : 0;
                *dropped += keep[i] == 0;
            }
            out.push_back(std::move(keep));
        }
        return out;
    }

    std::vector<float> inputs() const {
        return uniform_floats(static_cast<std::size_t>(batch()) * model_case().inputs, -1.0f, 1.0f, 3002);
    }
    std::vector<uint8_t> labels() const {
        return uniform_bytes(static_cast<std::size_t>(batch()), 0, model_case().classes - 1, 3003);
    }
};

TEST_P(MlpVsReference, ForwardMatchesReference) {
    const int n = batch();
    const ModelCase& mc = model_case();
    const std::vector<float> xh = inputs();
    const std::vector<uint8_t> yh = labels();
    const ref::Matrix xr = ref::Matrix::from_float(xh, n, mc.inputs);
    const std::vector<int> yr(yh.begin(), yh.end());
    Buffer<float> x = Buffer<float>::from_host(xh, dev());

    for (const DropoutMode& mode : kDropoutModes) {
        SCOPED_TRACE(::testing::Message() << "dropout: " << mode.name);
        Model model(config(mode.rate), dev());
        const ref::RefMlp r = load_parameters(model);
        // A workspace larger than the batch: the model must use only the first n rows.
        Workspace ws(model, n + 3);
        Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{mode.step}, dev());
        std::size_t dropped = 0;
        const auto keep = masks(mode, &dropped);
        const ref::RefForward f = ref::forward(r, xr, yr, keep, static_cast<double>(mode.rate));

        const MatrixView<float> logits = model.forward(ws, x.view(n, mc.inputs), mode.training, kDropoutSeed, step.data());
        EXPECT_EQ(logits.data, ws.y.back().data());
        EXPECT_EQ(logits.rows, n);
        EXPECT_EQ(logits.cols, mc.classes);
        EXPECT_EQ(logits.device, dev());
        // GEMM tolerance (see kModel): float dot products of ≤ 33 terms through ≤ 3 layers.
        EXPECT_TRUE(all_close(read_view(logits), f.logits.data, kModel, "logits"));
        for (std::size_t l = 0; l < mc.hidden.size(); ++l) {
            SCOPED_TRACE(::testing::Message() << "hidden layer " << l);
            const std::size_t size = static_cast<std::size_t>(n) * mc.hidden[l];
            // Dense layer l's output is h (after dropout); the activation a is kept apart from it
            // only when dropout is applied.
            const Buffer<float>& a = keep.empty() ? ws.y[l] : ws.aux[l];
            EXPECT_TRUE(all_close(head(a.to_host(), size), f.act[l].data, kModel, "activation a"));
            if (!keep.empty()) {
                EXPECT_TRUE(all_close(head(ws.y[l].to_host(), size), f.hidden[l].data, kModel, "h (after dropout)"));
            }
        }
        EXPECT_EQ(step.to_host()[0], mode.step) << "forward must not advance the step counter";
        // With ≥ 20 hidden units in the batch, keeping them all has probability ≤ 0.8²⁰ ≈ 1%.
        const int units = n * std::accumulate(mc.hidden.begin(), mc.hidden.end(), 0);
        if (mode.training && mode.rate > 0.0f && units >= 20) {
            EXPECT_GT(dropped, 0u) << "the dropout case drops nothing: the test would not exercise it";
        }
    }
}

TEST_P(MlpVsReference, BackwardMatchesReference) {
    const int n = batch();
    const ModelCase& mc = model_case();
    const std::vector<float> xh = inputs();
    const std::vector<uint8_t> yh = labels();
    const ref::Matrix xr = ref::Matrix::from_float(xh, n, mc.inputs);
    const std::vector<int> yr(yh.begin(), yh.end());
    Buffer<float> x = Buffer<float>::from_host(xh, dev());
    Buffer<uint8_t> y = Buffer<uint8_t>::from_host(yh, dev());

    for (const DropoutMode& mode : kDropoutModes) {
        SCOPED_TRACE(::testing::Message() << "dropout: " << mode.name);
        Model model(config(mode.rate), dev());
        const ref::RefMlp r = load_parameters(model);
        Workspace ws(model, n + 3);
        Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{mode.step}, dev());
        std::size_t dropped = 0;
        const auto keep = masks(mode, &dropped);
        const ref::RefForward f = ref::forward(r, xr, yr, keep, static_cast<double>(mode.rate));
        const ref::RefGrads g = ref::backward(r, xr, yr, f, keep, static_cast<double>(mode.rate));

        const MatrixView<float> logits = model.forward(ws, x.view(n, mc.inputs), mode.training, kDropoutSeed, step.data());
        // ∂loss/∂logits = (p − onehot)/n into ws.dlogits(n), as the trainer does.
        ops::softmax_xent(ws.dlogits(n), ws.row_loss.view(1, n), ws.row_correct.view(1, n), logits,
                          y.view(1, n), 1.0f / static_cast<float>(n));
        // The loss depends on the logits with slope ≤ 1 per component: the model tolerance.
        EXPECT_TRUE(all_close(head(ws.row_loss.to_host(), n), f.xent.row_loss, kModel, "row loss"));
        // backward() overwrites every gradient: start from NaN to show it.
        model.gradients().copy_from_host(std::vector<float>(model.gradients().size(), kNaN).data(),
                                         model.gradients().size());
        model.backward(ws, x.view(n, mc.inputs), mode.training, kDropoutSeed, step.data());

        for (int l = 0; l < config(mode.rate).n_layers(); ++l) {
            SCOPED_TRACE(::testing::Message() << "layer " << l);
            const MatrixView<float> dw = model.weight(model.gradients(), l);
            const MatrixView<float> db = model.bias(model.gradients(), l);
            ASSERT_EQ(dw.rows, g.dw[l].rows);
            ASSERT_EQ(dw.cols, g.dw[l].cols);
            // Scaled to each tensor (see kGradient): dW sums n ≤ 33 products of float values that
            // themselves come out of float GEMMs; db sums n rows.
            EXPECT_TRUE(all_close(read_view(dw), g.dw[l].data, scaled_to_max(g.dw[l].data, kGradient), "dW"));
            EXPECT_TRUE(all_close(read_view(db), g.db[l], scaled_to_max(g.db[l], kGradient), "db"));
        }
        EXPECT_EQ(step.to_host()[0], mode.step) << "backward must not advance the step counter";
    }
}

INSTANTIATE_TEST_SUITE_P(Model, MlpVsReference,
                         ::testing::Combine(::testing::ValuesIn(kDevices), ::testing::ValuesIn(kModelCases),
                                            ::testing::ValuesIn(kBatches)),
                         model_param_name);

// ================================================================================================
// Optimizer::step against hand-computed values
// ================================================================================================
//
// Three parameters w = (1, −2, 0.5) and the gradient g = (0.5, −0.5, 2). The expected values are
// written out as literals, with the arithmetic beside them.

class OptimizerHandComputed : public ::testing::TestWithParam<Device> {
protected:
    void SetUp() override { CUMNIST_SKIP_WITHOUT_DEVICE(GetParam()); }
    Device dev() const { return GetParam(); }
};

const std::vector<float> kW0 = {1.0f, -2.0f, 0.5f};
const std::vector<float> kG = {0.5f, -0.5f, 2.0f};

TEST_P(OptimizerHandComputed, AdamFirstTwoSteps) {
    OptimizerConfig cfg;  // Keras defaults: lr 1e-3, β1 0.9, β2 0.999, ε 1e-7
    ASSERT_EQ(cfg.kind, OptimizerKind::Adam);
    Optimizer opt(cfg, 3, dev());
    ASSERT_EQ(opt.state().size(), 2u);
    EXPECT_EQ(opt.state_names(), (std::vector<std::string>{"adam.m", "adam.v"}));
    Buffer<float> w = Buffer<float>::from_host(kW0, dev());
    Buffer<float> g = Buffer<float>::from_host(kG, dev());
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev());

    // Step 1 (t = 1, from m = v = 0):
    //   m = (1 − 0.9)·g   = 0.1·g   = (0.05, −0.05, 0.2)
    //   v = (1 − 0.999)·g² = 0.001·g² = (0.00025, 0.00025, 0.004)
    //   α = lr·√(1 − 0.999)/(1 − 0.9) = 1e-3·0.0316227766/0.1 = 3.16227766e-4
    //   Δ = α·m/(√v + ε) = lr·sign(g)·s/(s + ε) with s = √0.001·|g|:
    //     |g| = 0.5: s = 0.0158113883, Δ = 1e-3·(1 − 6.3245e-6) = 9.99993675e-4
    //     |g| = 2:   s = 0.0632455532, Δ = 1e-3·(1 − 1.5811e-6) = 9.99998419e-4
    //   w = (1 − 9.99993675e-4, −2 + 9.99993675e-4, 0.5 − 9.99998419e-4)
    //     = (0.999000006, −1.999000006, 0.499000002)     (≈ w − lr·sign(g))
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.9990000063, -1.9990000063, 0.4990000016}, kOptimizer, "w after step 1"));
    EXPECT_TRUE(all_close(opt.state()[0].to_host(), {0.05, -0.05, 0.2}, kOptimizer, "m after step 1"));
    EXPECT_TRUE(all_close(opt.state()[1].to_host(), {0.00025, 0.00025, 0.004}, kOptimizer, "v after step 1"));
    EXPECT_EQ(step.to_host()[0], 0u) << "Optimizer::step must not advance the counter (the trainer does)";

    // Step 2 (t = 2, same gradient): bias correction must read the device counter.
    //   m = 0.9·0.1·g + 0.1·g = 0.19·g = (0.095, −0.095, 0.38)
    //   v = 0.999·0.001·g² + 0.001·g² = 0.001999·g² = (0.00049975, 0.00049975, 0.007996)
    //   α = lr·√(1 − 0.999²)/(1 − 0.9²) = 1e-3·√0.001999/0.19 = 2.35316725e-4
    //   Δ = lr·sign(g)·s/(s + ε) with s = √0.001999·|g|:
    //     |g| = 0.5: s = 0.0223550889, Δ = 9.99995527e-4
    //     |g| = 2:   s = 0.0894203556, Δ = 9.99998882e-4
    //   w = (0.999000006 − 9.99995527e-4, −1.999000006 + 9.99995527e-4, 0.499000002 − 9.99998882e-4)
    //     = (0.998000011, −1.998000011, 0.498000003)
    ops::increment(step.data(), dev());
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.9980000108, -1.9980000108, 0.4980000027}, kOptimizer, "w after step 2"));
    EXPECT_TRUE(all_close(opt.state()[0].to_host(), {0.095, -0.095, 0.38}, kOptimizer, "m after step 2"));
    EXPECT_TRUE(all_close(opt.state()[1].to_host(), {0.00049975, 0.00049975, 0.007996}, kOptimizer, "v after step 2"));
}

TEST_P(OptimizerHandComputed, SgdMomentumTwoSteps) {
    OptimizerConfig cfg;
    cfg.kind = OptimizerKind::Sgd;
    cfg.lr = 0.1f;
    cfg.momentum = 0.9f;
    Optimizer opt(cfg, 3, dev());
    ASSERT_EQ(opt.state().size(), 1u);
    EXPECT_EQ(opt.state_names(), (std::vector<std::string>{"sgd.velocity"}));
    Buffer<float> w = Buffer<float>::from_host(kW0, dev());
    Buffer<float> g = Buffer<float>::from_host(kG, dev());
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev());

    // Step 1: v = 0.9·0 − 0.1·(0.5, −0.5, 2) = (−0.05, 0.05, −0.2)
    //         w = (1, −2, 0.5) + v           = (0.95, −1.95, 0.3)
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.95, -1.95, 0.3}, kOptimizer, "w after step 1"));
    EXPECT_TRUE(all_close(opt.state()[0].to_host(), {-0.05, 0.05, -0.2}, kOptimizer, "velocity after step 1"));

    // Step 2 with g2 = (1, 0.25, −1):
    //   v = 0.9·(−0.05, 0.05, −0.2) − 0.1·(1, 0.25, −1) = (−0.045 − 0.1, 0.045 − 0.025, −0.18 + 0.1)
    //     = (−0.145, 0.02, −0.08)
    //   w = (0.95 − 0.145, −1.95 + 0.02, 0.3 − 0.08) = (0.805, −1.93, 0.22)
    const std::vector<float> g2 = {1.0f, 0.25f, -1.0f};
    g.copy_from_host(g2.data(), g2.size());
    ops::increment(step.data(), dev());
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.805, -1.93, 0.22}, kOptimizer, "w after step 2"));
    EXPECT_TRUE(all_close(opt.state()[0].to_host(), {-0.145, 0.02, -0.08}, kOptimizer, "velocity after step 2"));
}

TEST_P(OptimizerHandComputed, PlainSgdOneStep) {
    OptimizerConfig cfg;
    cfg.kind = OptimizerKind::Sgd;
    cfg.lr = 0.1f;  // momentum 0: w ← w − lr·g
    Optimizer opt(cfg, 3, dev());
    Buffer<float> w = Buffer<float>::from_host(kW0, dev());
    Buffer<float> g = Buffer<float>::from_host(kG, dev());
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev());
    // w = (1 − 0.05, −2 + 0.05, 0.5 − 0.2) = (0.95, −1.95, 0.3)
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.95, -1.95, 0.3}, kOptimizer, "w"));
}

TEST_P(OptimizerHandComputed, RmspropFirstStep) {
    OptimizerConfig cfg;
    cfg.kind = OptimizerKind::RmsProp;  // lr 1e-3, ρ 0.9, ε 1e-7
    Optimizer opt(cfg, 3, dev());
    ASSERT_EQ(opt.state().size(), 1u);
    EXPECT_EQ(opt.state_names(), (std::vector<std::string>{"rmsprop.s"}));
    Buffer<float> w = Buffer<float>::from_host(kW0, dev());
    Buffer<float> g = Buffer<float>::from_host(kG, dev());
    Buffer<uint64_t> step = Buffer<uint64_t>::from_host(std::vector<uint64_t>{0}, dev());

    // s = 0.9·0 + 0.1·g² = (0.025, 0.025, 0.4)
    // Δ = lr·g/(√s + ε) = lr·sign(g)·|g|/(√0.1·|g| + 1e-7):
    //   |g| = 0.5: 0.5/(0.158113883 + 1e-7) = 3.16227566, Δ = 3.16227566e-3
    //   |g| = 2:   2/(0.632455532 + 1e-7)   = 3.16227716, Δ = 3.16227716e-3
    // w = (1 − 3.16227566e-3, −2 + 3.16227566e-3, 0.5 − 3.16227716e-3)
    //   = (0.996837724, −1.996837724, 0.496837723)     (≈ w − √10·lr·sign(g))
    opt.step(w, g, step.data());
    EXPECT_TRUE(all_close(w.to_host(), {0.9968377243, -1.9968377243, 0.4968377228}, kOptimizer, "w"));
    EXPECT_TRUE(all_close(opt.state()[0].to_host(), {0.025, 0.025, 0.4}, kOptimizer, "s"));
}

INSTANTIATE_TEST_SUITE_P(Devices, OptimizerHandComputed, ::testing::ValuesIn(kDevices),
                         device_param_name);

}  // namespace
