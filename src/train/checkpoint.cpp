// Checkpoints in the safetensors layout: writing, and reading with every field validated before
// anything the header claims is allocated or read.
#include "cumnist/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string_view>

#include "cumnist/file_io.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoints are read and written as little-endian F32: a big-endian host needs byte swapping"
#endif

namespace cumnist {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "cumnist";
// 1: the MLP's inputs/hidden/classes/activation/dropout; 2: the layer list (model_to_json).
// Version 3 adds the training settings an older reader would silently drop (validation_split,
// lr_schedule, early_stopping, best_on); a checkpoint without them is written as version 2, which every
// reader since the layered models reads.
constexpr int kFormatVersion = 3;
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MB: safetensors' own limit
constexpr std::size_t kMaxLayers = 64;
constexpr int kMaxInputs = 1 << 24;

// One tensor the file should hold: its name, shape, and where its values go in a flat buffer.
struct TensorSpec {
    std::string name;
    std::vector<uint64_t> shape;
    int buffer = 0;  // 0: parameters, 1 + i: optimizer state i
    std::size_t offset = 0, count = 0;
};

// One tensor as the header describes it (validated against the data section).
struct Entry {
    std::string name;
    std::vector<uint64_t> shape;
    uint64_t begin = 0, end = 0;
};

std::string shape_text(const std::vector<uint64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// The tensors of a model (and of its optimizer's state, when `with_state`), in data order. A
// convolution's weight is [filters, channels, kh, kw], a dense layer's [out, in].
std::vector<TensorSpec> expected_tensors(const ModelSpec& model, OptimizerKind kind, bool with_state) {
    std::vector<TensorSpec> specs;
    const std::vector<LayerLayout> layout = layer_layout(model);
    std::vector<std::vector<uint64_t>> weight_shapes;
    {
        Shape in = model.input;
        const std::vector<Shape> shapes = model.shapes();
        for (std::size_t i = 0; i < model.layers.size(); ++i) {
            const LayerSpec& l = model.layers[i];
            if (l.kind == LayerKind::Dense)
                weight_shapes.push_back({static_cast<uint64_t>(l.units), static_cast<uint64_t>(in.size())});
            else if (l.kind == LayerKind::Conv2D)
                weight_shapes.push_back({static_cast<uint64_t>(l.units), static_cast<uint64_t>(in.c),
                                         static_cast<uint64_t>(l.k_h), static_cast<uint64_t>(l.k_w)});
            in = shapes[i];
        }
    }
    std::vector<std::string> prefixes = {""};
    if (with_state)
        for (const std::string& s : optimizer_state_names(kind)) prefixes.push_back("optimizer." + s + ".");
    for (std::size_t b = 0; b < prefixes.size(); ++b) {
        for (std::size_t l = 0; l < layout.size(); ++l) {
            const LayerLayout& L = layout[l];
            const std::string layer = fmt::format("{}layers.{}.", prefixes[b], l);
            specs.push_back({layer + "weight", weight_shapes[l], static_cast<int>(b), L.w_offset,
                             static_cast<std::size_t>(L.out) * static_cast<std::size_t>(L.in)});
            specs.push_back({layer + "bias", {static_cast<uint64_t>(L.out)}, static_cast<int>(b), L.b_offset,
                             static_cast<std::size_t>(L.out)});
        }
    }
    return specs;
}

// A float as the shortest decimal that reads back as the same float ("0.2", not 0.200000003).
double readable(float f) {
    const double shortest = std::strtod(fmt::format("{}", f).c_str(), nullptr);
    return static_cast<float>(shortest) == f ? shortest : static_cast<double>(f);
}

double number_or_nan(const json& j, const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::nan("");
    return it->get<double>();
}

json metrics_to_json(const EpochMetrics& m) {
    auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    json j = {{"epoch", m.epoch},
            {"train_loss", num(m.train_loss)},
            {"train_accuracy", num(m.train_accuracy)},
            {m.on_validation ? "validation_loss" : "test_loss", num(m.test_loss)},
            {m.on_validation ? "validation_accuracy" : "test_accuracy", num(m.test_accuracy)},
            {"seconds", num(m.seconds)},
            {"eval_seconds", num(m.eval_seconds)},
            {"samples_per_second", num(m.samples_per_second)},
            {"lr", num(m.lr)}};
    if (m.steps > 0) j["steps"] = m.steps, j["first_step"] = m.first_step + 1;  // unknown in older checkpoints
    return j;
}

std::map<std::string, std::string> metadata_strings(const CheckpointMeta& meta) {
    const OptimizerConfig& o = meta.optimizer;
    json history = json::array();
    for (const EpochMetrics& e : meta.history) history.push_back(metrics_to_json(e));
    const json model = model_to_json(meta.model);
    const json optimizer = {{"name", to_string(o.kind)}, {"lr", readable(o.lr)},           {"beta1", readable(o.beta1)},
                            {"beta2", readable(o.beta2)}, {"epsilon", readable(o.epsilon)}, {"momentum", readable(o.momentum)},
                            {"rho", readable(o.rho)}};
    // safetensors metadata maps strings to strings: every value but "format" is JSON text.
    std::map<std::string, std::string> strings = {{"format", kFormat},
            {"format_version", json(meta.validation_split > 0 || meta.schedule.kind != ScheduleKind::Constant ||
                                            meta.early_stopping > 0 || meta.best_on_loss
                                        ? kFormatVersion
                                        : 2)
                                   .dump()},
            {"model", model.dump()},
            {"optimizer", optimizer.dump()},
            {"epoch", json(meta.epoch).dump()},
            {"epochs", json(meta.epochs).dump()},
            {"step", json(meta.step).dump()},
            {"epoch_step", json(meta.epoch_step).dump()},
            {"seed", json(meta.seed).dump()},
            {"batch_size", json(meta.batch).dump()},
            {"dataset", json(meta.dataset).dump()},
            {"device", json(meta.device).dump()},
            {"metrics", history.dump()}};
    if (meta.validation_split > 0) strings["validation_split"] = json(meta.validation_split).dump();
    if (meta.schedule.kind != ScheduleKind::Constant) strings["lr_schedule"] = schedule_to_json(meta.schedule).dump();
    if (meta.early_stopping > 0) strings["early_stopping"] = json(meta.early_stopping).dump();
    if (meta.best_on_loss) strings["best_on"] = json("loss").dump();
    return strings;
}

bool same_optimizer(const OptimizerConfig& a, const OptimizerConfig& b) {
    return a.kind == b.kind && a.lr == b.lr && a.beta1 == b.beta1 && a.beta2 == b.beta2 && a.epsilon == b.epsilon &&
           a.momentum == b.momentum && a.rho == b.rho;
}

const char* json_type(const json& j) { return j.type_name(); }

// Reads a safetensors header and data section. `fail` prefixes every message with the file name.
class Reader {
public:
    explicit Reader(std::string name) : m_name(std::move(name)) {}

    template <class... Args>
    [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) const {
        throw Error(fmt::format("checkpoint '{}': {}", m_name, fmt::format(f, std::forward<Args>(args)...)));
    }

    // The header length from the first 8 bytes, checked against the file size and the limit.
    uint64_t header_length(const unsigned char* first8, uint64_t file_size) const {
        if (file_size < 8)
            fail("the file is {} bytes, too short for a safetensors file (8-byte header length, JSON header, data)",
                 file_size);
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | first8[i];
        if (n > kMaxHeaderBytes)
            fail("the header length in bytes 0-7 is {}, more than the {} bytes a header may have; not a safetensors "
                 "checkpoint, or a damaged one",
                 n, kMaxHeaderBytes);
        if (n > file_size - 8)
            fail("the header length in bytes 0-7 is {}, but only {} bytes follow; the file is truncated or not a "
                 "safetensors checkpoint",
                 n, file_size - 8);
        if (n < 2) fail("the header length in bytes 0-7 is {}, too short for a JSON object", n);
        return n;
    }

    // Validates the JSON header against a data section of `data_size` bytes; fills meta and entries.
    void parse_header(std::string_view text, uint64_t data_size) {
        json header;
        // JSON allows an object to repeat a key, and the parser keeps the last: two entries for one
        // tensor, or two __metadata__ objects, would let one silently replace the other. Every
        // object's keys are tracked while it is parsed and a repeat is refused.
        std::vector<std::vector<std::string>> keys;  // per open object, its keys so far
        std::string duplicate;
        const json::parser_callback_t no_repeats = [&](int, json::parse_event_t event, json& parsed) {
            if (event == json::parse_event_t::object_start) keys.emplace_back();
            else if (event == json::parse_event_t::object_end && !keys.empty()) keys.pop_back();
            else if (event == json::parse_event_t::key && !keys.empty() && duplicate.empty()) {
                std::vector<std::string>& seen = keys.back();
                const std::string key = parsed.get<std::string>();
                if (std::find(seen.begin(), seen.end(), key) != seen.end()) duplicate = key;
                seen.push_back(key);
            }
            return true;
        };
        try {
            header = json::parse(text.begin(), text.end(), no_repeats);
        } catch (const json::exception& e) {
            fail("the header is not valid JSON: {}", strip_json_prefix(e.what()));
        }
        if (!duplicate.empty())
            fail("the header names '{}' twice; each tensor, and __metadata__ and each of its entries, may appear once",
                 duplicate);
        if (!header.is_object()) fail("the header is a JSON {}, expected an object of tensors", json_type(header));
        bool has_meta = false;
        for (auto it = header.begin(); it != header.end(); ++it) {
            if (it.key() == "__metadata__") {
                parse_metadata(it.value());
                has_meta = true;
            } else {
                m_entries.push_back(parse_entry(it.key(), it.value()));
            }
        }
        if (!has_meta)
            fail("the header has no __metadata__; not a cumnist checkpoint (expected the model, optimizer, epoch, ... "
                 "entries cumnist writes)");
        match_tensors();
        check_tiling(data_size);
    }

    // The tensors' values, from the data section (already known to be exactly data_size bytes).
    Checkpoint assemble(const char* data) {
        Checkpoint c;
        c.meta = m_meta;
        c.parameters.assign(parameter_count(m_meta.model), 0.0f);
        if (m_has_state)
            c.optimizer_state.assign(optimizer_state_names(m_meta.optimizer.kind).size(),
                                     std::vector<float>(c.parameters.size(), 0.0f));
        const std::vector<std::string> state = optimizer_state_names(m_meta.optimizer.kind);
        for (const TensorSpec& s : m_specs) {
            const Entry& e = *m_by_name.at(s.name);
            float* dst = s.buffer == 0 ? c.parameters.data() : c.optimizer_state[s.buffer - 1].data();
            std::memcpy(dst + s.offset, data + e.begin, s.count * sizeof(float));
            // Every value finite, and the optimizers' running squares (Adam's v, RMSprop's s) not
            // negative: a model or state that would train into NaN is refused here, not later.
            const bool squares = s.buffer > 0 && (state[s.buffer - 1] == "adam.v" || state[s.buffer - 1] == "rmsprop.s");
            for (std::size_t i = 0; i < s.count; ++i) {
                const float v = dst[s.offset + i];
                if (!std::isfinite(v))
                    fail("tensor '{}' holds {} at index {}; a checkpoint's values must be finite (the run that "
                         "saved it diverged, or the file is damaged)",
                         s.name, std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf", i);
                if (squares && v < 0.0f)
                    fail("tensor '{}' holds {} at index {}; the optimizer's running mean of squared gradients "
                         "cannot be negative (the file is damaged)",
                         s.name, v, i);
            }
        }
        return c;
    }

private:
    static std::string strip_json_prefix(const std::string& what) {
        // "[json.exception.parse_error.101] parse error at ..." -> "parse error at ..."
        const std::size_t close = what.find("] ");
        return what.rfind("[json.exception", 0) == 0 && close != std::string::npos ? what.substr(close + 2) : what;
    }

    uint64_t unsigned_value(const json& j, const std::string& what) const {
        if (!j.is_number_unsigned()) fail("{} must be a non-negative integer, found {}", what, j.dump());
        return j.get<uint64_t>();
    }

    Entry parse_entry(const std::string& name, const json& j) const {
        if (!j.is_object()) fail("tensor '{}' is a JSON {}, expected an object with dtype, shape and data_offsets", name,
                                 json_type(j));
        for (const char* key : {"dtype", "shape", "data_offsets"})
            if (!j.contains(key)) fail("tensor '{}' has no '{}' (expected dtype, shape and data_offsets)", name, key);
        const json& dtype = j["dtype"];
        if (!dtype.is_string()) fail("tensor '{}': dtype is {}, expected the string \"F32\"", name, dtype.dump());
        if (dtype.get<std::string>() != "F32")
            fail("tensor '{}' has dtype '{}'; cumnist checkpoints hold F32 (32-bit float) tensors only", name,
                 dtype.get<std::string>());
        Entry e;
        e.name = name;
        const json& shape = j["shape"];
        if (!shape.is_array() || shape.size() > 8)
            fail("tensor '{}': shape is {}, expected an array of at most 8 sizes", name, shape.dump());
        // The element count, with overflow caught: anything beyond 2^60 cannot fit any file anyway.
        uint64_t count = 1;
        bool huge = false;
        for (const json& d : shape) {
            const uint64_t v = unsigned_value(d, fmt::format("tensor '{}': every size in shape {}", name, shape.dump()));
            e.shape.push_back(v);
            if (v != 0 && count > (uint64_t{1} << 60) / v) huge = true;
            count = huge ? count : count * v;
        }
        const json& offsets = j["data_offsets"];
        if (!offsets.is_array() || offsets.size() != 2)
            fail("tensor '{}': data_offsets is {}, expected [begin, end]", name, offsets.dump());
        e.begin = unsigned_value(offsets[0], fmt::format("tensor '{}': data_offsets begin", name));
        e.end = unsigned_value(offsets[1], fmt::format("tensor '{}': data_offsets end", name));
        if (e.end < e.begin) fail("tensor '{}': data_offsets [{}, {}] end before they begin", name, e.begin, e.end);
        if (huge || e.end - e.begin != count * 4)
            fail("tensor '{}': shape {} of F32 needs {} bytes, but data_offsets [{}, {}] span {}", name,
                 shape_text(e.shape), huge ? std::string("more than 2^62") : std::to_string(count * 4), e.begin, e.end,
                 e.end - e.begin);
        return e;
    }

    // The tensors must tile the data section exactly: inside it, no overlaps, no unclaimed bytes.
    void check_tiling(uint64_t data_size) {
        std::vector<const Entry*> sorted;
        for (const Entry& e : m_entries) sorted.push_back(&e);
        std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) {
            return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
        });
        for (const Entry* e : sorted)  // first: the tensors that run past the end (a truncated file)
            if (e->end > data_size)
                fail("tensor '{}' occupies bytes [{}, {}) of the data section, but the file holds only {} bytes of "
                     "data; the file is truncated",
                     e->name, e->begin, e->end, data_size);
        uint64_t covered = 0;
        const Entry* previous = nullptr;
        for (const Entry* e : sorted) {
            if (previous && e->begin < covered)
                fail("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap in the data section", previous->name,
                     previous->begin, previous->end, e->name, e->begin, e->end);
            if (e->begin > covered)
                fail("bytes [{}, {}) of the data section belong to no tensor (the offsets leave a gap)", covered,
                     e->begin);
            covered = e->end;
            previous = e;
        }
        if (covered != data_size)
            fail("the data section has {} bytes, but the tensors cover only the first {} (extra data after the last "
                 "tensor)",
                 data_size, covered);
    }

    const json& meta_entry(const json& meta, const char* key) const {
        if (!meta.contains(key)) fail("__metadata__ has no '{}' entry; not a cumnist checkpoint, or a damaged one", key);
        return meta[key];
    }

    json meta_json(const json& meta, const char* key) const {
        const json& v = meta_entry(meta, key);
        if (!v.is_string()) fail("__metadata__ '{}' is a JSON {}; safetensors metadata values must be strings", key,
                                 json_type(v));
        try {
            return json::parse(v.get<std::string>());
        } catch (const json::exception& e) {
            fail("__metadata__ '{}' is not valid JSON text ({}): {}", key, strip_json_prefix(e.what()),
                 v.get<std::string>().substr(0, 80));
        }
    }

    // A non-negative integer entry in [lo, hi].
    template <class T>
    T meta_number(const json& meta, const char* key, uint64_t lo, uint64_t hi) const {
        const json v = meta_json(meta, key);
        if (!v.is_number_unsigned() || v.get<uint64_t>() < lo || v.get<uint64_t>() > hi)
            fail("__metadata__ '{}' is {}, expected an integer in [{}, {}]", key, v.dump(), lo, hi);
        return static_cast<T>(v.get<uint64_t>());
    }

    // Format version 1: an MLP as inputs, hidden, classes, activation and dropout.
    ModelSpec legacy_mlp(const json& model) const {
        MlpConfig m;
        std::string activation;
        try {
            // Sizes must be integers that fit an int; validate() then checks their ranges.
            auto size = [&](const json& v) {
                const bool fits = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t{INT32_MAX}
                                                          : v.is_number_integer() && v.get<int64_t>() >= INT32_MIN;
                if (!fits) fail("__metadata__ 'model': sizes must be integers, found {}", v.dump());
                return v.get<int>();
            };
            m.inputs = size(model.at("inputs"));
            m.classes = size(model.at("classes"));
            const json& hidden = model.at("hidden");
            if (!hidden.is_array() || hidden.size() > kMaxLayers)
                fail("__metadata__ 'model': hidden is {}, expected an array of at most {} sizes",
                     hidden.dump().substr(0, 200), kMaxLayers);
            m.hidden.clear();
            for (const json& h : hidden) m.hidden.push_back(size(h));
            m.dropout = model.at("dropout").get<float>();
            activation = model.at("activation").get<std::string>();
        } catch (const json::exception& e) {
            fail("__metadata__ 'model' is {}, not a model description ({}); expected input, classes and layers",
                 model.dump().substr(0, 200), strip_json_prefix(e.what()));
        }
        if (activation == "relu")
            m.activation = Activation::Relu;
        else if (activation == "sigmoid")
            m.activation = Activation::Sigmoid;
        else
            fail("__metadata__ 'model': activation '{}' is not relu or sigmoid", activation);
        if (m.inputs > kMaxInputs)
            fail("__metadata__ 'model': {} inputs exceed cumnist's limit of {}", m.inputs, kMaxInputs);
        try {
            return ModelSpec(m);  // validates
        } catch (const Error& e) {
            fail("__metadata__ 'model': {}", e.what());
        }
    }

    void parse_metadata(const json& meta) {
        if (!meta.is_object()) fail("__metadata__ is a JSON {}, expected an object of strings", json_type(meta));
        const json& format = meta_entry(meta, "format");
        if (format != kFormat)
            fail("__metadata__ 'format' is {}, expected \"{}\"; not a cumnist checkpoint", format.dump(), kFormat);
        const int version = meta_number<int>(meta, "format_version", 1, 1u << 20);
        if (version > kFormatVersion)
            fail("format version {} is newer than this cumnist reads (version {}); update cumnist", version,
                 kFormatVersion);
        const json model = meta_json(meta, "model");
        if (model.is_object() && model.contains("layers")) {
            try {
                m_meta.model = model_from_json(model);
            } catch (const Error& e) {
                fail("__metadata__ 'model': {}", e.what());
            }
        } else {
            m_meta.model = legacy_mlp(model);
        }

        OptimizerConfig& o = m_meta.optimizer;
        const json opt = meta_json(meta, "optimizer");
        std::string kind;
        try {
            kind = opt.at("name").get<std::string>();
            o.lr = opt.at("lr").get<float>();
            o.beta1 = opt.at("beta1").get<float>();
            o.beta2 = opt.at("beta2").get<float>();
            o.epsilon = opt.at("epsilon").get<float>();
            o.momentum = opt.at("momentum").get<float>();
            o.rho = opt.at("rho").get<float>();
        } catch (const json::exception& e) {
            fail("__metadata__ 'optimizer' is {}, not an optimizer description ({}); expected name, lr, beta1, beta2, "
                 "epsilon, momentum, rho",
                 opt.dump().substr(0, 200), strip_json_prefix(e.what()));
        }
        try {
            o.kind = parse_optimizer(kind);
            o.validate();
        } catch (const Error& e) {
            fail("__metadata__ 'optimizer': {}", e.what());
        }
        m_meta.epoch = meta_number<int>(meta, "epoch", 0, kMaxEpochs);
        m_meta.epochs = meta_number<int>(meta, "epochs", 0, kMaxEpochs);
        m_meta.step = meta_number<uint64_t>(meta, "step", 0, std::numeric_limits<uint64_t>::max());
        // Written since interruption support: absent means the checkpoint is at an epoch boundary.
        m_meta.epoch_step = meta.contains("epoch_step") ? meta_number<int>(meta, "epoch_step", 0, 1u << 30) : 0;
        m_meta.seed = meta_number<uint64_t>(meta, "seed", 0, std::numeric_limits<uint64_t>::max());
        m_meta.batch = meta_number<int>(meta, "batch_size", 1, 1u << 30);
        if (meta.contains("validation_split")) {
            const json v = meta_json(meta, "validation_split");
            if (!v.is_number() || !(v.get<double>() > 0.0 && v.get<double>() < 1.0))
                fail("__metadata__ 'validation_split' is {}, expected a fraction in (0, 1)", v.dump());
            m_meta.validation_split = v.get<double>();
        }
        if (meta.contains("lr_schedule")) {
            try {
                m_meta.schedule = schedule_from_json(meta_json(meta, "lr_schedule"));
            } catch (const Error& e) {
                fail("__metadata__ 'lr_schedule': {}", e.what());
            }
        }
        if (meta.contains("early_stopping"))
            m_meta.early_stopping = meta_number<int>(meta, "early_stopping", 1, 1u << 30);
        if (meta.contains("best_on")) {
            const json v = meta_json(meta, "best_on");
            if (v != "loss" && v != "accuracy")
                fail("__metadata__ 'best_on' is {}, expected \"loss\" or \"accuracy\"", v.dump());
            m_meta.best_on_loss = v == "loss";
        }
        for (const char* key : {"dataset", "device"}) {
            const json v = meta_json(meta, key);
            if (!v.is_string()) fail("__metadata__ '{}' is {}, expected a JSON string", key, v.dump());
            (std::string_view(key) == "dataset" ? m_meta.dataset : m_meta.device) = v.get<std::string>();
        }
        const json history = meta_json(meta, "metrics");
        if (!history.is_array()) fail("__metadata__ 'metrics' is a JSON {}, expected an array", json_type(history));
        try {
            for (const json& h : history) {
                EpochMetrics e;
                const json& ep = h.at("epoch");
                if (!ep.is_number_unsigned() || ep.get<uint64_t>() > (1u << 30))
                    fail("__metadata__ 'metrics' holds an epoch of {}, expected an integer in [0, {}]", ep.dump(),
                         1u << 30);
                e.epoch = static_cast<int>(ep.get<uint64_t>());
                e.train_loss = number_or_nan(h, "train_loss");
                e.train_accuracy = number_or_nan(h, "train_accuracy");
                e.on_validation = h.contains("validation_accuracy");
                e.test_loss = number_or_nan(h, e.on_validation ? "validation_loss" : "test_loss");
                e.test_accuracy = number_or_nan(h, e.on_validation ? "validation_accuracy" : "test_accuracy");
                e.seconds = number_or_nan(h, "seconds");
                e.eval_seconds = number_or_nan(h, "eval_seconds");
                e.samples_per_second = number_or_nan(h, "samples_per_second");
                e.lr = number_or_nan(h, "lr");
                // Written since the metrics say which steps they cover; absent: the whole epoch.
                const double steps = number_or_nan(h, "steps"), first = number_or_nan(h, "first_step");
                if (!std::isnan(steps)) {
                    if (!(steps >= 0 && steps <= (1u << 30) && steps == std::floor(steps)))
                        fail("__metadata__ 'metrics' holds {} steps in epoch {}, expected an integer in [0, {}]",
                             steps, e.epoch, 1u << 30);
                    e.steps = static_cast<int>(steps);
                }
                if (!std::isnan(first)) {
                    if (!(first >= 1 && first <= (1u << 30) && first == std::floor(first)))
                        fail("__metadata__ 'metrics' holds first_step {} in epoch {}, expected an integer in [1, {}]",
                             first, e.epoch, 1u << 30);
                    e.first_step = static_cast<int>(first) - 1;
                }
                m_meta.history.push_back(e);
            }
        } catch (const json::exception& e) {
            fail("__metadata__ 'metrics' holds an entry that is not an epoch's metrics: {}", strip_json_prefix(e.what()));
        }
    }

    // The header's tensors must be exactly the model's (and, if any is there, all of its optimizer's).
    void match_tensors() {
        for (const Entry& e : m_entries) m_by_name[e.name] = &e;
        m_has_state = std::any_of(m_entries.begin(), m_entries.end(),
                                  [](const Entry& e) { return e.name.rfind("optimizer.", 0) == 0; });
        m_specs = expected_tensors(m_meta.model, m_meta.optimizer.kind, m_has_state);
        const std::string model = m_meta.model.describe();
        // What the file holds besides the parameters: all of its optimizer's state, or none of it.
        const std::string state =
            m_has_state ? fmt::format("{} optimizer", to_string(m_meta.optimizer.kind)) : std::string("no optimizer");
        for (const TensorSpec& s : m_specs) {
            const auto it = m_by_name.find(s.name);
            if (it == m_by_name.end())
                fail("missing tensor '{}' (the model {} with {} state has {} tensors)", s.name, model, state,
                     m_specs.size());
            if (it->second->shape != s.shape)
                fail("tensor '{}' has shape {}, but the model in the metadata ({}) needs {}", s.name,
                     shape_text(it->second->shape), model, shape_text(s.shape));
        }
        if (m_specs.size() != m_entries.size()) {
            for (const Entry& e : m_entries) {
                const bool known = std::any_of(m_specs.begin(), m_specs.end(),
                                               [&](const TensorSpec& s) { return s.name == e.name; });
                if (!known)
                    fail("unexpected tensor '{}': the model {} with {} state has only layers.{{0..{}}}.{{weight,bias}}{}",
                         e.name, model, state, layer_layout(m_meta.model).size() - 1,
                         m_has_state ? " and their optimizer.* state" : "");
            }
        }
    }

    std::string m_name;
    CheckpointMeta m_meta;
    std::vector<Entry> m_entries;
    std::map<std::string, const Entry*> m_by_name;
    std::vector<TensorSpec> m_specs;
    bool m_has_state = false;
};

}  // namespace

