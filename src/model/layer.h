// Internal to the model (src/model/): the interface every computing layer implements, and the
// factory that turns a ModelSpec into layers, fusing an activation (and for Dense a dropout) into
// the layer before it. One file per layer kind in src/model/layers/.
#pragma once

#include <memory>
#include <vector>

#include "cumnist/model.h"

namespace cumnist::detail {

// One forward or backward call.
struct Pass {
    int n = 0;
    bool training = false;
    uint64_t seed = 0;
    const uint64_t* step = nullptr;
};

// The views a layer works on for one call. x and y: its input (n, in) and output (n, out); dy:
// ∂loss/∂y (a layer may overwrite it); dx: where ∂loss/∂x goes (no data for the first layer,
// whose input gradient nobody needs); aux, index and scratch: its own buffers (Workspace); w, b,
// dw, db: its parameters and their gradients (empty for a layer without parameters).
struct LayerIO {
    MatrixView<const float> x;
    MatrixView<float> y, dx, dy, aux;
    MatrixView<int32_t> index;
    MatrixView<uint8_t> scratch;
    MatrixView<const float> w, b;
    MatrixView<float> dw, db;
    // Backward, when next_w has data (Model::StepFolds::output_dx): dy was not filled by the next
    // layer, which left its dx GEMM to this one: dy = next_dy · next_w.
    MatrixView<const float> next_dy, next_w;
};

class Layer {
public:
    virtual ~Layer() = default;
    virtual int out_size() const = 0;            // floats per sample
    virtual bool has_parameters() const { return false; }
    virtual int aux_size() const { return 0; }    // floats per sample
    virtual int index_size() const { return 0; }  // int32 per sample
    // Scratch memory for batches of up to max_batch rows (created before the first step).
    virtual std::size_t scratch_bytes(int /*max_batch*/, Device) const { return 0; }
    // Whether the forward ends in a plain bias add (no activation, no dropout) and the backward
    // then starts with the plain bias gradient: the two a caller may do itself, the layer's io.b
    // and io.db then left without data (Model::forward/backward with StepFolds::output_bias).
    virtual bool ends_in_plain_bias() const { return false; }
    // A dense layer's outputs (0 for the others): one that can be given next_dy and next_w, or,
    // as the last layer, leave its dx GEMM to the dense layer before it.
    virtual int dense_outputs() const { return 0; }
    virtual void forward(const Pass& pass, const LayerIO& io) = 0;
    virtual void backward(const Pass& pass, const LayerIO& io) = 0;
};

// Dropout that a layer applies: the spec's rate, and its stream (kDropoutStreamBase + the
// index of the dropout layer among the model's dropout layers).
struct DropoutSpec {
    float rate = 0.0f;
    uint32_t stream = 0;
    Dropout at(const Pass& pass) const {
        Dropout d;
        d.rate = rate;
        d.training = pass.training;
        d.seed = pass.seed;
        d.stream = stream;
        return d;
    }
};

std::unique_ptr<Layer> make_dense(int in, int out, Activation act, DropoutSpec dropout);
// relu_backward_in_next / relu_gate: the ReLU of a Conv2D (act Relu) with a MaxPool2D right
// after it is differentiated by the pooling's backward (ops::maxpool2d_backward's relu_y), not
// by the convolution's: one pass over the convolution's output gradient fewer.
std::unique_ptr<Layer> make_conv2d(const Conv2dGeometry& g, Activation act, bool relu_backward_in_next = false);
std::unique_ptr<Layer> make_maxpool2d(const Pool2dGeometry& g, bool relu_gate = false);
std::unique_ptr<Layer> make_activation(int size, Activation act);
std::unique_ptr<Layer> make_dropout(int size, DropoutSpec dropout);

// The computing layers of `spec`, fused (see model.h), for `device`, and the layout of each one's
// output (Model::output_layouts).
struct Layers {
    std::vector<std::unique_ptr<Layer>> layers;
    std::vector<ImageLayout> layouts;
};
Layers make_layers(const ModelSpec& spec, Device device, ActivationLayouts layouts);

}  // namespace cumnist::detail

namespace cumnist {
// The convolution a Conv2D layer spec applies to inputs of shape `in` (n left 0).
Conv2dGeometry conv_geometry(const LayerSpec& l, Shape in);
}  // namespace cumnist
