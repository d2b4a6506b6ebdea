// Model specifications: the layer string and its presets, shape inference with the errors a bad
// specification gets, the flat buffer's layout, and Glorot initialisation.
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "cumnist/model.h"
#include "cumnist/philox.h"
#include "layer.h"

namespace cumnist {
namespace {

constexpr std::size_t kMaxLayers = 64;
constexpr int kMaxUnits = 1 << 16;
constexpr int kMaxKernel = 64;

// "conv32k3s2same": the integer after `prefix` at `pos`, advancing pos; nullopt when there is none.
std::optional<int> read_int(const std::string& t, std::size_t& pos) {
    std::size_t end = pos;
    while (end < t.size() && end - pos < 9 && t[end] >= '0' && t[end] <= '9') ++end;
    if (end == pos || (end < t.size() && t[end] >= '0' && t[end] <= '9')) return std::nullopt;
    const int v = std::atoi(t.substr(pos, end - pos).c_str());
    pos = end;
    return v;
}

bool starts_with(const std::string& t, const char* prefix, std::size_t& pos) {
    const std::string p(prefix);
    if (t.compare(0, p.size(), p) != 0) return false;
    pos = p.size();
    return true;
}

[[noreturn]] void bad_token(const std::string& token, const std::string& why) {
    throw Error(fmt::format("model: '{}': {}", token, why));
}

void check_range(const std::string& token, const char* what, int v, int lo, int hi) {
    if (v < lo || v > hi) bad_token(token, fmt::format("{} must be in [{}, {}], got {}", what, lo, hi, v));
}

// k or k x kw, then optional s<stride> (both dimensions), for conv and pool tokens.
void read_window(const std::string& token, std::size_t& pos, LayerSpec& l, bool stride_defaults_to_kernel) {
    const auto k = read_int(token, pos);
    if (!k) bad_token(token, "expected a kernel size after 'k' (e.g. k3)");
    l.k_h = l.k_w = *k;
    if (pos < token.size() && token[pos] == 'x') {
        ++pos;
        const auto kw = read_int(token, pos);
        if (!kw) bad_token(token, "expected a width after 'x' (e.g. k3x5)");
        l.k_w = *kw;
    }
    l.stride_h = stride_defaults_to_kernel ? l.k_h : 1;
    l.stride_w = stride_defaults_to_kernel ? l.k_w : 1;
    if (pos < token.size() && token[pos] == 's' && token.compare(pos, 4, "same") != 0) {
        ++pos;
        const auto s = read_int(token, pos);
        if (!s) bad_token(token, "expected a stride after 's' (e.g. s2)");
        l.stride_h = l.stride_w = *s;
        if (pos < token.size() && token[pos] == 'x') {
            ++pos;
            const auto sw = read_int(token, pos);
            if (!sw) bad_token(token, "expected a width after 'x' (e.g. s2x1)");
            l.stride_w = *sw;
        }
    }
    if (std::min(l.k_h, l.k_w) < 1 || std::max(l.k_h, l.k_w) > kMaxKernel)
        bad_token(token, fmt::format("the window must be in [1, {}] on each side, got {}x{}", kMaxKernel, l.k_h, l.k_w));
    if (std::min(l.stride_h, l.stride_w) < 1 || std::max(l.stride_h, l.stride_w) > kMaxKernel)
        bad_token(token, fmt::format("the stride must be in [1, {}], got {}", kMaxKernel, l.stride_h));
}

LayerSpec parse_token(const std::string& token) {
    LayerSpec l;
    std::size_t pos = 0;
    if (token == "flatten") {
        l.kind = LayerKind::Flatten;
        return l;
    }
    for (Activation a : {Activation::Relu, Activation::Sigmoid, Activation::Tanh})
        if (token == to_string(a)) {
            l.kind = LayerKind::Activation;
            l.activation = a;
            return l;
        }
    if (starts_with(token, "dense", pos)) {
        l.kind = LayerKind::Dense;
        const auto units = read_int(token, pos);
        if (!units || pos != token.size()) bad_token(token, "expected dense<units>, e.g. dense128");
        check_range(token, "the number of units", *units, 1, kMaxUnits);
        l.units = *units;
        return l;
    }
    if (starts_with(token, "conv", pos)) {
        l.kind = LayerKind::Conv2D;
        const auto filters = read_int(token, pos);
        if (!filters || pos >= token.size() || token[pos] != 'k')
            bad_token(token, "expected conv<filters>k<kernel>[s<stride>][same], e.g. conv32k3");
        check_range(token, "the number of filters", *filters, 1, 4096);
        l.units = *filters;
        ++pos;
        read_window(token, pos, l, false);
        if (token.compare(pos, std::string::npos, "same") == 0) {
            l.padding = Padding::Same;
            pos = token.size();
        }
        if (pos != token.size())
            bad_token(token, fmt::format("unexpected '{}' (expected conv<filters>k<kernel>[s<stride>][same])",
                                         token.substr(pos)));
        return l;
    }
    if (starts_with(token, "pool", pos)) {
        l.kind = LayerKind::MaxPool2D;
        read_window(token, pos, l, true);
        if (pos != token.size())
            bad_token(token, fmt::format("unexpected '{}' (expected pool<size>[s<stride>], e.g. pool2)", token.substr(pos)));
        return l;
    }
    if (starts_with(token, "dropout", pos)) {
        l.kind = LayerKind::Dropout;
        const std::string rest = token.substr(pos);
        char* end = nullptr;
        const double rate = rest.empty() ? -1.0 : std::strtod(rest.c_str(), &end);
        if (rest.empty() || end != rest.c_str() + rest.size())
            bad_token(token, "expected dropout<rate>, e.g. dropout0.5");
        if (!(rate >= 0.0 && rate < 1.0)) bad_token(token, fmt::format("the rate must be in [0, 1), got {}", rest));
        l.rate = static_cast<float>(rate);
        return l;
    }
    bad_token(token,
              "unknown layer (expected dense<units>, conv<filters>k<kernel>[s<stride>][same], pool<size>[s<stride>], "
              "flatten, dropout<rate>, relu, sigmoid or tanh)");
}

// Keras/TensorFlow/ONNX SAME_UPPER: out = ceil(in / stride), the padding split with the extra
// row/column after.
void same_padding(int in, int k, int stride, int& before, int& after) {
    const int out = (in + stride - 1) / stride;
    const int total = std::max((out - 1) * stride + k - in, 0);
    before = total / 2;
    after = total - before;
}

}  // namespace

const char* to_string(LayerKind kind) {
    switch (kind) {
        case LayerKind::Dense: return "dense";
        case LayerKind::Conv2D: return "conv2d";
        case LayerKind::MaxPool2D: return "maxpool2d";
        case LayerKind::Flatten: return "flatten";
        case LayerKind::Dropout: return "dropout";
        case LayerKind::Activation: return "activation";
    }
    return "?";
}

std::string LayerSpec::token() const {
    auto window = [&](const char* k) {
        std::string s = fmt::format("{}{}", k, k_h);
        if (k_w != k_h) s += fmt::format("x{}", k_w);
        return s;
    };
    // s<h>[x<w>], left out when the strides are the default (1 for conv, the window for pool).
    auto stride = [&](int default_h, int default_w) {
        if (stride_h == default_h && stride_w == default_w) return std::string();
        return stride_w == stride_h ? fmt::format("s{}", stride_h) : fmt::format("s{}x{}", stride_h, stride_w);
    };
    switch (kind) {
        case LayerKind::Dense: return fmt::format("dense{}", units);
        case LayerKind::Conv2D: {
            return fmt::format("conv{}", units) + window("k") + stride(1, 1) + (padding == Padding::Same ? "same" : "");
        }
        case LayerKind::MaxPool2D: {
            return window("pool") + stride(k_h, k_w);
        }
        case LayerKind::Flatten: return "flatten";
        case LayerKind::Dropout: return fmt::format("dropout{}", rate);
        case LayerKind::Activation: return to_string(activation);
    }
    return "?";
}

bool LayerSpec::operator==(const LayerSpec& o) const {
    return kind == o.kind && units == o.units && k_h == o.k_h && k_w == o.k_w && stride_h == o.stride_h &&
           stride_w == o.stride_w && padding == o.padding && rate == o.rate && activation == o.activation;
}

ModelSpec::ModelSpec(const MlpConfig& mlp) : classes(mlp.classes) {
    mlp.validate();
    // An MNIST-sized input is the 28x28 image; any other size a flat vector (dense reads either).
    input = mlp.inputs == 784 ? Shape{1, 28, 28} : Shape{1, 1, mlp.inputs};
    for (int h : mlp.hidden) {
        layers.push_back({LayerKind::Dense, h});
        if (mlp.activation != Activation::None) {
            LayerSpec act{LayerKind::Activation};
            act.activation = mlp.activation;
            layers.push_back(act);
        }
        if (mlp.dropout > 0.0f) {
            LayerSpec d{LayerKind::Dropout};
            d.rate = mlp.dropout;
            layers.push_back(d);
        }
    }
    layers.push_back({LayerKind::Dense, mlp.classes});
}

std::string ModelSpec::layer_string() const {
    std::string s;
    for (const LayerSpec& l : layers) s += (s.empty() ? "" : ",") + l.token();
    return s;
}

std::optional<MlpConfig> as_mlp(const ModelSpec& spec) {
    // The layers ModelSpec(MlpConfig) makes, recognised by rebuilding them.
    MlpConfig m;
    m.inputs = spec.inputs();
    m.classes = spec.classes;
    m.hidden.clear();
    m.activation = Activation::None;
    m.dropout = 0.0f;
    for (const LayerSpec& l : spec.layers) {
        if (l.kind == LayerKind::Dense) m.hidden.push_back(l.units);
        else if (l.kind == LayerKind::Activation) m.activation = l.activation;
        else if (l.kind == LayerKind::Dropout) m.dropout = l.rate;
        else return std::nullopt;
    }
    if (m.hidden.empty() || m.hidden.back() != spec.classes) return std::nullopt;
    m.hidden.pop_back();
    try {
        if (ModelSpec(m) == spec) return m;
    } catch (const Error&) {
    }
    return std::nullopt;
}

std::string ModelSpec::describe() const {
    if (const auto mlp = as_mlp(*this)) return mlp->describe();
    return layer_string();
}

std::vector<Shape> ModelSpec::shapes() const {
    if (input.c <= 0 || input.h <= 0 || input.w <= 0)
        throw Error(fmt::format("model: the input shape {}x{}x{} must be positive", input.c, input.h, input.w));
    if (classes < 2 || classes > 256)
        throw Error(fmt::format("model: number of classes must be in [2, 256], got {}", classes));
    if (layers.empty()) throw Error("model: no layers");
    if (layers.size() > kMaxLayers) throw Error(fmt::format("model: {} layers (at most {})", layers.size(), kMaxLayers));
    std::vector<Shape> out;
    Shape s = input;
    bool spatial = false;  // the previous layer was a convolution or pooling: flatten before dense
    bool params = false;
    for (std::size_t i = 0; i < layers.size(); ++i) {
        const LayerSpec& l = layers[i];
        const std::string tok = l.token();
        auto fail = [&](const std::string& why) -> void {
            throw Error(fmt::format("model: layer {} '{}': {}", i + 1, tok, why));
        };
        const bool flat = s.h == 1 && s.w == 1 && !spatial && i > 0;
        switch (l.kind) {
            case LayerKind::Dense:
                if (spatial) fail(fmt::format("dense after a {}x{}x{} spatial output needs 'flatten' before it", s.c, s.h, s.w));
                s = {l.units, 1, 1};
                params = true;
                break;
            case LayerKind::Conv2D:
            case LayerKind::MaxPool2D: {
                if (flat) fail(fmt::format("needs a (channels, height, width) input, got a flat vector of {}", s.size()));
                int out_h = 0, out_w = 0;
                if (l.kind == LayerKind::Conv2D && l.padding == Padding::Same) {
                    out_h = (s.h + l.stride_h - 1) / l.stride_h;
                    out_w = (s.w + l.stride_w - 1) / l.stride_w;
                } else {
                    if (l.k_h > s.h || l.k_w > s.w)
                        fail(fmt::format("the {}x{} {} is larger than its {}x{} input{}", l.k_h, l.k_w,
                                         l.kind == LayerKind::Conv2D ? "kernel" : "window", s.h, s.w,
                                         l.kind == LayerKind::Conv2D ? " (padding valid; 'same' pads)" : ""));
                    out_h = (s.h - l.k_h) / l.stride_h + 1;
                    out_w = (s.w - l.k_w) / l.stride_w + 1;
                }
                s = {l.kind == LayerKind::Conv2D ? l.units : s.c, out_h, out_w};
                spatial = true;
                params = params || l.kind == LayerKind::Conv2D;
                break;
            }
            case LayerKind::Flatten:
                s = {s.size(), 1, 1};
                spatial = false;
                break;
            case LayerKind::Dropout:
            case LayerKind::Activation:
                break;
        }
        if (static_cast<double>(s.c) * s.h * s.w > (1 << 24))
            fail(fmt::format("its output of {}x{}x{} values per image is too large", s.c, s.h, s.w));
        out.push_back(s);
    }
    if (!params) throw Error(fmt::format("model: '{}' has no layer with parameters (dense or conv)", layer_string()));
    if (spatial || s.size() != classes)
        throw Error(fmt::format("model: '{}' ends in {} values per image, expected {} (one per class: end in dense{})",
                                layer_string(), s.size(), classes, classes));
    return out;
}

Conv2dGeometry conv_geometry(const LayerSpec& l, Shape in) {
    Conv2dGeometry g;
    g.in_c = in.c, g.in_h = in.h, g.in_w = in.w;
    g.out_c = l.units, g.k_h = l.k_h, g.k_w = l.k_w;
    g.stride_h = l.stride_h, g.stride_w = l.stride_w;
    if (l.padding == Padding::Same) {
        same_padding(in.h, l.k_h, l.stride_h, g.pad_top, g.pad_bottom);
        same_padding(in.w, l.k_w, l.stride_w, g.pad_left, g.pad_right);
    }
    return g;
}

ModelSpec parse_model(const std::string& text, Shape input, int classes, const MlpConfig& mlp) {
    if (text == "mlp") {
        MlpConfig m = mlp;
        m.inputs = input.size();
        m.classes = classes;
        ModelSpec spec(m);
        spec.input = input;
        return spec;
    }
    const std::string layers = text == "cnn" ? cnn_preset() : text;
    ModelSpec spec;
    spec.input = input;
    spec.classes = classes;
    std::size_t start = 0;
    while (start <= layers.size()) {
        const std::size_t comma = std::min(layers.find(',', start), layers.size());
        const std::string token = layers.substr(start, comma - start);
        if (token.empty())
            throw Error(fmt::format("model: empty layer in '{}' (expected a preset, mlp or cnn, or comma-separated layers)",
                                    text));
        spec.layers.push_back(parse_token(token));
        start = comma + 1;
    }
    spec.validate();
    return spec;
}

const char* cnn_preset() { return "conv32k3same,relu,pool2,conv16k3same,relu,pool2,flatten,dropout0.25,dense128,relu,dropout0.5,dense10"; }

std::vector<LayerLayout> layer_layout(const ModelSpec& spec) {
    const std::vector<Shape> shapes = spec.shapes();
    std::vector<LayerLayout> layout;
    std::size_t offset = 0;
    Shape in = spec.input;
    for (std::size_t i = 0; i < spec.layers.size(); ++i) {
        const LayerSpec& l = spec.layers[i];
        if (l.kind == LayerKind::Dense || l.kind == LayerKind::Conv2D) {
            const int fan_in = l.kind == LayerKind::Dense ? in.size() : in.c * l.k_h * l.k_w;
            LayerLayout p{fan_in, l.units, offset, offset + static_cast<std::size_t>(fan_in) * l.units};
            offset = p.b_offset + static_cast<std::size_t>(l.units);
            layout.push_back(p);
        }
        in = shapes[i];
    }
    return layout;
}

std::size_t parameter_count(const ModelSpec& spec) {
    const auto layout = layer_layout(spec);
    return layout.back().b_offset + static_cast<std::size_t>(layout.back().out);
}

std::vector<float> glorot_uniform_init(const ModelSpec& spec, uint64_t seed) {
    constexpr uint32_t kInitStream = 0x1u;
    std::vector<float> params(parameter_count(spec), 0.0f);
    const auto layout = layer_layout(spec);
    std::size_t p = 0;
    for (const LayerSpec& l : spec.layers) {
        if (l.kind != LayerKind::Dense && l.kind != LayerKind::Conv2D) continue;
        const LayerLayout& layer = layout[p];
        const int receptive = l.kind == LayerKind::Conv2D ? l.k_h * l.k_w : 1;
        // fan_in + fan_out: in·kh·kw + out·kh·kw for a convolution, in + out for a dense layer.
        const double limit = std::sqrt(6.0 / (layer.in + static_cast<double>(layer.out) * receptive));
        const std::size_t n = static_cast<std::size_t>(layer.in) * layer.out;
        for (std::size_t i = 0; i < n; ++i) {
            const float u = word_to_unit_float(philox_word(seed, kInitStream, p, i));  // [0, 1)
            params[layer.w_offset + i] = static_cast<float>((2.0 * u - 1.0) * limit);
        }
        ++p;
    }
    return params;
}

std::vector<double> layer_macs(const ModelSpec& spec) {
    const std::vector<Shape> shapes = spec.shapes();
    const auto layout = layer_layout(spec);
    std::vector<double> macs;
    std::size_t p = 0;
    for (std::size_t i = 0; i < spec.layers.size(); ++i) {
        const LayerSpec& l = spec.layers[i];
        if (l.kind != LayerKind::Dense && l.kind != LayerKind::Conv2D) continue;
        const double per_output = static_cast<double>(layout[p].in) * layout[p].out;
        macs.push_back(l.kind == LayerKind::Dense ? per_output
                                                  : per_output * shapes[i].h * static_cast<double>(shapes[i].w));
        ++p;
    }
    return macs;
}

}  // namespace cumnist

