// The training loop, written once for every device: the data set resident on the device or
// streamed to it batch by batch, the step as a fixed sequence of ops reading its batch and step
// number from device memory (so on the GPU it is captured once as a CUDA Graph), metrics
// accumulated on the device and read back once per epoch.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cumnist/data.h"
#include "cumnist/model.h"
#include "cumnist/optim.h"

namespace cumnist {

// Where the training set lives while training.
//   Resident: uploaded to the device once; each step gathers its batch there.
//   Stream:   stays in host memory; a loader thread stages the batches ahead of use (BatchLoader),
//             and each one is copied into a small device ring while the step before it runs. For
//             data sets that do not fit in device memory.
//   Auto:     Resident on the CPU, and on the GPU when the data set takes less than half of the
//             free device memory; Stream otherwise.
// Both give bit-identical training.
enum class DataPlacement { Auto, Resident, Stream };
const char* to_string(DataPlacement placement);  // "auto", "resident", "stream"
DataPlacement parse_data_placement(const std::string& name);

struct TrainConfig {
    int epochs = 20;
    int batch = 32;
    int eval_batch = 1000;
    uint64_t seed = 42;
    Device device = Device::Cpu;
    bool use_graph = true;  // CUDA only: capture the step once and replay it
    bool tf32 = false;      // CUDA only
    DataPlacement placement = DataPlacement::Auto;
    void validate(int n_train) const;
};

struct EpochMetrics {
    int epoch = 0;  // 1-based
    double train_loss = 0, train_accuracy = 0;
    double test_loss = 0, test_accuracy = 0;  // the evaluation set's: the validation set's when on_validation
    bool on_validation = false;               // evaluated on a validation split (--validation-split), not the test set
    double lr = 0;                            // the learning rate of the epoch's steps (lr · the schedule's factor)
    double seconds = 0;        // training only, evaluation excluded
    double eval_seconds = 0;
    double samples_per_second = 0;
    int steps = 0;           // steps run by this call: what the losses, accuracies and times cover
    int first_step = 0;      // the epoch's step this call began at (0-based; > 0 after a resume inside it)
    bool completed = true;   // false when the stop flag ended the epoch early
};

struct Evaluation {
    double loss = 0, accuracy = 0;
    int n = 0;
};

// Called while an epoch runs: steps done, steps in the epoch, and, when the metrics are readable
// without synchronising the device (CPU), the running mean loss and accuracy (else NaN).
using ProgressFn = std::function<void(int step, int n_steps, double loss, double accuracy)>;

// A data set copied once to a device: uint8 images and labels, and the sample order. Evaluation
// data is always resident (evaluate() takes a ResidentData), whatever the training placement: a
// test set is a fraction of the training set, and evaluation is not where streaming is needed.
struct ResidentData {
    ResidentData(const Dataset& ds, Device device);
    int n, features;
    Buffer<uint8_t> images, labels;
    Buffer<int32_t> order;
};

class Trainer {
public:
    // With DataPlacement::Stream the trainer reads `train` during every epoch: it must outlive the
    // trainer. (Resident copies it to the device here.)
    Trainer(const ModelSpec& model, const OptimizerConfig& optimizer, const TrainConfig& config, const Dataset& train);
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
    // The training metrics summed since the epoch began, or since construction before the first
    // epoch (train_steps() adds to them): the loss over samples and the correct count. Reads the
    // device (waits for the queued steps).
    std::vector<double> metric_totals() const { return m_totals.to_host(); }
    // Waits until all queued device work has finished.
    void synchronize();
    // The learning-rate schedule's factor for the steps that follow (Optimizer::set_lr_scale),
    // after the queued steps have finished.
    void set_lr_scale(float scale);

    Model& model() { return m_model; }
    Optimizer& optimizer() { return m_optimizer; }
    const TrainConfig& config() const { return m_config; }
    DataPlacement placement() const { return m_placement; }  // Resident or Stream (Auto resolved)
    int steps_per_epoch() const;
    uint64_t step() const;           // optimizer steps taken so far (reads the device counter)
    void set_step(uint64_t step);    // for resuming
    std::size_t graph_nodes() const; // kernels in the captured step, 0 when none
    // Why the step runs as plain launches although use_graph is set: the error of the failed CUDA
    // Graph capture (the run goes on without a graph), or empty.
    const std::string& graph_failure() const { return m_graph_failure; }

private:
    struct Streamed;
    void run_step(int rows);   // one training step on the batch at the device's batch index
    void full_batch_step();    // run_step(batch), replaying the captured graph when there is one
    void stage_batch(int b);   // Stream: batch b into its ring slot, the compute stream waiting for it
    void finish_batch();       // Stream: after the step that read the staged batch

    TrainConfig m_config;
    DataPlacement m_placement;  // resolved: Resident or Stream
    int m_n, m_features;        // the training set's samples and pixels per sample
    Model m_model;
    Optimizer m_optimizer;
    std::unique_ptr<ResidentData> m_resident;  // Resident placement
    std::unique_ptr<Streamed> m_streamed;      // Stream placement
    Workspace m_ws;
    Buffer<float> m_x;
    Buffer<uint8_t> m_y;
    Buffer<uint64_t> m_counters;  // [0] optimizer step, [1] batch index in the epoch, [2] 0 (ops.h: advance)
    Buffer<double> m_totals;      // [0] loss sum, [1] correct count
    Buffer<uint64_t> m_eval_index;  // evaluate(): the batch index, and its loss sum and correct count
    Buffer<double> m_eval_totals;   // (allocated once: an evaluation allocates nothing)
    struct Graph;
    std::unique_ptr<Graph> m_graph;
    std::string m_graph_failure;
    int m_bench_batch = 0;  // train_steps(): host copy of the batch index
    const std::atomic<bool>* m_stop = nullptr;
};

}  // namespace cumnist
