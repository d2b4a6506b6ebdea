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

namespace {

// One computing layer before it is made: what the spec's tokens fused into it ask for.
struct Planned {
    LayerKind kind = LayerKind::Dense;
    int in_size = 0, units = 0;
    Activation act = Activation::None;
    DropoutSpec dropout;
    Conv2dGeometry conv;
    ImageLayouts prefers;  // a convolution's: ops::conv2d_preferred_layouts, asked once
    Pool2dGeometry pool;
};

bool spatial(const Planned& p) { return p.kind == LayerKind::Conv2D || p.kind == LayerKind::MaxPool2D; }

}  // namespace

Layers make_layers(const ModelSpec& spec, Device device, ActivationLayouts layouts) {
    const std::vector<Shape> shapes = spec.shapes();
    const std::vector<LayerSpec>& L = spec.layers;
    std::vector<Planned> plan;
    uint32_t dropouts = 0;  // dropout layers so far: each draws from its own Philox stream
    auto next_dropout = [&](float rate) { return DropoutSpec{rate, kDropoutStreamBase + dropouts++}; };
    Shape in = spec.input;
    for (std::size_t i = 0; i < L.size(); ++i) {
        const LayerSpec& l = L[i];
        auto is = [&](std::size_t j, LayerKind kind) { return j < L.size() && L[j].kind == kind; };
        Planned p;
        p.kind = l.kind;
        p.in_size = in.size();
        switch (l.kind) {
            case LayerKind::Dense:
                // Dense [activation] [dropout]: one GEMM and the fused epilogue.
                p.units = l.units;
                if (is(i + 1, LayerKind::Activation)) p.act = L[++i].activation;
                if (is(i + 1, LayerKind::Dropout)) p.dropout = next_dropout(L[++i].rate);
                break;
            case LayerKind::Conv2D:
                if (is(i + 1, LayerKind::Activation)) p.act = L[++i].activation;
                p.conv = conv_geometry(l, in);
                if (layouts == ActivationLayouts::Fastest) p.prefers = ops::conv2d_preferred_layouts(p.conv, device);
                break;
            case LayerKind::MaxPool2D:
                p.pool.c = in.c, p.pool.in_h = in.h, p.pool.in_w = in.w;
                p.pool.k_h = l.k_h, p.pool.k_w = l.k_w, p.pool.stride_h = l.stride_h, p.pool.stride_w = l.stride_w;
                break;
            case LayerKind::Flatten: break;  // the same memory read as a vector
            case LayerKind::Dropout: p.dropout = next_dropout(l.rate); break;
            case LayerKind::Activation: p.act = l.activation; break;
        }
        if (l.kind != LayerKind::Flatten) plan.push_back(p);
        in = shapes[i];
    }

    // The activation between two convolutions or poolings stays in the layout the convolutions
    // next to it work in (ops::conv2d_preferred_layouts: a blocked one on the CPU), so that no
    // reorder runs between them: the producing convolution's output layout, or the consuming
    // one's input layout, or where both are convolutions the layout they agree on; between two
    // poolings the layout of the first one's input. Every other activation (the input, whatever
    // a dense layer, a dropout mask or Flatten reads) is NCHW.
    Layers made;
    made.layouts.assign(plan.size(), ImageLayout::Nchw);
    if (layouts == ActivationLayouts::Fastest)
        for (std::size_t i = 0; i + 1 < plan.size(); ++i) {
            const Planned &from = plan[i], &to = plan[i + 1];
            if (!spatial(from) || !spatial(to)) continue;
            const bool from_conv = from.kind == LayerKind::Conv2D, to_conv = to.kind == LayerKind::Conv2D;
            ImageLayout l = i > 0 ? made.layouts[i - 1] : ImageLayout::Nchw;  // two poolings
            if (from_conv) l = from.prefers.dst;
            if (to_conv) l = !from_conv || to.prefers.src == l ? to.prefers.src : ImageLayout::Nchw;
            made.layouts[i] = l;
        }
    // A convolution's ReLU followed by a max pooling: the pooling's backward applies the ReLU's.
    auto relu_into_pool = [&](std::size_t i) {
        return i + 1 < plan.size() && plan[i].kind == LayerKind::Conv2D && plan[i].act == Activation::Relu &&
               plan[i + 1].kind == LayerKind::MaxPool2D;
    };
    for (std::size_t i = 0; i < plan.size(); ++i) {
        Planned& p = plan[i];
        const ImageLayout in_layout = i > 0 ? made.layouts[i - 1] : ImageLayout::Nchw, out_layout = made.layouts[i];
        switch (p.kind) {
            case LayerKind::Dense: made.layers.push_back(make_dense(p.in_size, p.units, p.act, p.dropout)); break;
            case LayerKind::Conv2D:
                p.conv.src_layout = in_layout, p.conv.dst_layout = out_layout;
                made.layers.push_back(make_conv2d(p.conv, p.act, relu_into_pool(i)));
                break;
            case LayerKind::MaxPool2D:
                p.pool.in_layout = in_layout, p.pool.out_layout = out_layout;
                made.layers.push_back(make_maxpool2d(p.pool, i > 0 && relu_into_pool(i - 1)));
                break;
            case LayerKind::Dropout: made.layers.push_back(make_dropout(p.in_size, p.dropout)); break;
            case LayerKind::Activation: made.layers.push_back(make_activation(p.in_size, p.act)); break;
            case LayerKind::Flatten: break;
        }
    }
    return made;
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

Model::Model(ModelSpec spec, Device device, ActivationLayouts layouts)
    : m_spec(std::move(spec)), m_device(device), m_layout(layer_layout(m_spec)) {
    detail::Layers made = detail::make_layers(m_spec, device, layouts);
    m_layers = std::move(made.layers);
    m_output_layouts = std::move(made.layouts);
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