namespace cumnist {

nlohmann::json model_to_json(const ModelSpec& spec) {
    using nlohmann::json;
    json layers = json::array();
    for (const LayerSpec& l : spec.layers) {
        json j = {{"type", to_string(l.kind)}};
        switch (l.kind) {
            case LayerKind::Dense: j["units"] = l.units; break;
            case LayerKind::Conv2D:
                j["filters"] = l.units;
                j["kernel"] = {l.k_h, l.k_w};
                j["stride"] = {l.stride_h, l.stride_w};
                j["padding"] = l.padding == Padding::Same ? "same" : "valid";
                break;
            case LayerKind::MaxPool2D:
                j["pool"] = {l.k_h, l.k_w};
                j["stride"] = {l.stride_h, l.stride_w};
                break;
            case LayerKind::Dropout: j["rate"] = std::strtod(fmt::format("{}", l.rate).c_str(), nullptr); break;
            case LayerKind::Activation: j["activation"] = to_string(l.activation); break;
            case LayerKind::Flatten: break;
        }
        layers.push_back(j);
    }
    return {{"input", {spec.input.c, spec.input.h, spec.input.w}}, {"classes", spec.classes}, {"layers", layers}};
}

ModelSpec model_from_json(const nlohmann::json& j) {
    using nlohmann::json;
    auto fail = [](const std::string& why) -> void { throw Error(why); };
    auto integer = [&](const json& v, const char* what) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 24))
            fail(fmt::format("{} must be an integer in [0, {}], found {}", what, 1 << 24, v.dump().substr(0, 40)));
        return v.get<int>();
    };
    auto pair = [&](const json& v, const char* what) {
        if (!v.is_array() || v.size() != 2) fail(fmt::format("{} must be [height, width], found {}", what, v.dump().substr(0, 40)));
        return std::pair<int, int>{integer(v[0], what), integer(v[1], what)};
    };
    auto field = [&](const json& o, const char* key) -> const json& {
        const auto it = o.find(key);
        if (it == o.end()) fail(fmt::format("'{}' is missing in {}", key, o.dump().substr(0, 80)));
        return *it;
    };
    if (!j.is_object()) fail(fmt::format("expected an object with input, classes and layers, found {}", j.dump().substr(0, 80)));
    const json& input = field(j, "input");
    if (!input.is_array() || input.size() != 3) fail(fmt::format("input must be [channels, height, width], found {}", input.dump().substr(0, 40)));
    ModelSpec spec;
    spec.input = {integer(input[0], "input"), integer(input[1], "input"), integer(input[2], "input")};
    spec.classes = integer(field(j, "classes"), "classes");
    const json& layers = field(j, "layers");
    if (!layers.is_array() || layers.size() > kMaxLayers)
        fail(fmt::format("layers must be an array of at most {} layers", kMaxLayers));
    for (const json& lj : layers) {
        if (!lj.is_object()) fail(fmt::format("a layer must be an object, found {}", lj.dump().substr(0, 40)));
        const json& type = field(lj, "type");
        const std::string t = type.is_string() ? type.get<std::string>() : type.dump();
        LayerSpec l;
        if (t == "dense") {
            l.kind = LayerKind::Dense;
            l.units = integer(field(lj, "units"), "units");
        } else if (t == "conv2d" || t == "maxpool2d") {
            l.kind = t == "conv2d" ? LayerKind::Conv2D : LayerKind::MaxPool2D;
            std::tie(l.k_h, l.k_w) = pair(field(lj, t == "conv2d" ? "kernel" : "pool"), "kernel");
            std::tie(l.stride_h, l.stride_w) = pair(field(lj, "stride"), "stride");
            if (t == "conv2d") {
                l.units = integer(field(lj, "filters"), "filters");
                const json& pad = field(lj, "padding");
                if (pad != "same" && pad != "valid") fail(fmt::format("padding must be \"same\" or \"valid\", found {}", pad.dump()));
                l.padding = pad == "same" ? Padding::Same : Padding::Valid;
            }
        } else if (t == "flatten") {
            l.kind = LayerKind::Flatten;
        } else if (t == "dropout") {
            l.kind = LayerKind::Dropout;
            const json& rate = field(lj, "rate");
            if (!rate.is_number() || !(rate.get<double>() >= 0.0 && rate.get<double>() < 1.0))
                fail(fmt::format("a dropout rate must be a number in [0, 1), found {}", rate.dump()));
            l.rate = rate.get<float>();
        } else if (t == "activation") {
            l.kind = LayerKind::Activation;
            const json& a = field(lj, "activation");
            bool known = false;
            for (Activation act : {Activation::Relu, Activation::Sigmoid, Activation::Tanh})
                if (a == to_string(act)) l.activation = act, known = true;
            if (!known) fail(fmt::format("activation {} is not relu, sigmoid or tanh", a.dump().substr(0, 40)));
        } else {
            fail(fmt::format("unknown layer type {}", type.dump().substr(0, 40)));
        }
        // The same ranges the layer string enforces.
        try {
            parse_token(l.token());
        } catch (const Error& e) {
            fail(e.what());
        }
        spec.layers.push_back(l);
    }
    spec.validate();
    return spec;
}

}  // namespace cumnist
