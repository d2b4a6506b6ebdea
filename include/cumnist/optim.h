// Optimizers over the flat parameter buffer: one op call (one kernel) per step. The step
// counter is device data owned by the trainer, so a captured step advances it itself.
#pragma once

#include <string>
#include <vector>

#include "cumnist/buffer.h"
#include "cumnist/ops.h"

namespace cumnist {

enum class OptimizerKind { Adam, Sgd, RmsProp };

const char* to_string(OptimizerKind kind);
OptimizerKind parse_optimizer(const std::string& name);  // "adam" | "sgd" | "rmsprop"

struct OptimizerConfig {
    OptimizerKind kind = OptimizerKind::Adam;
    float lr = 1e-3f;
    float beta1 = 0.9f, beta2 = 0.999f;  // Adam
    float epsilon = 1e-7f;               // Adam, RMSprop
    float momentum = 0.0f;               // SGD
    float rho = 0.9f;                    // RMSprop
    std::string describe() const;
    void validate() const;
};

class Optimizer {
public:
    Optimizer(OptimizerConfig config, std::size_t n_params, Device device);

    // w ← update(w, g, state); `step` is the 0-based step index on the device. `advance`, when
    // set, is ops.h's: the step counter, the batch index and a zero slot, the first two
    // incremented by the same op after the update (the end of a training step, no node of its own).
    void step(Buffer<float>& params, const Buffer<float>& grads, const uint64_t* step, uint64_t* advance = nullptr);

    const OptimizerConfig& config() const { return m_config; }
    // The state buffers (Adam: m, v; SGD: velocity; RMSprop: s), for checkpoints.
    std::vector<Buffer<float>>& state() { return m_state; }
    std::vector<std::string> state_names() const;

    // The learning-rate schedule's factor (≥ 0; a decayed rate may underflow to 0, which stops the
    // updates): every step uses lr · scale, read from device memory so
    // that a captured step follows it (1 until set; exactly lr then). The caller makes sure no
    // step that reads it is still running (Trainer::set_lr_scale synchronizes).
    void set_lr_scale(float scale);
    float lr_scale() const { return m_lr_scale_host; }

private:
    OptimizerConfig m_config;
    std::vector<Buffer<float>> m_state;
    Buffer<float> m_lr_scale;  // one value on the device
    float m_lr_scale_host = 1.0f;
};

}  // namespace cumnist
