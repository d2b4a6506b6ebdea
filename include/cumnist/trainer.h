// The training loop, written once for every device: the data set resident on the device, the
// step as a fixed sequence of ops reading its batch and step number from device memory (so on
// the GPU it is captured once as a CUDA Graph), metrics accumulated on the device and read back
// once per epoch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cumnist/data.h"
#include "cumnist/mlp.h"
#include "cumnist/optim.h"

namespace cumnist {

struct TrainConfig {
    int epochs = 20;
    int batch = 32;
    int eval_batch = 1000;
    uint64_t seed = 42;
    Device device = Device::Cpu;
    bool use_graph = true;  // CUDA only: capture the step once and replay it
    bool tf32 = false;      // CUDA only
    void validate(int n_train) const;
};

struct EpochMetrics {
    int epoch = 0;  // 1-based
    double train_loss = 0, train_accuracy = 0;
    double test_loss = 0, test_accuracy = 0;
    double seconds = 0;        // training only, evaluation excluded
    double eval_seconds = 0;
    double samples_per_second = 0;
    int steps = 0;           // steps run by this call
    bool completed = true;   // false when the stop flag ended the epoch early
};

struct Evaluation {
    double loss = 0, accuracy = 0;
    int n = 0;
};

// Called while an epoch runs: steps done, steps in the epoch, and, when the metrics are readable
// without synchronising the device (CPU), the running mean loss and accuracy (else NaN).
using ProgressFn = std::function<void(int step, int n_steps, double loss, double accuracy)>;

// A data set copied once to a device: uint8 images and labels, and the sample order.
struct ResidentData {
    ResidentData(const Dataset& ds, Device device);
    int n, features;
    Buffer<uint8_t> images, labels;
    Buffer<int32_t> order;
};

class Trainer {
public:
    Trainer(const MlpConfig& model, const OptimizerConfig& optimizer, const TrainConfig& config, const Dataset& train);
    ~Trainer();

    // One pass over the training set (epoch is 1-based), then evaluation on `test` when given.
    // `first_step` > 0 resumes an interrupted epoch at that step (same order, same masks); the
    // returned train metrics then cover the steps run by this call.
    EpochMetrics train_epoch(int epoch, const ResidentData* test, const ProgressFn& progress = {}, int first_step = 0);

    // Interruption: once *stop is true, train_epoch returns after the step in flight, with
    // completed == false, no evaluation, and steps == the steps it ran. Null disables.
    void set_stop_flag(const std::atomic<bool>* stop) { m_stop = stop; }
    Evaluation evaluate(const ResidentData& data);

    // Benchmarking: `n` full-batch training steps (graph replay on the GPU), continuing through
    // the current epoch's order and wrapping to its start; no read-back. Metrics keep accumulating.
    void train_steps(int n);
    // Waits until all queued device work has finished.
    void synchronize();

    Mlp& model() { return m_model; }
    Optimizer& optimizer() { return m_optimizer; }
    const TrainConfig& config() const { return m_config; }
    int steps_per_epoch() const;
    uint64_t step() const;           // optimizer steps taken so far (reads the device counter)
    void set_step(uint64_t step);    // for resuming
    std::size_t graph_nodes() const; // kernels in the captured step, 0 when none

private:
    void run_step(int rows);   // one training step on the batch at the device's batch index
    void full_batch_step();    // run_step(batch), replaying the captured graph when there is one

    TrainConfig m_config;
    Mlp m_model;
    Optimizer m_optimizer;
    ResidentData m_train;
    MlpWorkspace m_ws;
    Buffer<float> m_x;
    Buffer<uint8_t> m_y;
    Buffer<uint64_t> m_counters;  // [0] optimizer step, [1] batch index in the epoch
    Buffer<double> m_totals;      // [0] loss sum, [1] correct count
    struct Graph;
    std::unique_ptr<Graph> m_graph;
    int m_bench_batch = 0;  // train_steps(): host copy of the batch index
    const std::atomic<bool>* m_stop = nullptr;
};

}  // namespace cumnist
