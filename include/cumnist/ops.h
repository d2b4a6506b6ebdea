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
enum class Activation { None, Relu, Sigmoid, Tanh };
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

// Image geometry: a batch of images is a (n, c·h·w) view, one image per row, laid out as its
// ImageLayout says:
//   Nchw     channel-major (c, h, w): element (c, y, x) at c·h·w + y·w + x. The model's layout
//            wherever a tensor is read as a vector (dense layers, dropout masks, Flatten, the loss).
//   Nchw8c, Nchw16c  oneDNN's channel-blocked layouts: c/B blocks of (h, w, B) for B = 8 or 16,
//            element (c, y, x) at (c/B)·h·w·B + (y·w + x)·B + c mod B; c must be a multiple of B
//            (so the same size as Nchw). CPU only: its AVX2 and AVX-512 convolutions work in them
//            (conv2d_preferred_layouts), so a tensor passed between two convolutions or poolings in
//            one needs no reorder.
enum class ImageLayout { Nchw, Nchw8c, Nchw16c };
int channel_block(ImageLayout layout);      // 1, 8, 16
// A convolution's input and output layouts.
struct ImageLayouts {
    ImageLayout src = ImageLayout::Nchw, dst = ImageLayout::Nchw;
};
const char* to_string(ImageLayout layout);  // "nchw", "nChw8c", "nChw16c"

// The shape of a 2-D convolution (cross-correlation, as in PyTorch, ONNX and Keras): input
// (n, in_c, in_h, in_w), weights (out_c, in_c, k_h, k_w), output (n, out_c, out_h, out_w) with
//   y[n,o,oy,ox] = b[o] + Σ_{i,ky,kx} x[n, i, oy·stride_h − pad_top + ky, ox·stride_w − pad_left + kx] · w[o,i,ky,kx]
// (input positions outside the image contribute zero). pad_bottom/pad_right only decide out_h/out_w:
//   out_h = (in_h + pad_top + pad_bottom − k_h) / stride_h + 1, likewise out_w.
struct Conv2dGeometry {
    int n = 0, in_c = 0, in_h = 0, in_w = 0;
    int out_c = 0, k_h = 0, k_w = 0;
    int stride_h = 1, stride_w = 1;
    int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
    ImageLayout src_layout = ImageLayout::Nchw;  // x and dx
    ImageLayout dst_layout = ImageLayout::Nchw;  // y and dy
    int out_h() const { return (in_h + pad_top + pad_bottom - k_h) / stride_h + 1; }
    int out_w() const { return (in_w + pad_left + pad_right - k_w) / stride_w + 1; }
    int in_size() const { return in_c * in_h * in_w; }      // floats per input image
    int out_size() const { return out_c * out_h() * out_w(); }  // floats per output image
    int filter_size() const { return in_c * k_h * k_w; }    // weights per output channel
    Conv2dGeometry with_batch(int rows) const {
        Conv2dGeometry g = *this;
        g.n = rows;
        return g;
    }
    bool operator==(const Conv2dGeometry& o) const;
};

