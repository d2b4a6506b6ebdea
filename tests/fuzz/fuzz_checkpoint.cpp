// libFuzzer target for the checkpoint loader (include/cumnist/checkpoint.h): every input is parsed
// with parse_checkpoint, the in-memory half of load_checkpoint, as it is and, when its 8-byte header
// length does not match where its JSON header ends, once more with that length corrected. cumnist::Error is the documented
// way to reject an input; any other exception, a crash, a leak, a sanitizer report, an allocation
// beyond libFuzzer's limits or a hang is a finding, and so is an accepted checkpoint that breaks
// the loader's promises: tensors that do not match the model in its metadata, or a checkpoint that
// does not survive serialize_checkpoint → parse_checkpoint unchanged (a resumed run could not be
// saved and loaded again).
// Seed corpus: tests/fuzz/corpus/checkpoint (written by `fuzz_checkpoint -write_corpus=DIR`, a flag
// of this target handled before libFuzzer starts); dictionary: tests/fuzz/checkpoint.dict; run
// with scripts/fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "cumnist/checkpoint.h"
#include "cumnist/error.h"
#include "cumnist/model.h"
#include "cumnist/optim.h"

namespace {

[[noreturn]] void finding(const std::string& what) {
    std::fprintf(stderr, "fuzz_checkpoint: %s\n", what.c_str());
    std::abort();
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// What the loader promises about a checkpoint it accepted.
void check_accepted(const cumnist::Checkpoint& c) {
    const std::size_t n = cumnist::parameter_count(c.meta.model);
    if (c.parameters.size() != n)
        finding("accepted with " + std::to_string(c.parameters.size()) + " parameters, the model has " +
                std::to_string(n));
    if (!c.optimizer_state.empty()) {
        const std::size_t names = cumnist::optimizer_state_names(c.meta.optimizer.kind).size();
        if (c.optimizer_state.size() != names)
            finding("accepted with " + std::to_string(c.optimizer_state.size()) + " optimizer state buffers, expected " +
                    std::to_string(names));
        for (const std::vector<float>& s : c.optimizer_state)
            if (s.size() != n) finding("accepted with an optimizer state buffer of the wrong size");
    }
    std::string again;
    try {
        again = cumnist::serialize_checkpoint(c);
    } catch (const cumnist::Error& e) {
        finding(std::string("an accepted checkpoint cannot be serialized again: ") + e.what());
    }
    cumnist::Checkpoint c2;
    try {
        c2 = cumnist::parse_checkpoint("fuzz-reserialized", again);
    } catch (const cumnist::Error& e) {
        finding(std::string("an accepted checkpoint, serialized again, is rejected: ") + e.what());
    }
    if (!same_bits(c.parameters, c2.parameters)) finding("parameters change through serialize → parse");
    if (c.optimizer_state.size() != c2.optimizer_state.size())
        finding("the optimizer state changes through serialize → parse");
    for (std::size_t i = 0; i < c.optimizer_state.size(); ++i)
        if (!same_bits(c.optimizer_state[i], c2.optimizer_state[i]))
            finding("the optimizer state changes through serialize → parse");
    if (c2.meta.model.describe() != c.meta.model.describe() || c2.meta.step != c.meta.step ||
        c2.meta.epoch != c.meta.epoch || c2.meta.history.size() != c.meta.history.size())
        finding("the metadata changes through serialize → parse");
}

// --- The seed corpus: tiny checkpoints from serialize_checkpoint, valid and damaged -------------

cumnist::Checkpoint tiny_checkpoint(cumnist::OptimizerKind kind, std::vector<int> hidden, bool with_state,
                                    int epochs_done) {
    cumnist::Checkpoint c;
    cumnist::MlpConfig mlp;
    mlp.inputs = 4;
    mlp.hidden = std::move(hidden);
    mlp.classes = 3;
    mlp.dropout = 0.25f;
    c.meta.model = mlp;
    c.meta.optimizer.kind = kind;
    c.meta.optimizer.momentum = kind == cumnist::OptimizerKind::Sgd ? 0.9f : 0.0f;
    c.meta.epoch = epochs_done;
    c.meta.epochs = 5;
    c.meta.step = 12 * static_cast<uint64_t>(epochs_done);
    c.meta.seed = 7;
    c.meta.batch = 8;
    c.meta.dataset = "mnist";
    c.meta.device = "cpu";
    for (int e = 1; e <= epochs_done; ++e) {
        cumnist::EpochMetrics m;
        m.epoch = e;
        m.train_loss = 1.5 / e;
        m.train_accuracy = 0.5 + 0.1 * e;
        m.test_loss = 1.6 / e;
        m.test_accuracy = 0.45 + 0.1 * e;
        m.seconds = 0.25;
        m.eval_seconds = 0.125;
        m.samples_per_second = 384;
        c.meta.history.push_back(m);
    }
    c.parameters = cumnist::glorot_uniform_init(c.meta.model, 7);
    if (with_state) {
        for (std::size_t s = 0; s < cumnist::optimizer_state_names(kind).size(); ++s) {
            std::vector<float> state(c.parameters.size());
            for (std::size_t i = 0; i < state.size(); ++i) state[i] = 0.001f * static_cast<float>((i + s) % 17);
            c.optimizer_state.push_back(std::move(state));
        }
    }
    return c;
}

void write_file(const std::string& dir, const std::string& name, const std::string& bytes) {
    std::ofstream out(dir + "/" + name, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) finding("cannot write " + dir + "/" + name);
}

uint64_t header_length(const std::string& bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<std::size_t>(i)]);
    return n;
}

void set_header_length(std::string& bytes, uint64_t n) {
    for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
}

