// The multilayer perceptron: configuration, the flat parameter buffer with per-layer views, and
// forward/backward written once against ops.h for every device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cumnist/buffer.h"
#include "cumnist/ops.h"

namespace cumnist {

struct MlpConfig {
    int inputs = 784;
    std::vector<int> hidden = {512, 256};
    int classes = 10;
    Activation activation = Activation::Relu;
    float dropout = 0.2f;  // after every hidden layer, in training only

    int n_layers() const { return static_cast<int>(hidden.size()) + 1; }
    // "784-512-256-10 relu, dropout 0.2"
    std::string describe() const;
    void validate() const;  // throws Error naming the bad field
};

// Where layer l's weights (out, in) and bias (1, out) sit in the flat parameter buffer.
struct LayerLayout {
    int in = 0, out = 0;
    std::size_t w_offset = 0, b_offset = 0;
};

std::vector<LayerLayout> layer_layout(const MlpConfig& config);
std::size_t parameter_count(const MlpConfig& config);

// Glorot-uniform weights, U(−√(6/(in+out)), +√(6/(in+out))), zero biases, drawn from Philox
// under `seed` (same values on every platform), returned as the flat host array.
std::vector<float> glorot_uniform_init(const MlpConfig& config, uint64_t seed);

// Per-batch activations and gradients for up to max_batch rows. Allocated once, before training.
struct MlpWorkspace {
    MlpWorkspace(const MlpConfig& config, int max_batch, Device device);
    int max_batch;
    std::vector<Buffer<float>> a;   // per layer: act(x·wᵀ + b) (n, out)
    std::vector<Buffer<float>> h;   // per hidden layer: a after dropout (n, out)
    std::vector<Buffer<float>> dh;  // per layer: gradient w.r.t. h, then (in place) w.r.t. pre-activation
    Buffer<float> row_loss, row_correct;
};

class Mlp {
public:
    Mlp(MlpConfig config, Device device);

    const MlpConfig& config() const { return m_config; }
    Device device() const { return m_device; }
    const std::vector<LayerLayout>& layout() const { return m_layout; }

    Buffer<float>& parameters() { return m_params; }
    const Buffer<float>& parameters() const { return m_params; }
    Buffer<float>& gradients() { return m_grads; }

    MatrixView<float> weight(Buffer<float>& flat, int layer) const;
    MatrixView<float> bias(Buffer<float>& flat, int layer) const;

    // logits (n, classes) = the model applied to x (n, inputs); written to ws.a.back().
    // Dropout is applied when `training`; its masks depend on (seed, layer, *step).
    MatrixView<float> forward(MlpWorkspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                              const uint64_t* step);

    // After forward(training) and with ws.dh.back() holding ∂loss/∂logits: overwrites gradients()
    // with ∂loss/∂parameters.
    void backward(MlpWorkspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                  const uint64_t* step);

private:
    Dropout dropout_for(int layer, bool training, uint64_t seed) const;

    MlpConfig m_config;
    Device m_device;
    std::vector<LayerLayout> m_layout;
    Buffer<float> m_params;
    Buffer<float> m_grads;
};

}  // namespace cumnist