std::string metrics_json(const EpochMetrics& m) { return metrics_to_json(m).dump(); }

std::vector<std::string> optimizer_state_names(OptimizerKind kind) {
    switch (kind) {
        case OptimizerKind::Adam: return {"adam.m", "adam.v"};
        case OptimizerKind::Sgd: return {"sgd.velocity"};
        case OptimizerKind::RmsProp: return {"rmsprop.s"};
    }
    return {};
}

std::string serialize_checkpoint(const Checkpoint& c) {
    c.meta.model.validate();
    const std::size_t n = parameter_count(c.meta.model);
    CUMNIST_CHECK(c.parameters.size() == n, "checkpoint holds {} parameters, the model {} has {}", c.parameters.size(),
                  c.meta.model.describe(), n);
    const bool with_state = !c.optimizer_state.empty();
    if (with_state) {
        CUMNIST_CHECK(c.optimizer_state.size() == optimizer_state_names(c.meta.optimizer.kind).size(),
                      "{} optimizer state buffers for {}", c.optimizer_state.size(), to_string(c.meta.optimizer.kind));
        for (const auto& s : c.optimizer_state)
            CUMNIST_CHECK(s.size() == n, "optimizer state of {} values for {} parameters", s.size(), n);
    }
    json header = json::object();
    header["__metadata__"] = metadata_strings(c.meta);
    std::string data;
    uint64_t offset = 0;
    for (const TensorSpec& s : expected_tensors(c.meta.model, c.meta.optimizer.kind, with_state)) {
        const uint64_t bytes = s.count * sizeof(float);
        header[s.name] = {{"dtype", "F32"}, {"shape", s.shape}, {"data_offsets", {offset, offset + bytes}}};
        const float* src = s.buffer == 0 ? c.parameters.data() : c.optimizer_state[s.buffer - 1].data();
        data.append(reinterpret_cast<const char*>(src + s.offset), bytes);
        offset += bytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data starts 8-byte aligned
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xffu);
    out += text;
    out += data;
    return out;
}

