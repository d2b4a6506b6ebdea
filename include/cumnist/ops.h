// THE SEAM: every numeric operation of cumnist. The model, the optimizers and the trainer call
// only these. Each op checks shapes and devices once, then runs the CPU backend (src/cpu/) or the
// CUDA backend (kernels/) on the device its tensors live on. All tensors of one call live on one
// device. Row-major throughout. "Overwrites" and "accumulates into" are stated per op.
//
// Nothing here allocates, synchronises the GPU with the host, or reads tensor contents on the
// host: an op sequence can be captured as a CUDA Graph. Values that change from step to step
// (the step counter, the batch index) are passed as device data, never as arguments.
#pragma once

#include <cstdint>

#include "cumnist/buffer.h"

namespace cumnist {

enum class Trans { No, Yes };
enum class Activation { None, Relu, Sigmoid };
enum class Accumulate { Overwrite, Add };

const char* to_string(Activation a);

// Dropout as applied by bias_act_dropout_forward / act_dropout_backward. rate == 0 or
// training == false: no dropout. Element i of the (n, cols) activation keeps its value scaled by
// 1/(1 − rate) iff dropout_keep(seed, stream, *step, i, keep_threshold) (philox.h).
struct Dropout {
    float rate = 0.0f;
    uint64_t seed = 0;
    uint32_t stream = 0;
    bool training = false;
    bool active() const { return training && rate > 0.0f; }
};

namespace ops {

// C (m, n) = alpha · op(A) · op(B) + beta · C, op(A) (m, k), op(B) (k, n). A is stored (m, k) when
// ta == No and (k, m) when ta == Yes; likewise B. beta == 0 overwrites C (its contents may be NaN).
void gemm(MatrixView<float> c, MatrixView<const float> a, Trans ta, MatrixView<const float> b, Trans tb,
          float alpha = 1.0f, float beta = 0.0f);

// Hidden/out layer epilogue, in place on `a` (n, cols), which holds x·wᵀ on entry:
//   a ← act(a + bias)                       (bias (1, cols))
//   h ← a · keep / (1 − rate)  (dropout active)   or   h ← a  (otherwise)
// Overwrites a and h; h may be the same view as a only when dropout is not active.
// `step` (one value, on the tensors' device) is the 0-based optimizer step; it is read only when
// dropout is active.
void bias_act_dropout_forward(MatrixView<float> h, MatrixView<float> a, MatrixView<const float> bias,
                              Activation act, const Dropout& dropout, const uint64_t* step);

// Backward of the epilogue above: dpre (n, cols) = dh · keep/(1 − rate) · act'(pre). `saved` is
// what the forward pass left for it:
//   ReLU: the output h (after dropout; h is a when dropout is not active). keep · relu'(pre) is
//         exactly [h > 0], so dpre = [h > 0] · dh / (1 − rate) and no mask is redrawn;
//   sigmoid, none: the activation a before dropout (sigmoid' = a (1 − a)); the mask is redrawn
//         from Philox at *step.
// Overwrites dpre; dpre may be the same view as dh.
void act_dropout_backward(MatrixView<float> dpre, MatrixView<const float> dh, MatrixView<const float> saved,
                          Activation act, const Dropout& dropout, const uint64_t* step);

// db (1, cols) = Σ_rows dy (n, cols). Overwrites db. Summed in a fixed order (deterministic).
void bias_grad(MatrixView<float> db, MatrixView<const float> dy);

// Softmax cross-entropy over logits (n, classes) with integer labels (n) in [0, classes):
//   p = exp(z − max z) / Σ exp(z − max z) per row;  row_loss[r] = −log p[label[r]]
//   (computed as (max z − z_label) + log Σ exp(z − max z))
//   row_correct[r] = 1 if argmax(z) == label (first maximum on ties), else 0
//   dlogits = (p − onehot(label)) · grad_scale   (grad_scale = 1/batch: the only place the mean's 1/n is applied)
// Overwrites row_loss, row_correct and, unless dlogits.data is null, dlogits (which may alias logits).
void softmax_xent(MatrixView<float> dlogits, MatrixView<float> row_loss, MatrixView<float> row_correct,
                  MatrixView<const float> logits, MatrixView<const uint8_t> labels, float grad_scale);

// probs (n, classes) = softmax(logits) per row, max-subtracted. Overwrites probs (may alias logits).
void softmax(MatrixView<float> probs, MatrixView<const float> logits);

// totals[0] += Σ row_loss, totals[1] += Σ row_correct, in double, in a fixed order. Accumulates.
void accumulate_metrics(double* totals, MatrixView<const float> row_loss, MatrixView<const float> row_correct);

// Batch assembly from images held on the tensors' device:
//   r-th row of the batch = row order[*batch_index · batch_size + r] of images   (r < x.rows ≤
//   batch_size; the last batch of an epoch may be short)
//   x (rows, cols) = images (n_rows, cols) / 255 as float;  labels_out (1, rows) = labels
// `order` (1, n) maps batch positions to rows of images, and must be long enough for every batch
// index used: the epoch's permutation of a resident data set (n = n_rows), or, when streaming, the
// map of the epoch's positions to the rows of a ring of staged batches (n ≥ n_rows).
// `batch_index` is one value on the device.
void gather_batch(MatrixView<float> x, MatrixView<uint8_t> labels_out, MatrixView<const uint8_t> images,
                  MatrixView<const uint8_t> labels, MatrixView<const int32_t> order, const uint64_t* batch_index,
                  int batch_size);

// x (rows, cols) = pixels (rows, cols) / 255. Overwrites x. (Streaming path: batch already contiguous.)
void u8_to_float(MatrixView<float> x, MatrixView<const uint8_t> pixels);

// *counter += 1 (one value on `device`). Used for the step counter and the batch index, so a
// captured step advances them itself.
void increment(uint64_t* counter, Device device);

// Optimizer steps over the whole flat parameter buffer, one launch each. w, g and the state views
// are (1, n) and alias nothing. `step` is the 0-based index of this step (bias correction uses t = *step + 1).
struct AdamConfig {
    float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-7f;
};
void adam_step(MatrixView<float> w, MatrixView<float> m, MatrixView<float> v, MatrixView<const float> g,
               const AdamConfig& cfg, const uint64_t* step);

struct SgdConfig {
    float lr = 1e-2f, momentum = 0.0f;
};
void sgd_step(MatrixView<float> w, MatrixView<float> velocity, MatrixView<const float> g, const SgdConfig& cfg);

struct RmsPropConfig {
    float lr = 1e-3f, rho = 0.9f, epsilon = 1e-7f;
};
void rmsprop_step(MatrixView<float> w, MatrixView<float> s, MatrixView<const float> g, const RmsPropConfig& cfg);

// Sets all elements to zero.
void fill_zero(MatrixView<float> x);

}  // namespace ops
}  // namespace cumnist
