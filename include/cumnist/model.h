// Layered models: a model is a sequence of layers (Dense, Conv2D, MaxPool2D, Flatten, Dropout and
// the activations), written once against ops.h for every device. Activations are NCHW, one image
// per row of a (n, c·h·w) view (on the CPU some between convolutions and poolings are channel-
// blocked: ActivationLayouts); conv weights are stored (out, in, kh, kw) and dense weights
// (out, in), as in PyTorch and ONNX. All parameters live in one flat buffer, layer after layer
// (weights, then bias), with per-layer views; gradients mirror it.
//
// The layer string (--model): comma-separated tokens, Keras's layer names shortened:
//   dense<units>                          Dense, e.g. dense128
//   conv<filters>k<k>[x<kw>][s<s>[x<sw>]][same]  Conv2D, e.g. conv32k3, conv64k5s2same, conv8k3x5 (a 3x5
//                                         kernel); padding valid unless "same" (Keras/ONNX SAME_UPPER)
//   pool<k>[x<kw>][s<s>[x<sw>]]           MaxPool2D, stride = the window unless given, e.g. pool2, pool3s2
//   flatten                               (c, h, w) → c·h·w; required between a spatial layer and dense
//   dropout<rate>                         e.g. dropout0.5
//   relu, sigmoid, tanh                   activations
// The last layer must produce one value per class (dense10 on MNIST). Dense, Conv2D and the
// activation right after them run as one fused op sequence; so do Dense, its activation and a
// dropout right after those.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cumnist/buffer.h"
#include "cumnist/mlp.h"
#include "cumnist/ops.h"

namespace cumnist {

enum class LayerKind { Dense, Conv2D, MaxPool2D, Flatten, Dropout, Activation };
enum class Padding { Valid, Same };
const char* to_string(LayerKind kind);  // "dense", "conv2d", "maxpool2d", "flatten", "dropout", "activation"

struct LayerSpec {
    LayerKind kind = LayerKind::Dense;
    int units = 0;                  // Dense: outputs; Conv2D: filters (output channels)
    int k_h = 0, k_w = 0;           // Conv2D kernel, MaxPool2D window
    int stride_h = 1, stride_w = 1; // Conv2D, MaxPool2D
    Padding padding = Padding::Valid;  // Conv2D
    float rate = 0.0f;              // Dropout
    Activation activation = Activation::None;  // Activation

    std::string token() const;  // its layer-string form: "conv32k3", "dense10", "pool2", "dropout0.5", "relu"
    bool operator==(const LayerSpec& o) const;
    bool operator!=(const LayerSpec& o) const { return !(*this == o); }
};

// The shape of one sample: (channels, height, width); a flat vector is (n, 1, 1).
struct Shape {
    int c = 1, h = 1, w = 1;
    int size() const { return c * h * w; }
    bool operator==(const Shape& o) const { return c == o.c && h == o.h && w == o.w; }
};

struct ModelSpec {
    Shape input{1, 28, 28};
    int classes = 10;
    std::vector<LayerSpec> layers;

    ModelSpec() = default;
    ModelSpec(Shape input_, int classes_, std::vector<LayerSpec> layers_)
        : input(input_), classes(classes_), layers(std::move(layers_)) {}
    // The MLP preset's layers (mlp.h). Implicit: an MlpConfig is a model specification.
    ModelSpec(const MlpConfig& mlp);  // NOLINT(google-explicit-constructor)

