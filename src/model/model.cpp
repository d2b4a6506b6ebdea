// The MLP: layout of the flat parameter buffer, Glorot init, forward and backward via ops.h.
#include <cmath>

#include "cumnist/mlp.h"
#include "cumnist/philox.h"

namespace cumnist {

std::string MlpConfig::describe() const {
    std::string shape = std::to_string(inputs);
    for (int h : hidden) shape += "-" + std::to_string(h);
    shape += "-" + std::to_string(classes);
    return fmt::format("{} {}, dropout {}", shape, to_string(activation), dropout);
}

void MlpConfig::validate() const {
    if (inputs <= 0) throw Error(fmt::format("model: input size must be positive, got {}", inputs));
    if (classes < 2 || classes > 256)
        throw Error(fmt::format("model: number of classes must be in [2, 256], got {}", classes));
    for (int h : hidden)
        if (h <= 0 || h > (1 << 16)) throw Error(fmt::format("model: hidden layer sizes must be in [1, 65536], got {}", h));
    if (!(dropout >= 0.0f && dropout < 1.0f)) throw Error(fmt::format("model: dropout must be in [0, 1), got {}", dropout));
}

std::vector<LayerLayout> layer_layout(const MlpConfig& config) {
    std::vector<LayerLayout> layout;
    std::size_t offset = 0;
    int in = config.inputs;
    for (int l = 0; l < config.n_layers(); ++l) {
        const int out = l + 1 < config.n_layers() ? config.hidden[l] : config.classes;
        LayerLayout layer{in, out, offset, offset + static_cast<std::size_t>(in) * out};
        offset = layer.b_offset + out;
        layout.push_back(layer);
        in = out;
    }
    return layout;
}

std::size_t parameter_count(const MlpConfig& config) {
    const auto layout = layer_layout(config);
    return layout.back().b_offset + layout.back().out;
}

std::vector<float> glorot_uniform_init(const MlpConfig& config, uint64_t seed) {
    constexpr uint32_t kInitStream = 0x1u;
    std::vector<float> params(parameter_count(config), 0.0f);
    const auto layout = layer_layout(config);
    for (std::size_t l = 0; l < layout.size(); ++l) {
        const LayerLayout& layer = layout[l];
        const double limit = std::sqrt(6.0 / (layer.in + layer.out));
        const std::size_t n = static_cast<std::size_t>(layer.in) * layer.out;
        for (std::size_t i = 0; i < n; ++i) {
            const float u = word_to_unit_float(philox_word(seed, kInitStream, l, i));  // [0, 1)
            params[layer.w_offset + i] = static_cast<float>((2.0 * u - 1.0) * limit);
        }
    }
    return params;
}

MlpWorkspace::MlpWorkspace(const MlpConfig& config, int max_batch_, Device device) : max_batch(max_batch_) {
    CUMNIST_CHECK(max_batch > 0, "workspace batch must be positive, got {}", max_batch);
    const auto layout = layer_layout(config);
    for (std::size_t l = 0; l < layout.size(); ++l) {
        const std::size_t size = static_cast<std::size_t>(max_batch) * layout[l].out;
        a.emplace_back(size, device);
        dh.emplace_back(size, device);
        if (l + 1 < layout.size()) h.emplace_back(size, device);
    }
    row_loss = Buffer<float>(max_batch, device);
    row_correct = Buffer<float>(max_batch, device);
}

Mlp::Mlp(MlpConfig config, Device device)
    : m_config(std::move(config)), m_device(device), m_layout(layer_layout(m_config)) {
    m_config.validate();
    const std::size_t n = parameter_count(m_config);
    m_params = Buffer<float>(n, device);
    m_grads = Buffer<float>(n, device);
    m_params.zero();
    m_grads.zero();
}

MatrixView<float> Mlp::weight(Buffer<float>& flat, int layer) const {
    const LayerLayout& l = m_layout[layer];
    return flat.view(l.out, l.in, l.w_offset);
}

MatrixView<float> Mlp::bias(Buffer<float>& flat, int layer) const {
    const LayerLayout& l = m_layout[layer];
    return flat.view(1, l.out, l.b_offset);
}

Dropout Mlp::dropout_for(int layer, bool training, uint64_t seed) const {
    Dropout d;
    const bool hidden = layer + 1 < m_config.n_layers();
    d.rate = hidden ? m_config.dropout : 0.0f;
    d.training = training;
    d.seed = seed;
    d.stream = kDropoutStreamBase + static_cast<uint32_t>(layer);
    return d;
}

MatrixView<float> Mlp::forward(MlpWorkspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                               const uint64_t* step) {
    const int n = x.rows;
    CUMNIST_CHECK(n <= ws.max_batch, "batch of {} exceeds the workspace's {}", n, ws.max_batch);
    MatrixView<const float> input = x;
    for (int l = 0; l < m_config.n_layers(); ++l) {
        const bool hidden = l + 1 < m_config.n_layers();
        MatrixView<float> a = ws.a[l].view(n, m_layout[l].out);
        // a (n, out) = input (n, in) · wᵀ, then a ← act(a + b), h ← dropout(a)
        ops::gemm(a, input, Trans::No, weight(m_params, l), Trans::Yes);
        const Dropout d = dropout_for(l, training, dropout_seed);
        MatrixView<float> h = hidden && d.active() ? ws.h[l].view(n, m_layout[l].out) : a;
        ops::bias_act_dropout_forward(h, a, bias(m_params, l), hidden ? m_config.activation : Activation::None, d, step);
        input = h;
    }
    return ws.a.back().view(n, m_config.classes);
}

void Mlp::backward(MlpWorkspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                   const uint64_t* step) {
    const int n = x.rows;
    for (int l = m_config.n_layers() - 1; l >= 0; --l) {
        const LayerLayout& layer = m_layout[l];
        const bool hidden = l + 1 < m_config.n_layers();
        MatrixView<float> dpre = ws.dh[l].view(n, layer.out);
        if (hidden) {
            // ∂loss/∂pre = ∂loss/∂h · keep/(1 − rate) · act'(pre), in place. ReLU's backward reads the
            // forward's output h (after dropout), the others the activation a (ops.h).
            const Dropout d = dropout_for(l, training, dropout_seed);
            const bool from_output = m_config.activation == Activation::Relu && d.active();
            ops::act_dropout_backward(dpre, dpre, from_output ? ws.h[l].view(n, layer.out) : ws.a[l].view(n, layer.out),
                                      m_config.activation, d, step);
        }
        // The layer's input: x, or the previous layer's output after dropout.
        MatrixView<const float> input = x;
        if (l > 0) {
            const bool dropped = dropout_for(l - 1, training, dropout_seed).active();
            input = dropped ? ws.h[l - 1].view(n, layer.in) : ws.a[l - 1].view(n, layer.in);
        }
        // dw (out, in) = dpreᵀ (out, n) · input (n, in);  db = Σ_rows dpre
        ops::gemm(weight(m_grads, l), dpre, Trans::Yes, input, Trans::No);
        ops::bias_grad(bias(m_grads, l), dpre);
        // dinput (n, in) = dpre (n, out) · w (out, in)
        if (l > 0) ops::gemm(ws.dh[l - 1].view(n, layer.in), dpre, Trans::No, weight(m_params, l), Trans::No);
    }
}

}  // namespace cumnist
