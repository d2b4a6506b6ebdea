// Checkpoints: the safetensors layout, bit-exact round trips (parameters, optimizer state,
// metadata), exact resume (2 epochs straight == 1 epoch + save + load + 1 epoch, bit for bit on
// the CPU), GPU <-> CPU loading, per-sample evaluation, and every corrupt or mismatched file
// rejected with one clear message naming the file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "cumnist/checkpoint.h"
#include "cumnist/evaluation.h"
#include "cumnist/trainer.h"
#include "test_support.h"

namespace cumnist {

// Readable optimizer names in gtest's parameter printouts (internal linkage: found by ADL, no clash).
[[maybe_unused]] static void PrintTo(OptimizerKind kind, std::ostream* os) { *os << to_string(kind); }

namespace {

using nlohmann::json;

// A learnable 8x8 task: class k lights up row k (with noise); `n` samples (as in test_trainer.cpp).
Dataset synthetic_dataset(int n, uint32_t seed) {
    Dataset ds;
    ds.name = "synthetic";
    ds.n = n;
    ds.rows = 8;
    ds.cols = 8;
    ds.images.resize(static_cast<std::size_t>(n) * 64);
    ds.labels.resize(static_cast<std::size_t>(n));
    uint32_t state = seed * 2654435761u + 1u;
    auto next = [&] { return state = state * 1664525u + 1013904223u; };
    for (int i = 0; i < n; ++i) {
        const int label = static_cast<int>(next() >> 16) % 8;
        ds.labels[i] = static_cast<uint8_t>(label);
        for (int p = 0; p < 64; ++p) {
            const int noise = static_cast<int>(next() >> 26);  // 0..63
            ds.images[static_cast<std::size_t>(i) * 64 + p] = static_cast<uint8_t>((p / 8 == label ? 180 : 0) + noise);
        }
    }
    return ds;
}

MlpConfig small_model() {
    MlpConfig m;
    m.inputs = 64;
    m.hidden = {33, 17};
    m.classes = 10;
    m.dropout = 0.2f;
    return m;
}

TrainConfig small_train(Device device) {
    TrainConfig t;
    t.epochs = 2;
    t.batch = 16;
    t.eval_batch = 50;
    t.seed = 7;
    t.device = device;
    return t;
}

OptimizerConfig optimizer(OptimizerKind kind) {
    OptimizerConfig o;
    o.kind = kind;
    o.lr = kind == OptimizerKind::Sgd ? 0.05f : 2e-3f;
    o.momentum = kind == OptimizerKind::Sgd ? 0.9f : 0.0f;
    return o;
}

// A folder of this process's own (ctest runs test cases as parallel processes, and other builds
// may run the same tests at the same time), removed when the tests end.
const std::string& temp_dir() {
    static const std::string dir = ::testing::TempDir() + "cumnist_checkpoint_test_" + std::to_string(::getpid());
    return dir;
}
class TempDirCleanup : public ::testing::Environment {
public:
    void TearDown() override {
        std::error_code ec;
        std::filesystem::remove_all(temp_dir(), ec);
    }
};
[[maybe_unused]] ::testing::Environment* const g_cleanup = ::testing::AddGlobalTestEnvironment(new TempDirCleanup);

std::string temp_path(const std::string& name) {
    std::filesystem::create_directories(temp_dir());
    return temp_dir() + "/" + name;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// A checkpoint of a small model after one epoch of `kind` on the synthetic task.
Checkpoint trained_checkpoint(OptimizerKind kind = OptimizerKind::Adam, Device device = Device::Cpu) {
    const Dataset train = synthetic_dataset(200, 1);
    Trainer t(small_model(), optimizer(kind), small_train(device), train);
    CheckpointMeta meta;
    meta.epochs = 2;
    meta.epoch = 1;
    meta.dataset = "synthetic";
    meta.history.push_back(t.train_epoch(1, nullptr));
    return capture_checkpoint(t, meta);
}

// The file split into its JSON header and data section, and put back together.
struct Parts {
    json header;
    std::string data;
};
Parts split(const std::string& bytes) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}
std::string join(const std::string& header, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    return out + header + data;
}
std::string join(const Parts& p) { return join(p.header.dump(), p.data); }

// parse_checkpoint must throw an Error whose message names the file and contains `expected`.
void expect_rejected(const std::string& bytes, const std::string& expected, const std::string& name = "bad.safetensors") {
    try {
        parse_checkpoint(name, bytes);
        ADD_FAILURE() << "accepted a checkpoint that should fail with '" << expected << "'";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("checkpoint '" + name + "'"), std::string::npos) << "message does not name the file: " << what;
        EXPECT_NE(what.find(expected), std::string::npos) << "expected '" << expected << "' in: " << what;
        EXPECT_EQ(what.find("check '"), std::string::npos) << "a user error reported as an internal check: " << what;
    }
}

void expect_same_meta(const CheckpointMeta& a, const CheckpointMeta& b) {
    EXPECT_TRUE(a.model == b.model) << a.model.layer_string() << " vs " << b.model.layer_string();
    EXPECT_EQ(a.model.input, b.model.input);
    EXPECT_EQ(a.model.classes, b.model.classes);
    EXPECT_EQ(a.optimizer.kind, b.optimizer.kind);
    EXPECT_EQ(a.optimizer.lr, b.optimizer.lr);
    EXPECT_EQ(a.optimizer.beta1, b.optimizer.beta1);
    EXPECT_EQ(a.optimizer.beta2, b.optimizer.beta2);
    EXPECT_EQ(a.optimizer.epsilon, b.optimizer.epsilon);
    EXPECT_EQ(a.optimizer.momentum, b.optimizer.momentum);
    EXPECT_EQ(a.optimizer.rho, b.optimizer.rho);
    EXPECT_EQ(a.epoch, b.epoch);
    EXPECT_EQ(a.epochs, b.epochs);
    EXPECT_EQ(a.step, b.step);
    EXPECT_EQ(a.seed, b.seed);
    EXPECT_EQ(a.batch, b.batch);
    EXPECT_EQ(a.validation_split, b.validation_split);
    EXPECT_EQ(a.dataset, b.dataset);
    EXPECT_EQ(a.device, b.device);
    ASSERT_EQ(a.history.size(), b.history.size());
    for (std::size_t i = 0; i < a.history.size(); ++i) {
        // Doubles go through JSON with 17 significant digits: exact.
        EXPECT_EQ(a.history[i].epoch, b.history[i].epoch);
        EXPECT_EQ(a.history[i].train_loss, b.history[i].train_loss);
        EXPECT_EQ(a.history[i].train_accuracy, b.history[i].train_accuracy);
        EXPECT_EQ(a.history[i].test_loss, b.history[i].test_loss);
        EXPECT_EQ(a.history[i].test_accuracy, b.history[i].test_accuracy);
        EXPECT_EQ(a.history[i].seconds, b.history[i].seconds);
        EXPECT_EQ(a.history[i].samples_per_second, b.history[i].samples_per_second);
        EXPECT_EQ(a.history[i].steps, b.history[i].steps);
        EXPECT_EQ(a.history[i].first_step, b.history[i].first_step);
        EXPECT_EQ(a.history[i].on_validation, b.history[i].on_validation);
    }
}

// --- Layout and round trip ------------------------------------------------------------------------

TEST(Checkpoint, FileIsSafetensorsWithPerLayerTensorsAndJsonMetadata) {
    const Checkpoint c = trained_checkpoint();
    const std::string bytes = serialize_checkpoint(c);
    const Parts p = split(bytes);
    EXPECT_EQ((bytes.size() - p.data.size()) % 8, 0u) << "the data section starts 8-byte aligned";
    const auto layout = layer_layout(c.meta.model);
    for (std::size_t l = 0; l < layout.size(); ++l) {
        const json& w = p.header.at(fmt::format("layers.{}.weight", l));
        const json& b = p.header.at(fmt::format("layers.{}.bias", l));
        EXPECT_EQ(w.at("dtype"), "F32");
        EXPECT_EQ(w.at("shape"), json({layout[l].out, layout[l].in}));
        EXPECT_EQ(b.at("shape"), json({layout[l].out}));
        // The parameters are the flat buffer in order: offsets are the layout's, times 4 bytes.
        EXPECT_EQ(w.at("data_offsets")[0].get<std::size_t>(), layout[l].w_offset * 4);
        EXPECT_EQ(b.at("data_offsets")[0].get<std::size_t>(), layout[l].b_offset * 4);
        for (const char* state : {"adam.m", "adam.v"})
            EXPECT_TRUE(p.header.contains(fmt::format("optimizer.{}.layers.{}.weight", state, l)));
    }
    float first = 0.0f;
    std::memcpy(&first, p.data.data(), 4);
    EXPECT_EQ(first, c.parameters[0]);
    // Metadata: strings only, JSON text inside (readable values, "0.2" not 0.200000003).
    const json& meta = p.header.at("__metadata__");
    for (auto it = meta.begin(); it != meta.end(); ++it) EXPECT_TRUE(it.value().is_string()) << it.key();
    EXPECT_EQ(meta.at("format"), "cumnist");
    // The model as its layer list (format version 2), enough for any reader to rebuild it.
    const json model = json::parse(meta.at("model").get<std::string>());
    EXPECT_EQ(meta.at("format_version"), "2");
    EXPECT_EQ(model.at("input"), json({1, 1, 64}));
    EXPECT_EQ(model.at("classes"), 10);
    const json layers = model.at("layers");
    ASSERT_EQ(layers.size(), 7u) << layers.dump();
    EXPECT_EQ(layers[0], json({{"type", "dense"}, {"units", 33}}));
    EXPECT_EQ(layers[1], json({{"type", "activation"}, {"activation", "relu"}}));
    EXPECT_EQ(layers[2].at("rate").dump(), "0.2");
    EXPECT_EQ(layers[6], json({{"type", "dense"}, {"units", 10}}));
    EXPECT_EQ(json::parse(meta.at("optimizer").get<std::string>()).at("name"), "adam");
    EXPECT_EQ(json::parse(meta.at("step").get<std::string>()), 13);
    EXPECT_EQ(json::parse(meta.at("seed").get<std::string>()), 7);
    EXPECT_EQ(json::parse(meta.at("dataset").get<std::string>()), "synthetic");
    EXPECT_EQ(json::parse(meta.at("metrics").get<std::string>()).size(), 1u);
}

class CheckpointRoundTrip : public ::testing::TestWithParam<OptimizerKind> {};

TEST_P(CheckpointRoundTrip, ValuesMetadataAndOptimizerStateSurviveBitExact) {
    const Checkpoint c = trained_checkpoint(GetParam());
    ASSERT_EQ(c.optimizer_state.size(), optimizer_state_names(GetParam()).size());
    const std::string path = temp_path(std::string("round_trip_") + to_string(GetParam()) + ".safetensors");
    save_checkpoint(path, c);
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp")) << "the temporary file is renamed away";
    const Checkpoint back = load_checkpoint(path);
    EXPECT_EQ(back.parameters, c.parameters);  // float ==: bit-exact (no NaN in a trained model)
    EXPECT_EQ(back.optimizer_state, c.optimizer_state);
    expect_same_meta(back.meta, c.meta);
    EXPECT_EQ(back.meta.step, 13u);  // ceil(200 / 16) steps in epoch 1
    EXPECT_EQ(serialize_checkpoint(back), read_file(path)) << "save(load(f)) == f";
}

INSTANTIATE_TEST_SUITE_P(Optimizers, CheckpointRoundTrip,
                         ::testing::Values(OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::RmsProp),
                         [](const auto& param_info) { return std::string(to_string(param_info.param)); });

TEST(Checkpoint, ModelWithoutHiddenLayersAndWithoutOptimizerStateRoundTrips) {
    Checkpoint c;
    MlpConfig mlp;
    mlp.inputs = 5;
    mlp.hidden = {};
    mlp.activation = Activation::Sigmoid;
    mlp.dropout = 0.0f;
    c.meta.model = mlp;
    c.meta.optimizer.kind = OptimizerKind::RmsProp;
    c.meta.optimizer.lr = 0.1f;
    c.meta.seed = ~uint64_t{0};  // the largest seed survives JSON
    c.meta.step = uint64_t{1} << 40;
    c.meta.epochs = kMaxEpochs;  // the most epochs train accepts is read back
    c.meta.epoch = kMaxEpochs - 1;
    c.meta.epoch_step = 17;
    EpochMetrics resumed;  // an epoch resumed at its step 1001 of 1875
    resumed.epoch = 3;
    resumed.first_step = 1000;
    resumed.steps = 875;
    resumed.on_validation = true;  // its numbers are a validation split's
    resumed.test_accuracy = 0.5;
    c.meta.validation_split = 0.1;
    c.meta.history = {resumed};
    for (std::size_t i = 0; i < parameter_count(c.meta.model); ++i) c.parameters.push_back(std::ldexp(1.0f + static_cast<float>(i), -130));
    const Checkpoint back = parse_checkpoint("mem", serialize_checkpoint(c));
    // Training settings an older reader would drop make it format version 3 (a plain run stays 2).
    EXPECT_NE(serialize_checkpoint(c).find("\"format_version\":\"3\""), std::string::npos);
    EXPECT_EQ(back.parameters, c.parameters);  // denormals included
    EXPECT_TRUE(back.optimizer_state.empty());
    expect_same_meta(back.meta, c.meta);
}

TEST(Checkpoint, SaveReplacesTheOldFileOnlyWhenComplete) {
    const std::string path = temp_path("replace.safetensors");
    const Checkpoint c = trained_checkpoint();
    save_checkpoint(path, c);
    // A save that cannot write its temporary file leaves the old checkpoint as it was.
    std::filesystem::create_directories(path + ".tmp");  // the temporary name is taken by a folder
    Checkpoint other = c;
    other.meta.epoch = 2;
    try {
        save_checkpoint(path, other);
        ADD_FAILURE() << "save succeeded although the temporary file could not be written";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot write checkpoint"), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(path + ".tmp");
    EXPECT_EQ(load_checkpoint(path).meta.epoch, 1);
    save_checkpoint(path, other);
    EXPECT_EQ(load_checkpoint(path).meta.epoch, 2);
}

// --- Exact resume -----------------------------------------------------------------------------------

class ExactResume : public ::testing::TestWithParam<OptimizerKind> {};

// Two epochs in one run, and one epoch + save + load into a fresh trainer + one more epoch, give
// bit-identical parameters, optimizer state, step counter and epoch-2 metrics (CPU, dropout on).
TEST_P(ExactResume, TwoEpochsEqualOneEpochPlusResumedEpoch) {
    const Dataset train = synthetic_dataset(200, 1);  // 200 / 16: a short last batch too
    const OptimizerConfig opt = optimizer(GetParam());
    Trainer straight(small_model(), opt, small_train(Device::Cpu), train);
    straight.train_epoch(1, nullptr);
    const EpochMetrics straight2 = straight.train_epoch(2, nullptr);

    const std::string path = temp_path(std::string("resume_") + to_string(GetParam()) + ".safetensors");
    {
        Trainer first(small_model(), opt, small_train(Device::Cpu), train);
        CheckpointMeta meta;
        meta.epoch = 1;
        meta.epochs = 2;
        meta.history.push_back(first.train_epoch(1, nullptr));
        save_checkpoint(path, capture_checkpoint(first, meta));
    }
    const Checkpoint c = load_checkpoint(path);
    Trainer resumed(c.meta.model, c.meta.optimizer, small_train(Device::Cpu), train);
    restore_checkpoint(resumed, c, path);
    EXPECT_EQ(resumed.step(), 13u);
    const EpochMetrics resumed2 = resumed.train_epoch(c.meta.epoch + 1, nullptr);

    EXPECT_EQ(resumed2.train_loss, straight2.train_loss);
    EXPECT_EQ(resumed2.train_accuracy, straight2.train_accuracy);
    EXPECT_EQ(resumed.step(), straight.step());
    EXPECT_EQ(resumed.model().parameters().to_host(), straight.model().parameters().to_host());
    for (std::size_t i = 0; i < straight.optimizer().state().size(); ++i)
        EXPECT_EQ(resumed.optimizer().state()[i].to_host(), straight.optimizer().state()[i].to_host());
}

INSTANTIATE_TEST_SUITE_P(Optimizers, ExactResume,
                         ::testing::Values(OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::RmsProp),
                         [](const auto& param_info) { return std::string(to_string(param_info.param)); });

TEST(Checkpoint, RestoreRejectsADifferentModelOptimizerOrSeed) {
    const Checkpoint c = trained_checkpoint();
    const Dataset train = synthetic_dataset(50, 1);
    auto expect_restore_error = [&](const MlpConfig& m, const OptimizerConfig& o, const TrainConfig& t,
                                    const Checkpoint& ckpt, const std::string& expected) {
        Trainer trainer(m, o, t, train);
        try {
            restore_checkpoint(trainer, ckpt, "run/last.safetensors");
            ADD_FAILURE() << "restored into a mismatched trainer; expected '" << expected << "'";
        } catch (const Error& e) {
            const std::string what = e.what();
            EXPECT_NE(what.find("checkpoint 'run/last.safetensors'"), std::string::npos) << what;
            EXPECT_NE(what.find(expected), std::string::npos) << "expected '" << expected << "' in: " << what;
        }
    };
    MlpConfig wider = small_model();
    wider.hidden = {64, 17};
    expect_restore_error(wider, optimizer(OptimizerKind::Adam), small_train(Device::Cpu), c,
                         "holds the model 64-33-17-10 relu, dropout 0.2 (dense33,relu,dropout0.2,dense17,relu,"
                         "dropout0.2,dense10), but the trainer is set up for 64-64-17-10 relu, dropout 0.2 (dense64,"
                         "relu,dropout0.2,dense17,relu,dropout0.2,dense10)");
    expect_restore_error(small_model(), optimizer(OptimizerKind::Sgd), small_train(Device::Cpu), c,
                         "was trained with adam (lr 0.002");
    TrainConfig other_seed = small_train(Device::Cpu);
    other_seed.seed = 8;
    expect_restore_error(small_model(), optimizer(OptimizerKind::Adam), other_seed, c, "trained with seed 7");
    Checkpoint no_state = c;
    no_state.optimizer_state.clear();
    expect_restore_error(small_model(), optimizer(OptimizerKind::Adam), small_train(Device::Cpu),
                         parse_checkpoint("x", serialize_checkpoint(no_state)), "can be evaluated but not resumed");
}

// --- GPU <-> CPU ------------------------------------------------------------------------------------

// A checkpoint written from a GPU run loads into a CPU trainer (and the other way round) with the
// parameters and optimizer state bit-exact, and both continue training to nearly the same place.
TEST(CheckpointDevices, GpuCheckpointLoadsOnCpuAndBack) {
    CUMNIST_SKIP_WITHOUT_GPU();
    const Dataset train = synthetic_dataset(200, 1), test = synthetic_dataset(100, 2);
    for (const auto& [from, to] : {std::pair{Device::Cuda, Device::Cpu}, std::pair{Device::Cpu, Device::Cuda}}) {
        SCOPED_TRACE(std::string(to_string(from)) + " -> " + to_string(to));
        const std::string path = temp_path(std::string("device_") + to_string(from) + ".safetensors");
        Trainer source(small_model(), {}, small_train(from), train);
        CheckpointMeta meta;
        meta.epoch = 1;
        meta.history.push_back(source.train_epoch(1, nullptr));
        save_checkpoint(path, capture_checkpoint(source, meta));
        const Checkpoint c = load_checkpoint(path);
        EXPECT_EQ(c.meta.device, to_string(from));

        Trainer target(c.meta.model, c.meta.optimizer, small_train(to), train);
        restore_checkpoint(target, c, path);
        EXPECT_EQ(target.model().parameters().to_host(), source.model().parameters().to_host());
        EXPECT_EQ(target.optimizer().state()[1].to_host(), source.optimizer().state()[1].to_host());
        EXPECT_EQ(target.step(), source.step());
        // The same model evaluates alike on both devices (GEMM order differs: 1e-5).
        const ResidentData test_from(test, from), test_to(test, to);
        const Evaluation ef = source.evaluate(test_from), et = target.evaluate(test_to);
        EXPECT_NEAR(ef.loss, et.loss, 1e-5 * (1 + ef.loss));
        Model model = load_model(c, to);
        const ClassificationReport r = evaluate_classifier(model, test, 30);
        EXPECT_NEAR(r.loss, ef.loss, 1e-5 * (1 + ef.loss));
        // One more epoch on each device: the same place within the CPU/GPU parity tolerance.
        source.train_epoch(2, nullptr);
        target.train_epoch(2, nullptr);
        const auto ps = source.model().parameters().to_host(), pt = target.model().parameters().to_host();
        float worst = 0.0f;
        for (std::size_t i = 0; i < ps.size(); ++i) worst = std::max(worst, std::abs(ps[i] - pt[i]));
        EXPECT_LT(worst, 1e-3f);
    }
}

// Without a GPU the file side of the same path still runs: a checkpoint recorded as written on
// the GPU ("device": "cuda") is an ordinary file that loads and evaluates on the CPU.
TEST(CheckpointDevices, CheckpointFromGpuRunLoadsOnCpu) {
    Checkpoint c = trained_checkpoint();
    c.meta.device = "cuda";
    const Checkpoint back = parse_checkpoint("gpu.safetensors", serialize_checkpoint(c));
    EXPECT_EQ(back.meta.device, "cuda");
    Model model = load_model(back, Device::Cpu);
    EXPECT_EQ(model.parameters().to_host(), c.parameters);
}

// --- Per-sample evaluation -------------------------------------------------------------------------

TEST(Evaluation, AgreesWithTheTrainersEvaluationAndCountsEverySample) {
    const Dataset train = synthetic_dataset(400, 1), test = synthetic_dataset(130, 2);  // 130: a short last batch
    Trainer t(small_model(), {}, small_train(Device::Cpu), train);
    t.train_epoch(1, nullptr);
    const ResidentData test_data(test, Device::Cpu);
    const Evaluation e = t.evaluate(test_data);
    Checkpoint c = capture_checkpoint(t, {});
    Model model = load_model(c, Device::Cpu);
    const ClassificationReport r = evaluate_classifier(model, test, 50);
    EXPECT_EQ(r.n, 130);
    EXPECT_NEAR(r.loss, e.loss, 1e-12 * (1 + e.loss));  // same op, summation order of doubles only
    EXPECT_EQ(r.accuracy, e.accuracy);
    ASSERT_EQ(r.predictions.size(), 130u);
    int64_t total = 0, diagonal = 0;
    for (int tr = 0; tr < r.classes; ++tr) {
        total += r.n_true(tr);
        diagonal += r.count(tr, tr);
    }
    EXPECT_EQ(total, 130);
    EXPECT_EQ(static_cast<double>(diagonal) / 130.0, r.accuracy);
    for (int i = 0; i < test.n; ++i) EXPECT_GE(r.count(test.labels[i], r.predictions[i]), 1);
    EXPECT_TRUE(std::isnan(r.class_accuracy(9))) << "no sample of class 9 in the synthetic set";
    // A different batch size gives the same predictions.
    EXPECT_EQ(evaluate_classifier(model, test, 7).predictions, r.predictions);
}

TEST(Evaluation, RejectsImagesOfTheWrongSize) {
    Checkpoint c = trained_checkpoint();
    Model model = load_model(c, Device::Cpu);
    Dataset wrong = synthetic_dataset(10, 1);
    wrong.cols = 4;
    try {
        evaluate_classifier(model, wrong);
        ADD_FAILURE() << "accepted 8x4 images for a 64-input model";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("images have 32 pixels (8x4), the model expects 64"), std::string::npos)
            << e.what();
    }
}

// --- Corrupt and mismatched files --------------------------------------------------------------------

class CorruptCheckpoint : public ::testing::Test {
protected:
    void SetUp() override {
        good = serialize_checkpoint(trained_checkpoint());
        parts = split(good);
    }
    // The good file with its header changed by `edit`.
    std::string edited(const std::function<void(json&)>& edit) {
        Parts p = parts;
        edit(p.header);
        return join(p);
    }
    // The good file with one metadata entry replaced.
    std::string with_meta(const std::string& key, const json& value) {
        return edited([&](json& h) { h["__metadata__"][key] = value; });
    }
    std::string good;
    Parts parts;
};

TEST_F(CorruptCheckpoint, TheGoodFileParses) { EXPECT_NO_THROW(parse_checkpoint("good", good)); }

TEST_F(CorruptCheckpoint, FileTooShort) {
    expect_rejected("", "the file is 0 bytes, too short");
    expect_rejected(std::string("\x10\0\0", 3), "the file is 3 bytes, too short");
}

TEST_F(CorruptCheckpoint, HeaderLengthLargerThanTheFile) {
    std::string bytes = good;
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((good.size() >> (8 * i)) & 0xff);  // the whole file
    expect_rejected(bytes, fmt::format("the header length in bytes 0-7 is {}, but only {} bytes follow; the file is "
                                       "truncated or not a safetensors checkpoint",
                                       good.size(), good.size() - 8));
}

TEST_F(CorruptCheckpoint, AbsurdHeaderLengthIsRejectedBeforeAnyAllocation) {
    std::string bytes = good;
    for (int i = 0; i < 8; ++i) bytes[i] = '\xff';
    expect_rejected(bytes, "header length in bytes 0-7 is 18446744073709551615, more than the 104857600 bytes");
    expect_rejected(join("", "") + std::string(10, ' '), "header length in bytes 0-7 is 0, too short");
}

TEST_F(CorruptCheckpoint, HeaderIsNotJson) {
    expect_rejected(join("{\"layers.0.weight\": [1, 2", ""), "the header is not valid JSON: parse error");
    expect_rejected(join("[1, 2, 3]", ""), "the header is a JSON array, expected an object of tensors");
    expect_rejected(join("{\"a\": 1e400}", ""), "the header is not valid JSON: number overflow parsing '1e400'");
    std::string bytes = good;
    bytes[8] = '\xfe';  // not even UTF-8
    expect_rejected(bytes, "not valid JSON");
}

TEST_F(CorruptCheckpoint, UnknownDtype) {
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["dtype"] = "F16"; }),
                    "tensor 'layers.0.bias' has dtype 'F16'; cumnist checkpoints hold F32 (32-bit float) tensors only");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["dtype"] = 32; }), "dtype is 32, expected the string \"F32\"");
    expect_rejected(edited([](json& h) { h["layers.0.bias"].erase("dtype"); }),
                    "tensor 'layers.0.bias' has no 'dtype' (expected dtype, shape and data_offsets)");
    expect_rejected(edited([](json& h) { h["layers.0.bias"] = "F32"; }), "tensor 'layers.0.bias' is a JSON string");
}