// Replaces the first occurrence of `from` in the JSON header by `to`, keeping the length field right.
std::string edit_header(std::string bytes, const std::string& from, const std::string& to) {
    const uint64_t len = header_length(bytes);
    const std::size_t at = bytes.find(from, 8);
    if (at == std::string::npos || at + from.size() > 8 + len) return {};
    bytes.replace(at, from.size(), to);
    set_header_length(bytes, len + to.size() - from.size());
    return bytes;
}

int write_corpus(const std::string& dir) {
    using cumnist::OptimizerKind;
    int written = 0;
    auto put = [&](const std::string& name, const std::string& bytes) {
        if (bytes.empty()) {
            std::fprintf(stderr, "fuzz_checkpoint: could not make %s (the header format changed?)\n", name.c_str());
            return;
        }
        write_file(dir, name, bytes);
        ++written;
    };
    const std::string adam = cumnist::serialize_checkpoint(tiny_checkpoint(OptimizerKind::Adam, {5}, true, 2));
    put("valid-adam-4-5-3", adam);
    put("valid-sgd-4-5-2-3", cumnist::serialize_checkpoint(tiny_checkpoint(OptimizerKind::Sgd, {5, 2}, true, 1)));
    put("valid-rmsprop-4-3", cumnist::serialize_checkpoint(tiny_checkpoint(OptimizerKind::RmsProp, {}, true, 0)));
    put("valid-adam-no-state", cumnist::serialize_checkpoint(tiny_checkpoint(OptimizerKind::Adam, {6}, false, 1)));
    {
        // A convolutional model: the layer list of format version 2, 4-D weights.
        cumnist::Checkpoint cnn = tiny_checkpoint(OptimizerKind::Adam, {}, false, 1);
        cnn.meta.model = cumnist::parse_model("conv2k3same,relu,pool2,flatten,dropout0.5,dense3", {1, 4, 4}, 3);
        cnn.parameters = cumnist::glorot_uniform_init(cnn.meta.model, 7);
        put("valid-cnn", cumnist::serialize_checkpoint(cnn));
    }
    // Damaged copies of the Adam checkpoint.
    const uint64_t len = header_length(adam);
    put("bad-truncated-data", adam.substr(0, adam.size() - 5));
    put("bad-truncated-header", adam.substr(0, 8 + len / 2));
    put("bad-only-length", adam.substr(0, 8));
    put("bad-excess-data", adam + std::string(12, '\0'));
    {
        std::string huge = adam;
        set_header_length(huge, uint64_t{1} << 40);
        put("bad-header-length-huge", huge);
        std::string past = adam;
        set_header_length(past, adam.size());
        put("bad-header-length-past-end", past);
    }
    {
        std::string json = adam;
        json[8] = '[';
        put("bad-json", json);
    }
    put("bad-dtype-f16", edit_header(adam, "\"F32\"", "\"F16\""));
    put("bad-shape", edit_header(adam, "\"shape\":[5,4]", "\"shape\":[5,40000000]"));
    put("bad-offsets", edit_header(adam, "\"data_offsets\":[0,", "\"data_offsets\":[4,"));
    put("bad-tensor-name", edit_header(adam, "layers.0.weight", "layers.9.weight"));
    put("bad-metadata-missing", edit_header(adam, "\"__metadata__\"", "\"__metadatum\""));
    std::fprintf(stderr, "fuzz_checkpoint: wrote %d files to %s\n", written, dir.c_str());
    return written > 0 ? 0 : 1;
}

// The input with its 8-byte header length set to where its JSON object actually ends, or "" when
// that is what it already says or no complete top-level object follows. Most mutations inside the
// JSON change its length; without this, nearly all of them would only exercise the length check.
std::string with_header_length_fixed(const std::string& bytes) {
    if (bytes.size() < 10) return {};
    std::size_t i = 8;
    while (i < bytes.size() && (bytes[i] == ' ' || bytes[i] == '\n' || bytes[i] == '\t' || bytes[i] == '\r')) ++i;
    if (i == bytes.size() || bytes[i] != '{') return {};
    int depth = 0;
    bool in_string = false, escaped = false;
    for (; i < bytes.size(); ++i) {
        const char ch = bytes[i];
        if (in_string) {
            if (escaped) escaped = false;
            else if (ch == '\\') escaped = true;
            else if (ch == '"') in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '{' || ch == '[') {
            ++depth;
        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            break;
        }
    }
    if (i == bytes.size()) return {};
    std::size_t end = i + 1;
    while (end < bytes.size() && bytes[end] == ' ') ++end;  // serialize_checkpoint's alignment padding
    if (header_length(bytes) == end - 8) return {};
    std::string fixed = bytes;
    set_header_length(fixed, end - 8);
    return fixed;
}

void parse_one(const std::string& bytes) {
    try {
        const cumnist::Checkpoint c = cumnist::parse_checkpoint("fuzz-input", bytes);
        check_accepted(c);
    } catch (const cumnist::Error&) {
        // A clean rejection.
    } catch (const std::exception& e) {
        finding(std::string("exception other than cumnist::Error: ") + e.what());
    } catch (...) {
        finding("non-std exception");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
    const std::string flag = "-write_corpus=";
    for (int i = 1; i < *argc; ++i) {
        const std::string arg = (*argv)[i];
        if (arg.rfind(flag, 0) == 0) {
            try {
                std::exit(write_corpus(arg.substr(flag.size())));
            } catch (const std::exception& e) {
                std::fprintf(stderr, "fuzz_checkpoint: writing the corpus failed: %s\n", e.what());
                std::exit(1);
            }
        }
    }
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    parse_one(bytes);  // the file as it is
    const std::string fixed = with_header_length_fixed(bytes);
    if (!fixed.empty()) parse_one(fixed);  // and with a header length that fits its JSON
    return 0;
}
