// The sequential model: its layers built from the spec (fusing activations and dropout into the
// layer before them), the flat parameter buffer with per-layer views, the workspace, and forward
// and backward as the layers' op sequences.
#include "cumnist/ops.h"
#include "cumnist/philox.h"
#include "layer.h"

namespace cumnist {

std::string MlpConfig::describe() const {
    std::string shape = std::to_string(inputs);
    for (int h : hidden) shape += "-" + std::to_string(h);
    shape += "-" + std::to_string(classes);
    if (hidden.empty()) return shape;  // one linear layer: no activation, nothing to drop
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

namespace detail {

std::vector<std::unique_ptr<Layer>> make_layers(const ModelSpec& spec) {
    const std::vector<Shape> shapes = spec.shapes();
    const std::vector<LayerSpec>& L = spec.layers;
    std::vector<std::unique_ptr<Layer>> layers;
    uint32_t dropouts = 0;  // dropout layers so far: each draws from its own Philox stream
    auto next_dropout = [&](float rate) { return DropoutSpec{rate, kDropoutStreamBase + dropouts++}; };
    Shape in = spec.input;
    for (std::size_t i = 0; i < L.size(); ++i) {
        const LayerSpec& l = L[i];
        auto is = [&](std::size_t j, LayerKind kind) { return j < L.size() && L[j].kind == kind; };
        switch (l.kind) {
            case LayerKind::Dense: {
                // Dense [activation] [dropout]: one GEMM and the fused epilogue.
                Activation act = Activation::None;
                if (is(i + 1, LayerKind::Activation)) act = L[++i].activation;
                DropoutSpec d;
                if (is(i + 1, LayerKind::Dropout)) d = next_dropout(L[++i].rate);
                layers.push_back(make_dense(in.size(), l.units, act, d));
                break;
            }
            case LayerKind::Conv2D: {
                Activation act = Activation::None;
                if (is(i + 1, LayerKind::Activation)) act = L[++i].activation;
                layers.push_back(make_conv2d(conv_geometry(l, in), act));
                break;
            }
            case LayerKind::MaxPool2D: {
                Pool2dGeometry g;
                g.c = in.c, g.in_h = in.h, g.in_w = in.w;
                g.k_h = l.k_h, g.k_w = l.k_w, g.stride_h = l.stride_h, g.stride_w = l.stride_w;
                layers.push_back(make_maxpool2d(g));
                break;
            }
            case LayerKind::Flatten: break;  // the same memory read as a vector
            case LayerKind::Dropout: layers.push_back(make_dropout(in.size(), next_dropout(l.rate))); break;
            case LayerKind::Activation: layers.push_back(make_activation(in.size(), l.activation)); break;
        }
        in = shapes[i];
    }
    return layers;
}

}  // namespace detail

Workspace::Workspace(const Model& model, int max_batch_) : max_batch(max_batch_), classes(model.classes()) {
    CUMNIST_CHECK(max_batch > 0, "workspace batch must be positive, got {}", max_batch);
    const Device device = model.device();
    const auto rows = static_cast<std::size_t>(max_batch);
    std::size_t scratch_size = 0;
    for (const auto& layer : model.m_layers) {
        y.emplace_back(rows * layer->out_size(), device);
        dy.emplace_back(rows * layer->out_size(), device);
        aux.emplace_back(rows * layer->aux_size(), device);
        index.emplace_back(rows * layer->index_size(), device);
        scratch_size = std::max(scratch_size, layer->scratch_bytes(max_batch, device));
    }
    scratch = Buffer<uint8_t>(scratch_size, device);
    row_loss = Buffer<float>(rows, device);
    row_correct = Buffer<float>(rows, device);
}

Model::Model(ModelSpec spec, Device device)
    : m_spec(std::move(spec)), m_device(device), m_layout(layer_layout(m_spec)), m_layers(detail::make_layers(m_spec)) {
    const std::size_t n = parameter_count(m_spec);
    m_params = Buffer<float>(n, device);
    m_grads = Buffer<float>(n, device);
    m_params.zero();
    m_grads.zero();
}

Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

MatrixView<float> Model::weight(Buffer<float>& flat, int layer) const {
    const LayerLayout& l = m_layout[layer];
    return flat.view(l.out, l.in, l.w_offset);
}

MatrixView<float> Model::bias(Buffer<float>& flat, int layer) const {
    const LayerLayout& l = m_layout[layer];
    return flat.view(1, l.out, l.b_offset);
}

Model::StepFolds Model::step_folds() const {
    StepFolds f;
    if (m_layers.empty() || !m_layers.back()->has_parameters()) return f;
    // The last computing layer holds the last parameters (a model ends in its output layer).
    const detail::Layer& last = *m_layers.back();
    f.output_bias = last.ends_in_plain_bias();
    f.output_dx = m_layers.size() >= 2 && last.dense_outputs() > 0 && last.dense_outputs() <= ops::kMaxNextOutputs &&
                  m_layers[m_layers.size() - 2]->dense_outputs() > 0;
    return f;
}

namespace {
bool subset(const Model::StepFolds& a, const Model::StepFolds& b) {
    return (!a.output_bias || b.output_bias) && (!a.output_dx || b.output_dx);
}
}  // namespace

MatrixView<float> Model::output_bias(Buffer<float>& flat) const {
    CUMNIST_CHECK(!m_layout.empty(), "a model without parameters has no output bias");
    return bias(flat, static_cast<int>(m_layout.size()) - 1);
}

MatrixView<float> Model::forward(Workspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                                 const uint64_t* step, const StepFolds& folds) {
    CUMNIST_CHECK(subset(folds, step_folds()), "a training fold this model does not allow");
    const bool fold_output_bias = folds.output_bias;
    const int n = x.rows;
    CUMNIST_CHECK(n <= ws.max_batch, "batch of {} exceeds the workspace's {}", n, ws.max_batch);
    CUMNIST_CHECK(x.cols == inputs(), "input has {} values per image, the model expects {}", x.cols, inputs());
    const detail::Pass pass{n, training, dropout_seed, step};
    MatrixView<const float> input = x;
    int p = 0;  // layers with parameters so far
    for (std::size_t i = 0; i < m_layers.size(); ++i) {
        detail::Layer& layer = *m_layers[i];
        detail::LayerIO io;
        io.x = input;
        io.y = ws.y[i].view(n, layer.out_size());
        io.aux = ws.aux[i].view(n, layer.aux_size());
        io.index = ws.index[i].view(n, layer.index_size());
        io.scratch = ws.scratch.flat();
        if (layer.has_parameters()) {
            io.w = weight(m_params, p);
            if (!(fold_output_bias && i + 1 == m_layers.size())) io.b = bias(m_params, p);
            ++p;
        }
        layer.forward(pass, io);
        input = io.y;
    }
    return ws.logits(n);
}

void Model::backward(Workspace& ws, MatrixView<const float> x, bool training, uint64_t dropout_seed,
                     const uint64_t* step, const StepFolds& folds) {
    CUMNIST_CHECK(subset(folds, step_folds()), "a training fold this model does not allow");
    const bool fold_output_bias = folds.output_bias;
    const std::size_t n_layers = m_layers.size();
    const int n = x.rows;
    const detail::Pass pass{n, training, dropout_seed, step};
    int p = static_cast<int>(m_layout.size());
    for (std::size_t i = m_layers.size(); i-- > 0;) {
        detail::Layer& layer = *m_layers[i];
        detail::LayerIO io;
        const int in_size = i > 0 ? m_layers[i - 1]->out_size() : inputs();
        io.x = i > 0 ? MatrixView<const float>(ws.y[i - 1].view(n, in_size)) : x;
        io.y = ws.y[i].view(n, layer.out_size());
        io.dy = ws.dy[i].view(n, layer.out_size());
        if (i > 0 && !(folds.output_dx && i + 1 == n_layers)) io.dx = ws.dy[i - 1].view(n, in_size);
        if (folds.output_dx && i + 2 == n_layers) {  // the last layer left its dx GEMM to this one
            const detail::Layer& last = *m_layers.back();
            io.next_dy = ws.dy.back().view(n, last.out_size());
            io.next_w = weight(m_params, static_cast<int>(m_layout.size()) - 1);
        }
        io.aux = ws.aux[i].view(n, layer.aux_size());
        io.index = ws.index[i].view(n, layer.index_size());
        io.scratch = ws.scratch.flat();
        if (layer.has_parameters()) {
            --p;
            io.w = weight(m_params, p);
            io.b = bias(m_params, p);
            io.dw = weight(m_grads, p);
            if (!(fold_output_bias && i + 1 == m_layers.size())) io.db = bias(m_grads, p);
        }
        layer.backward(pass, io);
    }
}

}  // namespace cumnist