TEST_F(CorruptCheckpoint, ShapeDoesNotMatchTheOffsets) {
    // layers.0.bias is [33] at [8448, 8580): 132 bytes.
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["shape"] = {34}; }),
                    "tensor 'layers.0.bias': shape [34] of F32 needs 136 bytes, but data_offsets [8448, 8580] span 132");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["shape"] = {-33}; }), "must be a non-negative integer, found -33");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["shape"] = {uint64_t{1} << 40, uint64_t{1} << 40}; }),
                    "needs more than 2^62 bytes");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["shape"] = "33"; }), "expected an array of at most 8 sizes");
}

TEST_F(CorruptCheckpoint, OffsetsOutOfRangeOverlappingOrLeavingGaps) {
    const uint64_t data = parts.data.size();
    expect_rejected(edited([&](json& h) { h["layers.0.bias"]["data_offsets"] = {data, data + 132}; }),
                    fmt::format("tensor 'layers.0.bias' occupies bytes [{}, {}) of the data section, but the file holds "
                                "only {} bytes of data; the file is truncated",
                                data, data + 132, data));
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["data_offsets"] = {8000, 8132}; }),
                    "tensors 'layers.0.weight' [0, 8448) and 'layers.0.bias' [8000, 8132) overlap");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["data_offsets"] = {8580, 8448}; }),
                    "data_offsets [8580, 8448] end before they begin");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["data_offsets"] = {-4, 128}; }),
                    "data_offsets begin must be a non-negative integer, found -4");
    expect_rejected(edited([](json& h) { h["layers.0.bias"]["data_offsets"] = {8448}; }), "expected [begin, end]");
    // A tensor moved to the end of a longer data section leaves its old bytes unclaimed.
    Parts moved = parts;
    moved.header["layers.0.bias"]["data_offsets"] = {data, data + 132};
    expect_rejected(join(moved.header.dump(), parts.data + std::string(132, '\0')),
                    "bytes [8448, 8580) of the data section belong to no tensor");
}

