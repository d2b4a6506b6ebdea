// Evaluation of a model on a whole data set with per-sample predictions: loss, accuracy,
// per-class accuracy and the confusion matrix (what `cumnist eval` reports). Not the training
// loop's evaluation (Trainer::evaluate keeps everything on the device); this one reads the
// logits back to the host batch by batch.
#pragma once

#include <cstdint>
#include <vector>

#include "cumnist/data.h"
#include "cumnist/model.h"

namespace cumnist {

struct ClassificationReport {
    int n = 0, classes = 0;
    double loss = 0, accuracy = 0;  // mean −log p(label), fraction correct
    std::vector<int> predictions;   // per sample: argmax of the logits (the first maximum on ties)
    std::vector<int64_t> confusion; // classes × classes, row = true label, column = predicted
    std::vector<float> logits;      // n × classes, row-major: the model's outputs before the softmax

    int64_t count(int truth, int predicted) const { return confusion[static_cast<std::size_t>(truth) * classes + predicted]; }
    int64_t n_true(int truth) const;       // samples whose label is `truth`
    double class_accuracy(int truth) const;  // correct / n_true (NaN when the class has no samples)
};

// Runs `model` (forward, no dropout) over `data` in batches of `eval_batch` on the model's device.
// The images must have model.config().inputs pixels and every label must be < classes.
ClassificationReport evaluate_classifier(Model& model, const Dataset& data, int eval_batch = 1000);

// `values` (rows × cols, row-major) as a NumPy .npy file's bytes: format 1.0, '<f4', C order.
std::string npy_bytes(const std::vector<float>& values, int rows, int cols);

}  // namespace cumnist
