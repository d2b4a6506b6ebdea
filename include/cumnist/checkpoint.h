// Checkpoints in the safetensors layout: an 8-byte little-endian header length, a JSON header
// (dtype, shape and data offsets per tensor; "__metadata__" with the model and optimizer
// configuration, the schedule and the metrics so far, each as a JSON-encoded string), then the raw
// little-endian F32 data. Not a general safetensors library: only what cumnist writes is read.
//
// Tensors, in the order of the flat buffers (so each buffer is one contiguous run of bytes):
//   layers.{l}.weight  [out, in]     layers.{l}.bias  [out]
//   optimizer.{state}.layers.{l}.weight / .bias    for each name of Optimizer::state_names()
//                                                  ("adam.m", "adam.v", "sgd.velocity", "rmsprop.s")
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cumnist/model.h"
#include "cumnist/schedule.h"
#include "cumnist/optim.h"
#include "cumnist/trainer.h"

namespace cumnist {

// Everything a checkpoint records besides the tensors.
struct CheckpointMeta {
    ModelSpec model;
    OptimizerConfig optimizer;
    int epoch = 0;        // epochs completed
    int epochs = 0;       // epochs the run was asked for (a resumed run continues to here by default)
    uint64_t step = 0;    // optimizer steps taken
    int epoch_step = 0;   // steps done in epoch `epoch` + 1 when the run was interrupted inside it (else 0)
    uint64_t seed = 42;
    int batch = 32;
    double validation_split = 0.0;  // the fraction of the training set held out for validation (0: none)
    LrSchedule schedule;            // the learning-rate schedule (schedule.h)
    int early_stopping = 0;         // patience on the validation loss (0: none)
    bool best_on_loss = false;      // best.safetensors chosen by the lowest loss (else the highest accuracy)
    std::string dataset;  // "mnist", "fashion", or empty when unknown
    std::string device;   // where it was trained ("cpu", "cuda"): informational
    std::vector<EpochMetrics> history;  // epochs 1..epoch
};

// The most epochs a run may ask for: what a checkpoint's "epoch" and "epochs" may hold, so that
// every value train accepts is read back.
constexpr int kMaxEpochs = 1 << 30;

struct Checkpoint {
    CheckpointMeta meta;
    std::vector<float> parameters;                    // the flat buffer, layout of layer_layout(meta.model)
    std::vector<std::vector<float>> optimizer_state;  // Optimizer::state_names() order; empty: not stored
};

// One epoch's metrics as a JSON object (a line of --metrics-out, an entry of the checkpoint's
// "metrics"): epoch, losses, accuracies, times, and "steps"/"first_step" (1-based), which say
// which of the epoch's steps the numbers cover. Non-finite numbers are null.
std::string metrics_json(const EpochMetrics& m);

// The state buffer names of an optimizer kind (Optimizer::state_names() without an Optimizer).
std::vector<std::string> optimizer_state_names(OptimizerKind kind);

// The file's bytes, and their inverse. parse_checkpoint validates everything before it allocates
// anything the header claims: the header length against the file size and a 100 MB limit, the
// JSON, every dtype (F32 only), shape and data_offsets (inside the data section, size ==
// product(shape) × 4, no overlaps and no gaps), the metadata, and that the tensors are exactly
// those of the model the metadata describes. Each failure throws cumnist::Error naming `name`,
// what was expected and what was found.
std::string serialize_checkpoint(const Checkpoint& checkpoint);
Checkpoint parse_checkpoint(const std::string& name, const std::string& bytes);

// Writes through "<path>.tmp" (flushed to disk) and a rename: an interrupted save never destroys
// the previous file.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);
Checkpoint load_checkpoint(const std::string& path);

// A snapshot of a trainer: parameters, optimizer state, step counter, configuration. `meta`
// supplies what the trainer does not know (epoch, epochs, dataset, history); the rest is overwritten.
Checkpoint capture_checkpoint(Trainer& trainer, CheckpointMeta meta);

// Puts a checkpoint's parameters, optimizer state and step counter into a trainer on any device.
// The trainer's model and optimizer configuration and seed must equal the checkpoint's, and the
// checkpoint must hold optimizer state; otherwise throws Error naming `name` and the difference.
void restore_checkpoint(Trainer& trainer, const Checkpoint& checkpoint, const std::string& name);

// The checkpoint's model on `device`, ready for Model::forward.
Model load_model(const Checkpoint& checkpoint, Device device);

}  // namespace cumnist