TEST_F(CorruptCheckpoint, TruncatedOrExtendedData) {
    expect_rejected(good.substr(0, good.size() - 100), "the file is truncated");
    expect_rejected(good + std::string(12, '\0'), "the tensors cover only the first");
    // Cut inside the header: the length no longer fits.
    expect_rejected(good.substr(0, 40), "bytes follow; the file is truncated");
}

TEST_F(CorruptCheckpoint, MissingOrUnexpectedTensors) {
    // The file holds Adam's state: 6 parameter tensors and 2 x 6 of state, whichever one is missing.
    expect_rejected(edited([](json& h) { h.erase("layers.2.bias"); }),
                    "missing tensor 'layers.2.bias' (the model 64-33-17-10 relu, dropout 0.2 with adam optimizer state "
                    "has 18 tensors)");
    expect_rejected(edited([](json& h) { h.erase("optimizer.adam.v.layers.1.weight"); }),
                    "missing tensor 'optimizer.adam.v.layers.1.weight' (the model 64-33-17-10 relu, dropout 0.2 with "
                    "adam optimizer state has 18 tensors)");
    expect_rejected(edited([](json& h) { h["layers.3.weight"] = h["layers.2.weight"]; }),
                    "unexpected tensor 'layers.3.weight': the model 64-33-17-10 relu, dropout 0.2 with adam optimizer "
                    "state has only layers.{0..2}.{weight,bias} and their optimizer.* state");
}