Checkpoint parse_checkpoint(const std::string& name, const std::string& bytes) {
    Reader r(name);
    const uint64_t n = r.header_length(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    r.parse_header(std::string_view(bytes).substr(8, n), bytes.size() - 8 - n);
    return r.assemble(bytes.data() + 8 + n);
}

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
    write_file_atomically(path, serialize_checkpoint(checkpoint), "checkpoint ");
}

Checkpoint load_checkpoint(const std::string& path) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
        throw Error(fmt::format("checkpoint '{}' is a folder, expected a .safetensors file (e.g. {}/last.safetensors)",
                                path, path));
    std::ifstream in;
    if (std::filesystem::exists(path, ec)) require_regular_input(path, "a .safetensors checkpoint");  // no FIFO, no device
    in.open(path, std::ios::binary);
    if (!in) throw Error(fmt::format("cannot open checkpoint '{}': {}", path, std::strerror(errno)));
    const uint64_t size = std::filesystem::file_size(path, ec);
    if (ec) throw Error(fmt::format("cannot read checkpoint '{}': {}", path, ec.message()));
    auto read = [&](char* dst, uint64_t n) {
        if (!in.read(dst, static_cast<std::streamsize>(n)))
            throw Error(fmt::format("checkpoint '{}': read failed after {} of {} bytes (did the file change?)", path,
                                    in.gcount(), n));
    };
    Reader r(path);
    unsigned char first8[8] = {};
    read(reinterpret_cast<char*>(first8), std::min<uint64_t>(size, 8));
    const uint64_t n = r.header_length(first8, size);  // ≤ 100 MB and ≤ the file: safe to read
    std::string header(n, '\0');
    read(header.data(), n);
    const uint64_t data_size = size - 8 - n;
    r.parse_header(header, data_size);  // the data section is exactly the tensors' bytes now
    std::string data(data_size, '\0');
    read(data.data(), data_size);
    return r.assemble(data.data());
}

