// The training loop: determinism from the seed, learning on a synthetic task, no allocation
// inside the step, CPU/GPU parity and graph replay (on a GPU), and the end-to-end run on MNIST.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>

#include "cumnist/data.h"
#include "cumnist/selftest.h"
#include "cumnist/trainer.h"
#include "test_support.h"

// Counts C++ heap allocations made by this process (operator new), for the no-allocation test.
// The replacement pair is malloc/free on both sides, which GCC cannot see across the two functions.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
std::atomic<std::size_t> g_new_calls{0};
}
void* operator new(std::size_t size) {
    g_new_calls.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size ? size : 1)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    g_new_calls.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(size ? size : 1);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace cumnist {
namespace {

// A learnable 8x8 task: class k lights up row k (with noise); `n` samples.
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

TrainConfig small_train(Device device, int batch = 16) {
    TrainConfig t;
    t.epochs = 1;
    t.batch = batch;
    t.eval_batch = 50;
    t.seed = 7;
    t.device = device;
    return t;
}

bool skip_without_cuda(Device d) { return d == Device::Cuda && !cuda_available(); }

class TrainerTest : public ::testing::TestWithParam<Device> {
protected:
    void SetUp() override {
        if (skip_without_cuda(GetParam())) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
    }
};

TEST_P(TrainerTest, SameSeedGivesIdenticalLossesAndParameters) {
    const Dataset train = synthetic_dataset(200, 1);  // 200 / 16: a short last batch too
    Trainer a(small_model(), {}, small_train(GetParam()), train);
    Trainer b(small_model(), {}, small_train(GetParam()), train);
    for (int epoch = 1; epoch <= 2; ++epoch) {
        const EpochMetrics ma = a.train_epoch(epoch, nullptr);
        const EpochMetrics mb = b.train_epoch(epoch, nullptr);
        EXPECT_EQ(ma.train_loss, mb.train_loss) << "epoch " << epoch;  // bit-identical, same backend
        EXPECT_EQ(ma.train_accuracy, mb.train_accuracy);
    }
    EXPECT_EQ(a.model().parameters().to_host(), b.model().parameters().to_host());
    EXPECT_EQ(a.step(), 26u);  // 2 epochs × ceil(200 / 16)
}

TEST_P(TrainerTest, DifferentSeedsGiveDifferentRuns) {
    const Dataset train = synthetic_dataset(200, 1);
    TrainConfig other = small_train(GetParam());
    other.seed = 8;
    Trainer a(small_model(), {}, small_train(GetParam()), train);
    Trainer b(small_model(), {}, other, train);
    EXPECT_NE(a.train_epoch(1, nullptr).train_loss, b.train_epoch(1, nullptr).train_loss);
    EXPECT_NE(a.model().parameters().to_host(), b.model().parameters().to_host());
}

TEST_P(TrainerTest, LearnsASyntheticTaskWithEveryOptimizer) {
    const Dataset train = synthetic_dataset(800, 2);
    const Dataset test = synthetic_dataset(200, 3);
    for (OptimizerKind kind : {OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::RmsProp}) {
        OptimizerConfig opt;
        opt.kind = kind;
        opt.lr = kind == OptimizerKind::Sgd ? 0.1f : 1e-3f;
        opt.momentum = kind == OptimizerKind::Sgd ? 0.9f : 0.0f;
        Trainer t(small_model(), opt, small_train(GetParam()), train);
        const ResidentData test_data(test, GetParam());
        const Evaluation before = t.evaluate(test_data);
        EpochMetrics m;
        for (int epoch = 1; epoch <= 3; ++epoch) m = t.train_epoch(epoch, &test_data);
        // 8 well-separated classes: chance is 1/8; three epochs must get nearly all right.
        EXPECT_GT(m.test_accuracy, 0.95) << to_string(kind);
        EXPECT_LT(m.test_loss, before.loss) << to_string(kind);
        EXPECT_EQ(m.epoch, 3);
    }
}

// The step allocates nothing: an epoch of 5 steps and one of 50 make the same number of
// allocations (device buffers through memory::allocate and C++ heap allocations alike).
TEST_P(TrainerTest, TrainingStepAllocatesNothing) {
    auto allocations_for_epoch = [&](int n_samples) {
        const Dataset train = synthetic_dataset(n_samples, 4);
        Trainer t(small_model(), {}, small_train(GetParam(), 10), train);
        t.train_epoch(1, nullptr);  // first epoch: warm-up (and graph capture on the GPU)
        const std::size_t buffers = memory::allocation_count(), heap = g_new_calls.load();
        t.train_epoch(2, nullptr);
        return std::make_pair(memory::allocation_count() - buffers, g_new_calls.load() - heap);
    };
    const auto few = allocations_for_epoch(50);    // 5 steps
    const auto many = allocations_for_epoch(500);  // 50 steps
    EXPECT_EQ(few.first, many.first) << "device/host buffer allocations grow with the number of steps";
    EXPECT_EQ(few.second, many.second) << "heap allocations grow with the number of steps";
}

// A stop request ends the epoch after the step in flight; resuming the epoch at that step gives
// exactly the parameters of an uninterrupted epoch.
TEST_P(TrainerTest, StopAndResumeInsideAnEpochIsExact) {
    const Dataset train = synthetic_dataset(200, 9);  // 13 steps of 16
    Trainer straight(small_model(), {}, small_train(GetParam()), train);
    straight.train_epoch(1, nullptr);

    Trainer interrupted(small_model(), {}, small_train(GetParam()), train);
    std::atomic<bool> stop{false};
    interrupted.set_stop_flag(&stop);
    const EpochMetrics part = interrupted.train_epoch(1, nullptr, [&](int step, int, double, double) {
        if (step == 5) stop = true;
    });
    EXPECT_FALSE(part.completed);
    EXPECT_EQ(part.steps, 5);
    EXPECT_EQ(interrupted.step(), 5u);
    stop = false;
    const EpochMetrics rest = interrupted.train_epoch(1, nullptr, {}, part.steps);
    EXPECT_TRUE(rest.completed);
    EXPECT_EQ(rest.steps, 8);
    EXPECT_EQ(interrupted.step(), 13u);
    EXPECT_EQ(interrupted.model().parameters().to_host(), straight.model().parameters().to_host());
    EXPECT_THROW(interrupted.train_epoch(2, nullptr, {}, 13), Error);
}

TEST_P(TrainerTest, DivergenceStopsWithAMessage) {
    const Dataset train = synthetic_dataset(200, 10);
    OptimizerConfig opt;
    opt.kind = OptimizerKind::Sgd;
    opt.lr = 1e30f;
    MlpConfig model = small_model();
    model.dropout = 0.0f;
    Trainer t(model, opt, small_train(GetParam()), train);
    try {
        for (int epoch = 1; epoch <= 3; ++epoch) t.train_epoch(epoch, nullptr);
        FAIL() << "a learning rate of 1e30 trained without diverging";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("diverged in epoch"), std::string::npos) << what;
        EXPECT_NE(what.find("lower learning rate"), std::string::npos) << what;
    }
}

TEST_P(TrainerTest, RejectsBadConfiguration) {
    const Dataset train = synthetic_dataset(20, 1);
    TrainConfig t = small_train(GetParam());
    t.batch = 21;
    try {
        Trainer bad(small_model(), {}, t, train);
        FAIL() << "batch larger than the data set accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("larger than the training set"), std::string::npos) << e.what();
    }
    MlpConfig m = small_model();
    m.inputs = 784;
    EXPECT_THROW(Trainer(m, {}, small_train(GetParam()), train), Error);
}

INSTANTIATE_TEST_SUITE_P(Devices, TrainerTest, ::testing::Values(Device::Cpu, Device::Cuda),
                         [](const auto& param_info) { return std::string(to_string(param_info.param)); });

// GPU against CPU from one seed, dropout on: the same losses and parameters within tolerance
// (expf/sqrtf and GEMM summation order differ in the last bits; over a few dozen Adam steps the
// differences stay far below 1e-3).
TEST(TrainerParity, CpuAndGpuAgree) {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
    const Dataset train = synthetic_dataset(200, 5);
    Trainer cpu(small_model(), {}, small_train(Device::Cpu), train);
    Trainer gpu(small_model(), {}, small_train(Device::Cuda), train);
    for (int epoch = 1; epoch <= 2; ++epoch) {
        const EpochMetrics mc = cpu.train_epoch(epoch, nullptr), mg = gpu.train_epoch(epoch, nullptr);
        EXPECT_NEAR(mc.train_loss, mg.train_loss, 1e-4 * (1.0 + std::abs(mc.train_loss)));
        EXPECT_EQ(mc.train_accuracy, mg.train_accuracy);
    }
    const auto pc = cpu.model().parameters().to_host(), pg = gpu.model().parameters().to_host();
    ASSERT_EQ(pc.size(), pg.size());
    float worst = 0.0f;
    for (std::size_t i = 0; i < pc.size(); ++i) worst = std::max(worst, std::abs(pc[i] - pg[i]));
    EXPECT_LT(worst, 1e-3f);
}

// Replaying the captured CUDA Graph and launching the same ops one by one give identical results.
TEST(TrainerParity, GraphReplayMatchesPlainLaunches) {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
    const Dataset train = synthetic_dataset(200, 6);
    TrainConfig with_graph = small_train(Device::Cuda), without = small_train(Device::Cuda);
    without.use_graph = false;
    Trainer g(small_model(), {}, with_graph, train), p(small_model(), {}, without, train);
    for (int epoch = 1; epoch <= 2; ++epoch)
        EXPECT_EQ(g.train_epoch(epoch, nullptr).train_loss, p.train_epoch(epoch, nullptr).train_loss);
    EXPECT_GT(g.graph_nodes(), 0u);
    EXPECT_EQ(p.graph_nodes(), 0u);
    EXPECT_EQ(g.model().parameters().to_host(), p.model().parameters().to_host());
}

// `cumnist selftest`: without a GPU it refuses with the reason; on a GPU every check passes.
TEST(Selftest, EveryGpuCheckPasses) {
    if (!cuda_available()) {
        try {
            run_gpu_selftest();
            ADD_FAILURE() << "selftest ran without a GPU";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("no usable GPU"), std::string::npos) << e.what();
        }
        GTEST_SKIP() << "no CUDA device: " << cuda_unavailable_reason();
    }
    const std::vector<SelftestResult> results = run_gpu_selftest();
    EXPECT_GE(results.size(), 20u);
    for (const SelftestResult& r : results)
        EXPECT_TRUE(r.passed) << r.name << ": worst error " << r.worst_error << " of allowed; " << r.detail;
}

// One epoch of the default model on real MNIST on the CPU: the Keras reference reached 96.9 %
// test accuracy after its first epoch; cumnist must reach at least 96.5 %.
TEST(EndToEnd, OneEpochOnMnistReaches965Percent) {
    const std::string dir = default_data_dir();
    Dataset train, test;
    try {
        train = load_dataset(dir, "mnist", Split::Train);
        test = load_dataset(dir, "mnist", Split::Test);
    } catch (const Error& e) {
        FAIL() << "real MNIST is needed (run scripts/fetch_data.sh): " << e.what();
    }
    TrainConfig t;
    t.epochs = 1;
    t.device = Device::Cpu;
    Trainer trainer(MlpConfig{}, OptimizerConfig{}, t, train);
    const ResidentData test_data(test, Device::Cpu);
    const EpochMetrics m = trainer.train_epoch(1, &test_data);
    std::printf("epoch 1: loss %.4f accuracy %.4f, test loss %.4f accuracy %.4f, %.1f s (%.0f samples/s)\n",
                m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy, m.seconds, m.samples_per_second);
    EXPECT_GE(m.test_accuracy, 0.965);
    EXPECT_LT(m.test_loss, 0.12);
}

}  // namespace
}  // namespace cumnist