TEST_F(CorruptCheckpoint, MissingOrUnexpectedTensorsWithoutOptimizerState) {
    Checkpoint c = trained_checkpoint(OptimizerKind::Sgd);
    c.optimizer_state.clear();  // parameters only, as a file to evaluate but not resume
    const Parts p = split(serialize_checkpoint(c));
    Parts missing = p;
    missing.header.erase("layers.0.weight");
    expect_rejected(join(missing), "missing tensor 'layers.0.weight' (the model 64-33-17-10 relu, dropout 0.2 with no "
                                   "optimizer state has 6 tensors)");
    Parts extra = p;
    extra.header["layers.3.weight"] = extra.header["layers.2.weight"];
    expect_rejected(join(extra), "unexpected tensor 'layers.3.weight': the model 64-33-17-10 relu, dropout 0.2 with no "
                                 "optimizer state has only layers.{0..2}.{weight,bias}");
}

TEST_F(CorruptCheckpoint, MetadataMissingOrMalformed) {
    expect_rejected(edited([](json& h) { h.erase("__metadata__"); }), "the header has no __metadata__; not a cumnist checkpoint");
    expect_rejected(edited([](json& h) { h["__metadata__"].erase("step"); }), "__metadata__ has no 'step' entry");
    expect_rejected(with_meta("format", "pt"), "__metadata__ 'format' is \"pt\", expected \"cumnist\"");
    expect_rejected(with_meta("format_version", "4"), "format version 4 is newer than this cumnist reads (version 3)");
    expect_rejected(with_meta("epoch", 3), "__metadata__ 'epoch' is a JSON number; safetensors metadata values must be strings");
    expect_rejected(with_meta("epoch", "-1"), "__metadata__ 'epoch' is -1, expected an integer in [0, 1073741824]");
    expect_rejected(with_meta("model", "{\"inputs\": 64,"), "__metadata__ 'model' is not valid JSON text");
    expect_rejected(with_meta("model", "{\"inputs\": 64}"), "__metadata__ 'model' is {\"inputs\":64}, not a model description");
    expect_rejected(with_meta("optimizer", R"({"name":"lamb","lr":0.1,"beta1":0.9,"beta2":0.999,"epsilon":1e-7,"momentum":0,"rho":0.9})"),
                    "__metadata__ 'optimizer': unknown optimizer 'lamb'");
    expect_rejected(with_meta("metrics", "{}"), "__metadata__ 'metrics' is a JSON object, expected an array");
}