Checkpoint capture_checkpoint(Trainer& trainer, CheckpointMeta meta) {
    Checkpoint c;
    meta.model = trainer.model().spec();
    meta.optimizer = trainer.optimizer().config();
    meta.step = trainer.step();
    meta.seed = trainer.config().seed;
    meta.batch = trainer.config().batch;
    meta.device = to_string(trainer.config().device);
    c.meta = std::move(meta);
    c.parameters = trainer.model().parameters().to_host();
    for (const Buffer<float>& s : trainer.optimizer().state()) c.optimizer_state.push_back(s.to_host());
    return c;
}

void restore_checkpoint(Trainer& trainer, const Checkpoint& c, const std::string& name) {
    const ModelSpec& mine = trainer.model().spec();
    const OptimizerConfig& opt = trainer.optimizer().config();
    if (mine != c.meta.model)
        throw Error(fmt::format("checkpoint '{}' holds the model {} ({}), but the trainer is set up for {} ({})", name,
                                c.meta.model.describe(), c.meta.model.layer_string(), mine.describe(),
                                mine.layer_string()));
    if (!same_optimizer(opt, c.meta.optimizer))
        throw Error(fmt::format("checkpoint '{}' was trained with {}, but the trainer is set up for {}", name,
                                c.meta.optimizer.describe(), opt.describe()));
    if (trainer.config().seed != c.meta.seed)
        throw Error(fmt::format("checkpoint '{}' was trained with seed {}, but the trainer uses seed {}; an exact "
                                "resume needs the same seed",
                                name, c.meta.seed, trainer.config().seed));
    std::vector<Buffer<float>>& state = trainer.optimizer().state();
    if (c.optimizer_state.size() != state.size())
        throw Error(fmt::format("checkpoint '{}' holds no {} optimizer state (found {} of {} buffers); it can be "
                                "evaluated but not resumed",
                                name, to_string(opt.kind), c.optimizer_state.size(), state.size()));
    trainer.model().parameters().copy_from_host(c.parameters.data(), c.parameters.size());
    for (std::size_t i = 0; i < state.size(); ++i)
        state[i].copy_from_host(c.optimizer_state[i].data(), c.optimizer_state[i].size());
    trainer.set_step(c.meta.step);
}

Model load_model(const Checkpoint& c, Device device) {
    Model model(c.meta.model, device);
    CUMNIST_CHECK(c.parameters.size() == model.parameters().size(), "checkpoint holds {} parameters, the model {}",
                  c.parameters.size(), model.parameters().size());
    model.parameters().copy_from_host(c.parameters.data(), c.parameters.size());
    return model;
}

}  // namespace cumnist