    int inputs() const { return input.size(); }
    // "conv32k3,relu,pool2,flatten,dense10"
    std::string layer_string() const;
    // The layer string, or for a model the MLP preset makes, "784-512-256-10 relu, dropout 0.2".
    std::string describe() const;
    // The output shape of every layer. Throws Error naming the offending token and why (a kernel
    // larger than its input, a size that shrinks to zero, dense after a spatial layer without
    // flatten, a model that does not end in one value per class, one with no parameters, ...).
    std::vector<Shape> shapes() const;
    void validate() const { (void)shapes(); }
    bool operator==(const ModelSpec& o) const { return input == o.input && classes == o.classes && layers == o.layers; }
    bool operator!=(const ModelSpec& o) const { return !(*this == o); }
};

// `text`: a preset name ("mlp": the MLP `mlp` describes; "cnn": the convolutional preset) or a
// layer string. Throws Error naming the bad token.
ModelSpec parse_model(const std::string& text, Shape input, int classes, const MlpConfig& mlp = {});
// The specification as JSON, as checkpoints carry it, and back:
//   {"input": [1, 28, 28], "classes": 10, "layers": [{"type": "conv2d", "filters": 32, "kernel": [3, 3],
//    "stride": [1, 1], "padding": "same"}, {"type": "activation", "activation": "relu"},
//    {"type": "maxpool2d", "pool": [2, 2], "stride": [2, 2]}, {"type": "flatten"},
//    {"type": "dropout", "rate": 0.5}, {"type": "dense", "units": 10}]}
// model_from_json validates everything and throws Error saying what is wrong.
nlohmann::json model_to_json(const ModelSpec& spec);
ModelSpec model_from_json(const nlohmann::json& j);
// The MLP configuration whose preset makes exactly `spec`, if there is one.
std::optional<MlpConfig> as_mlp(const ModelSpec& spec);
// The layer string of the "cnn" preset.
const char* cnn_preset();

// Where a layer with parameters keeps them in the flat buffer: weights (out, in) — for a
// convolution out = filters and in = channels·kh·kw — then bias (out).
struct LayerLayout {
    int in = 0, out = 0;
    std::size_t w_offset = 0, b_offset = 0;
};
// One entry per layer with parameters, in order.
std::vector<LayerLayout> layer_layout(const ModelSpec& spec);
std::size_t parameter_count(const ModelSpec& spec);

// Glorot-uniform weights, U(−√(6/(fan_in+fan_out)), +√(6/(fan_in+fan_out))) (for a convolution
// fan_in = in·kh·kw, fan_out = filters·kh·kw, as Keras), zero biases, drawn from Philox under
// `seed` (same values on every platform), returned as the flat host array.
std::vector<float> glorot_uniform_init(const ModelSpec& spec, uint64_t seed);

// Multiply-adds of one sample's forward pass, per layer with parameters (a dense layer in·out, a
// convolution out_h·out_w·filters·in·kh·kw). Backward costs twice as many (dW and dX), less the
// first layer's dX.
std::vector<double> layer_macs(const ModelSpec& spec);

namespace detail {
class Layer;
}
class Model;

// Per-batch activations and gradients for up to max_batch rows, allocated once, before training.
struct Workspace {
    Workspace(const Model& model, int max_batch);
    int max_batch;
    std::vector<Buffer<float>> y;       // per layer: its output (max_batch, out_size)
    std::vector<Buffer<float>> dy;      // per layer: ∂loss/∂output
    std::vector<Buffer<float>> aux;     // per layer: what its backward needs besides (Dense: the activation before dropout)
    std::vector<Buffer<int32_t>> index; // per layer: MaxPool2D's argmax
    Buffer<uint8_t> scratch;            // the convolutions' workspace (ops::conv2d_workspace_bytes)
    Buffer<float> row_loss, row_correct;
    MatrixView<float> logits(int n) { return y.back().view(n, classes); }
    MatrixView<float> dlogits(int n) { return dy.back().view(n, classes); }

private:
    int classes;
};

// Work a training step moves out of the model's layers' own ops, each with the same bits
// (Model::step_folds() says which a model allows):
//   output_bias: the last layer's bias add and bias gradient, into the loss op (the caller's:
//     ops::bias_softmax_xent); the logits are left without that bias;
//   output_dx: the last layer's dx GEMM, into the backward epilogue of the dense layer before it
//     (ops::act_dropout_backward_through).
struct StepFolds {
    bool output_bias = false;
    bool output_dx = false;
};

// How a model lays out the activations between its layers (ops.h, ImageLayout). Fastest: the
// output of a convolution or pooling that another convolution or pooling reads is in the layout
// the convolutions next to it work in (ops::conv2d_preferred_layouts; on the CPU nChw16c with
// AVX-512 and nChw8c with AVX2, where the channels fill the blocks), so that no reorder runs
// between their kernels; every other activation, and every one on the GPU, is NCHW. Nchw: all
// of them NCHW. The results are the same bits either way.
enum class ActivationLayouts { Fastest, Nchw };

class Model {
public:
    Model(ModelSpec spec, Device device, ActivationLayouts layouts = ActivationLayouts::Fastest);
    ~Model();
    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;

    const ModelSpec& spec() const { return m_spec; }
    Device device() const { return m_device; }
    int inputs() const { return m_spec.inputs(); }
    int classes() const { return m_spec.classes; }
    const std::vector<LayerLayout>& layout() const { return m_layout; }
    // The layout of each computing layer's output (one per Workspace::y; Flatten is none).
    const std::vector<ImageLayout>& output_layouts() const { return m_output_layouts; }

    Buffer<float>& parameters() { return m_params; }
    const Buffer<float>& parameters() const { return m_params; }
    Buffer<float>& gradients() { return m_grads; }

    // Layer-with-parameters l's weights (out, in) and bias (1, out) in `flat` (parameters or gradients).
    MatrixView<float> weight(Buffer<float>& flat, int layer) const;
    MatrixView<float> bias(Buffer<float>& flat, int layer) const;

    using StepFolds = ::cumnist::StepFolds;
    // Every fold this model allows: output_bias when the last layer ends in a plain bias add (a
    // dense layer with no activation and no dropout after it, as every preset's); output_dx when
    // the last layer is dense with at most ops::kMaxNextOutputs outputs and the layer before it
    // is dense too.
    StepFolds step_folds() const;
    bool output_bias_foldable() const { return step_folds().output_bias; }
    MatrixView<float> output_bias(Buffer<float>& flat) const;  // the last layer with parameters' bias

    // logits (n, classes) = the model applied to x (n, inputs), in ws.logits(n). Dropout is
    // applied when `training`; its masks depend on (seed, dropout layer, *step). `folds` (a
    // subset of step_folds()) as above.
    MatrixView<float> forward(Workspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                              const uint64_t* step, const StepFolds& folds = {});

    // After forward(training) and with ws.dlogits(n) holding ∂loss/∂logits: overwrites
    // gradients() with ∂loss/∂parameters, all but the last layer's bias gradient when
    // folds.output_bias (the caller computes it).
    void backward(Workspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed, const uint64_t* step,
                  const StepFolds& folds = {});

private:
    friend struct Workspace;
    ModelSpec m_spec;
    Device m_device;
    std::vector<LayerLayout> m_layout;
    std::vector<std::unique_ptr<detail::Layer>> m_layers;  // the computing layers (Flatten needs none)
    std::vector<ImageLayout> m_output_layouts;
    Buffer<float> m_params;
    Buffer<float> m_grads;
};

}  // namespace cumnist