TEST_F(CorruptCheckpoint, ModelInTheMetadataDoesNotMatchTheTensors) {
    expect_rejected(with_meta("model", R"({"inputs":64,"hidden":[32,17],"classes":10,"activation":"relu","dropout":0.2})"),
                    "tensor 'layers.0.weight' has shape [33, 64], but the model in the metadata (64-32-17-10 relu, "
                    "dropout 0.2) needs [32, 64]");
    expect_rejected(with_meta("model", R"({"inputs":64,"hidden":[33],"classes":10,"activation":"relu","dropout":0.2})"),
                    "tensor 'layers.1.weight' has shape [17, 33], but the model in the metadata (64-33-10 relu, dropout "
                    "0.2) needs [10, 33]");
    expect_rejected(with_meta("model", R"({"inputs":64,"hidden":[33,17],"classes":10,"activation":"relu","dropout":1.5})"),
                    "__metadata__ 'model': model: dropout must be in [0, 1), got 1.5");
    expect_rejected(with_meta("model", R"({"inputs":64,"hidden":[33,17],"classes":10,"activation":"gelu","dropout":0.2})"),
                    "activation 'gelu' is not relu or sigmoid");
    expect_rejected(with_meta("model", R"({"inputs":4294967296,"hidden":[33,17],"classes":10,"activation":"relu","dropout":0.2})"),
                    "sizes must be integers, found 4294967296");
}