// Max pooling without padding: windows (k_h, k_w) every (stride_h, stride_w) positions, output
// (n, c, out_h, out_w), out_h = (in_h − k_h) / stride_h + 1.
struct Pool2dGeometry {
    int n = 0, c = 0, in_h = 0, in_w = 0;
    int k_h = 2, k_w = 2, stride_h = 2, stride_w = 2;
    ImageLayout in_layout = ImageLayout::Nchw;   // x and dx
    ImageLayout out_layout = ImageLayout::Nchw;  // y, dy and argmax
    int out_h() const { return (in_h - k_h) / stride_h + 1; }
    int out_w() const { return (in_w - k_w) / stride_w + 1; }
    int in_size() const { return c * in_h * in_w; }
    int out_size() const { return c * out_h() * out_w(); }
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
//   sigmoid, tanh, none: the activation a before dropout (sigmoid' = a (1 − a), tanh' = 1 − a²);
//         the mask is redrawn from Philox at *step.
// Overwrites dpre; dpre may be the same view as dh. When db.data is set, also db (1, cols) =
// Σ_rows dpre, the layer's bias gradient, with exactly the bits bias_grad(db, dpre) gives; on the
// GPU in the same kernel, as each element is written (one node less in a captured step).
void act_dropout_backward(MatrixView<float> dpre, MatrixView<const float> dh, MatrixView<const float> saved,
                          Activation act, const Dropout& dropout, const uint64_t* step, MatrixView<float> db = {});

// The same backward, with dh formed from the next layer, a dense one with few outputs (the output
// layer): dh (n, cols) = dy_next (n, k) · w_next (k, cols), then dpre and db (required) as
// act_dropout_backward(dpre, dh, ...) gives them. On the GPU one kernel, each element's k-term dot
// product (k ≤ kMaxNextOutputs, in ascending order, fused multiply-adds) formed where it is used:
// the next layer's dx GEMM is not a node of its own. On the CPU the GEMM and then the epilogue,
// with those ops' bits. dpre must not overlap the inputs.
constexpr int kMaxNextOutputs = 32;
void act_dropout_backward_through(MatrixView<float> dpre, MatrixView<const float> dy_next,
                                  MatrixView<const float> w_next, MatrixView<const float> saved, Activation act,
                                  const Dropout& dropout, const uint64_t* step, MatrixView<float> db);

// A standalone activation or dropout layer (one not fused into the layer before it):
//   y (n, cols) = act(x) · keep / (1 − rate)   (dropout active)   or   act(x)   (otherwise)
// Overwrites y; y may be the same view as x only without active dropout (an in-place
// activation). Its backward is act_dropout_backward with `saved` = y for ReLU or when dropout is
// not active (y is then act(x), the activation output).
void act_dropout_forward(MatrixView<float> y, MatrixView<const float> x, Activation act, const Dropout& dropout,
                         const uint64_t* step);

// db (1, cols) = Σ_rows dy (n, cols). Overwrites db. Summed in a fixed order (deterministic).
void bias_grad(MatrixView<float> db, MatrixView<const float> dy);

// ---- Convolution and pooling (Conv2dGeometry, Pool2dGeometry above) ---------------------------
// Each tensor is in the layout its geometry names; the results do not depend on the layouts
// (the same bits in any of them, element for element). The blocked layouts only on the CPU.

// The layouts of x and y in which `device`'s forward convolution of geometry g (its layouts
// ignored) runs without reordering them: on the CPU those oneDNN chooses for this CPU (e.g.
// nChw16c with AVX-512, nChw8c with AVX2; Nchw where it chooses one ImageLayout cannot name or
// the channels do not fill its blocks); NCHW on the GPU.
ImageLayouts conv2d_preferred_layouts(const Conv2dGeometry& g, Device device);

// Scratch memory the convolutions of geometry g need on `device` (the largest of the three
// directions, for batches of up to g.n images), in bytes. The caller allocates it once, before
// the first step, and passes it to every call: the ops allocate nothing. On the GPU this also
// creates the cuDNN handle and chooses the algorithms (deterministic ones: the same inputs give
// the same bits every run). On the CPU, whose primitives keep their own scratchpads, only the
// first-layer loop of conv2d_backward needs one (its per-image sums: about 1 MiB, or two images'
// sums where one image's are larger); else 0.
std::size_t conv2d_workspace_bytes(const Conv2dGeometry& g, Device device);

// y (n, out_size) = act(conv(x (n, in_size), w (out_c, filter_size)) + bias (1, out_c)), act as
// act_dropout_forward computes it (None: the convolution alone). Overwrites y. `workspace` is
// (1, ≥ conv2d_workspace_bytes(g)) bytes; g.n == x.rows. (On the CPU a ReLU runs inside the
// convolution, on its output while it is in cache.)
void conv2d_forward(MatrixView<float> y, MatrixView<const float> x, MatrixView<const float> w,
                    MatrixView<const float> bias, const Conv2dGeometry& g, MatrixView<uint8_t> workspace,
                    Activation act = Activation::None);
// dx (n, in_size) = ∂(Σ y·dy)/∂x for y = conv(x, w). Overwrites dx.
void conv2d_backward_data(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const float> w,
                          const Conv2dGeometry& g, MatrixView<uint8_t> workspace);
// dw (out_c, filter_size) = ∂(Σ y·dy)/∂w. Overwrites dw.
void conv2d_backward_filter(MatrixView<float> dw, MatrixView<const float> dy, MatrixView<const float> x,
                            const Conv2dGeometry& g, MatrixView<uint8_t> workspace);
// db (1, channels) = Σ over images and positions of dy (n, channels·spatial). Overwrites db. A
// fixed summation order (deterministic).
void channel_bias_grad(MatrixView<float> db, MatrixView<const float> dy, int channels);
// The whole backward of y = conv(x, w) + bias in one call: dw as conv2d_backward_filter, db as
// channel_bias_grad (with g.out_c channels) and, unless dx.data is null (a first layer needs
// none), dx as conv2d_backward_data. Overwrites them. On the CPU dy is reordered into the
// primitives' layout once for both directions and db comes out of the backward-weights primitive
// (deterministic for a given thread count, like dw; its summation order is oneDNN's), except
// without dx for fewer than 8 input channels (in_c·k_h·k_w ≤ 64, out_c a multiple of 8, x NCHW: a
// first layer), where oneDNN would pad x to a block of channels: there dw and db come from a loop
// of cumnist's own, per output channel each image's positions in row-major order and then the
// images in order (the same bits for any thread count and layout of dy). On the GPU it is the
// three ops.
void conv2d_backward(MatrixView<float> dx, MatrixView<float> dw, MatrixView<float> db, MatrixView<const float> dy,
                     MatrixView<const float> x, MatrixView<const float> w, const Conv2dGeometry& g,
                     MatrixView<uint8_t> workspace);

// y = the maximum of each window; argmax (same shape as y) = the position y·in_w + x, within its
// (image, channel) plane, of the element chosen: the FIRST maximum in row-major window order
// (ky outer, kx inner), the same on every device. NaN compares as in `v > best`, so a NaN is
// never chosen over an earlier number. Overwrites y and argmax.
void maxpool2d_forward(MatrixView<float> y, MatrixView<int32_t> argmax, MatrixView<const float> x,
                       const Pool2dGeometry& g);
// dx (n, in_size): each dy element added to its window's argmax element, zero elsewhere;
// overlapping windows add in row-major window order. Overwrites dx.
// When relu_y has data, x was a ReLU's output and relu_y (n, out_size) is this pooling's forward
// output y: dx is then also the ReLU's backward, dx · [x > 0], in the same pass, with exactly the
// bits act_dropout_backward(ReLU, no dropout, saved = x) gives applied to the plain dx (at a
// window's argmax x is that window's y, so [x > 0] is [y > 0]; elsewhere dx is 0 either way).
void maxpool2d_backward(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const int32_t> argmax,
                        const Pool2dGeometry& g, MatrixView<const float> relu_y);
void maxpool2d_backward(MatrixView<float> dx, MatrixView<const float> dy, MatrixView<const int32_t> argmax,
                        const Pool2dGeometry& g);  // without the gate

// Softmax cross-entropy over logits (n, classes) with integer labels (n) in [0, classes):
//   p = exp(z − max z) / Σ exp(z − max z) per row;  row_loss[r] = −log p[label[r]]
//   (computed as (max z − z_label) + log Σ exp(z − max z))
//   row_correct[r] = 1 if argmax(z) == label (first maximum on ties), else 0
//   dlogits = (p − onehot(label)) · grad_scale   (grad_scale = 1/batch: the only place the mean's 1/n is applied)
// Overwrites row_loss, row_correct and, unless dlogits.data is null, dlogits (which may alias logits).
// When `totals` is set (two values on the device), also accumulates the batch's metrics into it
// as accumulate_metrics does: on the CPU with its very bits; on the GPU, for batches of up to
// 2,048 rows, in the same kernel (one block; a fixed order of its own, so deterministic but not
// accumulate_metrics's bits), and for larger ones by a second kernel.
void softmax_xent(MatrixView<float> dlogits, MatrixView<float> row_loss, MatrixView<float> row_correct,
                  MatrixView<const float> logits, MatrixView<const uint8_t> labels, float grad_scale,
                  double* totals = nullptr);

// The output layer's bias add and bias gradient folded into the loss (a training step's one GPU
// kernel for them, with totals, for batches of up to 2,048 rows; three kernels otherwise):
//   logits (n, classes) ← logits + bias per column, in place (bias_act_dropout_forward's bits
//   with no activation and no dropout); then softmax_xent as above; then db (1, classes) =
//   Σ_rows dlogits (bias_grad's bits).
// dlogits is required and must not overlap logits; totals as softmax_xent's.
void bias_softmax_xent(MatrixView<float> dlogits, MatrixView<float> db, MatrixView<float> row_loss,
                       MatrixView<float> row_correct, MatrixView<float> logits, MatrixView<const float> bias,
                       MatrixView<const uint8_t> labels, float grad_scale, double* totals = nullptr);

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
// `advance`, when set, is the end of a training step folded into its last op: three uint64 values
// on the parameters' device; after the update (and so after every read of *step, which may be
// advance[0]) advance[0] (the step counter) and advance[1] (the batch index) are incremented.
// advance[2] must be 0, and is 0 again afterwards: on the GPU the kernel's blocks count
// themselves there to find the last one, which does the increments. With advance set, w may be
// empty (the counters still advance).
// `lr_scale`, when set, is one value on the parameters' device, read at every step: the rate used
// is lr · *lr_scale (a learning-rate schedule's factor; a captured step follows it without being
// captured again). A scale of 1 gives exactly lr.
struct AdamConfig {
    float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-7f;
    const float* lr_scale = nullptr;
};
void adam_step(MatrixView<float> w, MatrixView<float> m, MatrixView<float> v, MatrixView<const float> g,
               const AdamConfig& cfg, const uint64_t* step, uint64_t* advance = nullptr);

struct SgdConfig {
    float lr = 1e-2f, momentum = 0.0f;
    const float* lr_scale = nullptr;
};
void sgd_step(MatrixView<float> w, MatrixView<float> velocity, MatrixView<const float> g, const SgdConfig& cfg,
              uint64_t* advance = nullptr);

struct RmsPropConfig {
    float lr = 1e-3f, rho = 0.9f, epsilon = 1e-7f;
    const float* lr_scale = nullptr;
};
void rmsprop_step(MatrixView<float> w, MatrixView<float> s, MatrixView<const float> g, const RmsPropConfig& cfg,
                  uint64_t* advance = nullptr);

// Sets all elements to zero.
void fill_zero(MatrixView<float> x);

}  // namespace ops
}  // namespace cumnist