// A value of one tensor replaced, in the data section.
std::string with_value(const Parts& parts, const std::string& tensor, std::size_t index, float value) {
    Parts p = parts;
    const std::size_t at = p.header.at(tensor).at("data_offsets")[0].get<std::size_t>() + 4 * index;
    std::memcpy(&p.data[at], &value, sizeof value);
    return join(p);
}

// Every value is checked when a checkpoint is read: finite everywhere, and the optimizer's running
// squares not negative. (A NaN model would otherwise resume, train and save NaN with exit 0.)
TEST_F(CorruptCheckpoint, NonFiniteOrNegativeStateValuesAreRefused) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    expect_rejected(with_value(parts, "layers.1.weight", 5, nan),
                    "tensor 'layers.1.weight' holds NaN at index 5; a checkpoint's values must be finite");
    expect_rejected(with_value(parts, "layers.0.bias", 0, -inf), "tensor 'layers.0.bias' holds -Inf at index 0");
    expect_rejected(with_value(parts, "optimizer.adam.m.layers.2.weight", 3, inf),
                    "tensor 'optimizer.adam.m.layers.2.weight' holds +Inf at index 3");
    expect_rejected(with_value(parts, "optimizer.adam.v.layers.0.weight", 7, -0.5f),
                    "tensor 'optimizer.adam.v.layers.0.weight' holds -0.5 at index 7; the optimizer's running mean "
                    "of squared gradients cannot be negative");
    // Adam's m may be negative; v may be zero.
    EXPECT_NO_THROW(parse_checkpoint("ok", with_value(parts, "optimizer.adam.m.layers.0.weight", 7, -0.5f)));
    EXPECT_NO_THROW(parse_checkpoint("ok", with_value(parts, "optimizer.adam.v.layers.0.weight", 7, 0.0f)));
}

// A repeated key anywhere in the header is refused (the JSON parser would keep the last one).
TEST_F(CorruptCheckpoint, RepeatedKeysInTheHeaderAreRefused) {
    const std::string header = parts.header.dump();
    // A second copy of the first tensor's entry, and a second __metadata__, spliced in as text.
    const std::string first = "\"layers.0.bias\":" + parts.header.at("layers.0.bias").dump();
    const std::string twice = "{" + first + "," + header.substr(1);
    expect_rejected(join(twice, parts.data), "the header names 'layers.0.bias' twice");
    const std::string meta = "\"__metadata__\":" + parts.header.at("__metadata__").dump();
    expect_rejected(join("{" + meta + "," + header.substr(1), parts.data), "the header names '__metadata__' twice");
    // And inside the metadata.
    json h = parts.header;
    std::string m = h.at("__metadata__").dump();
    m.insert(1, "\"epoch\":\"0\",");
    h.erase("__metadata__");
    const std::string rest = h.dump();
    expect_rejected(join("{\"__metadata__\":" + m + "," + rest.substr(1), parts.data), "the header names 'epoch' twice");
}

// Format version 2's layer list: every field checked, the model rebuilt and compared with the tensors.
TEST_F(CorruptCheckpoint, LayerListInTheMetadataIsValidated) {
    const std::string dense = R"({"type":"dense","units":33},{"type":"activation","activation":"relu"},)"
                              R"({"type":"dense","units":17},{"type":"activation","activation":"relu"},)"
                              R"({"type":"dense","units":10})";
    auto model = [](const std::string& layers, const std::string& input = "[1,1,64]") {
        return R"({"input":)" + input + R"(,"classes":10,"layers":[)" + layers + "]}";
    };
    // The same tensors without dropout layers: accepted (dropout has no parameters).
    Checkpoint ok = parse_checkpoint("ok", with_meta("model", model(dense)));
    EXPECT_EQ(ok.meta.model.layer_string(), "dense33,relu,dense17,relu,dense10");
    expect_rejected(with_meta("model", model(R"({"type":"gelu"})")), "__metadata__ 'model': unknown layer type \"gelu\"");
    expect_rejected(with_meta("model", model(R"({"type":"dense"})")), "'units' is missing");
    expect_rejected(with_meta("model", model(R"({"type":"dense","units":-3})")), "units must be an integer");
    expect_rejected(with_meta("model", model(R"({"type":"dense","units":0},{"type":"dense","units":10})")),
                    "'dense0': the number of units must be in [1, 65536], got 0");
    expect_rejected(with_meta("model", model(dense, "[1,64]")), "input must be [channels, height, width]");
    expect_rejected(with_meta("model", model(R"({"type":"dropout","rate":1.5},)" + std::string(dense))),
                    "a dropout rate must be a number in [0, 1)");
    expect_rejected(with_meta("model", model(R"({"type":"conv2d","filters":4,"kernel":[3,3],"stride":[1,1],"padding":"valid"},)"
                                             R"({"type":"flatten"},{"type":"dense","units":10})", "[1,8,8]")),
                    "tensor 'layers.0.weight' has shape [33, 64], but the model in the metadata");
    expect_rejected(with_meta("model", model(R"({"type":"conv2d","filters":4,"kernel":[3,3],"stride":[1,1],"padding":"full"})", "[1,8,8]")),
                    "padding must be \"same\" or \"valid\"");
    expect_rejected(with_meta("model", model(R"({"type":"dense","units":33},{"type":"dense","units":17})")),
                    "ends in 17 values per image, expected 10");
}

TEST(CheckpointFiles, MissingFileAndFolderGiveClearMessages) {
    try {
        load_checkpoint(temp_path("does-not-exist.safetensors"));
        ADD_FAILURE() << "loaded a missing file";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot open checkpoint '"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos) << e.what();
    }
    const std::string dir = temp_path("a-folder");
    std::filesystem::create_directories(dir);
    try {
        load_checkpoint(dir);
        ADD_FAILURE() << "loaded a folder";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("is a folder, expected a .safetensors file"), std::string::npos) << e.what();
    }
    // A corrupt file on disk is reported with its path, like the in-memory cases above.
    const std::string path = temp_path("truncated.safetensors");
    const std::string good = serialize_checkpoint(trained_checkpoint());
    write_file(path, good.substr(0, good.size() / 2));
    try {
        load_checkpoint(path);
        ADD_FAILURE() << "loaded a truncated file";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("checkpoint '" + path + "'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("the file is truncated"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace cumnist
