// The test oracle: a naive double-precision implementation of every numeric operation cumnist
// performs, and of a whole MLP forward/backward. It is the specification the backends are tested
// against, so it shares NOTHING with them: no cumnist header, its own loops, std::exp/std::log,
// its own enums. It is itself validated by central finite differences (tests/test_reference.cpp).
//
// Not fast, not general: row-major matrices of double, sizes a few thousand at most per side.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ref {

// A row-major (rows, cols) matrix of double.
struct Matrix {
    int rows = 0;
    int cols = 0;
    std::vector<double> data;

    Matrix() = default;
    Matrix(int r, int c, double fill = 0.0);

    // From row-major float data (the backends' format), widened exactly.
    static Matrix from_float(const std::vector<float>& values, int r, int c);

    double& at(int r, int c) { return data[static_cast<std::size_t>(r) * cols + c]; }
    double at(int r, int c) const { return data[static_cast<std::size_t>(r) * cols + c]; }
    std::size_t size() const { return data.size(); }
    std::vector<float> to_float() const;
};

enum class Act { None, Relu, Sigmoid, Tanh };

// ---- Single operations ---------------------------------------------------------------------

// op(A) · op(B) where op(X) = X or Xᵀ. A is stored (m, k) (ta false) or (k, m) (ta true);
// B is stored (k, n) or (n, k). Returns (m, n).
Matrix matmul(const Matrix& a, bool ta, const Matrix& b, bool tb);

// C ← alpha · op(A)·op(B) + beta · C. beta == 0 ignores C's previous contents (even NaN).
void gemm(Matrix& c, const Matrix& a, bool ta, const Matrix& b, bool tb, double alpha, double beta);

// act(x) for one value.
double activate(double x, Act act);
// act'(pre) expressed through the activation output a = act(pre):
// none 1, relu (a > 0), sigmoid a (1 − a), tanh 1 − a².
double activation_derivative_from_output(double a, Act act);

// a (n, cols) = act(z + bias), bias broadcast over rows (bias.size() == cols).
Matrix bias_act(const Matrix& z, const std::vector<double>& bias, Act act);

// Inverted dropout with an explicit keep mask (one byte per element, row-major, 0 or 1):
// h = a · keep / (1 − rate). An empty mask means no dropout (h = a).
Matrix dropout(const Matrix& a, const std::vector<uint8_t>& keep, double rate);

// Backward of bias_act followed by dropout, given the saved activation output a:
// dpre = dh · keep / (1 − rate) · act'(a). An empty mask means no dropout.
Matrix act_dropout_backward(const Matrix& dh, const Matrix& a, const std::vector<uint8_t>& keep, double rate, Act act);

// Row-wise softmax, max-subtracted.
Matrix softmax(const Matrix& logits);

struct XentResult {
    std::vector<double> row_loss;     // −log p[label] per row
    std::vector<double> row_correct;  // 1 when the first maximum of the row is the label, else 0
    double loss = 0.0;                // mean of row_loss over the batch
    Matrix dlogits;                   // (p − onehot) · grad_scale
};

// Softmax cross-entropy with integer labels in [0, classes).
XentResult softmax_xent(const Matrix& logits, const std::vector<int>& labels, double grad_scale);

// Σ over rows, one value per column.
std::vector<double> column_sums(const Matrix& m);

// ---- A whole MLP ---------------------------------------------------------------------------

// sizes {in, h1, ..., classes}. Hidden layers: z = x·Wᵀ + b, a = act(z), h = dropout(a). The last
// layer is linear (its output are the logits), followed by softmax cross-entropy (batch mean).
struct RefMlp {
    std::vector<int> sizes;
    Act activation = Act::Relu;
    std::vector<Matrix> w;               // w[l] (sizes[l+1], sizes[l]), row-major
    std::vector<std::vector<double>> b;  // b[l] (sizes[l+1])

    int n_layers() const { return static_cast<int>(sizes.size()) - 1; }
    // Glorot-uniform weights and (unlike a fresh model) small non-zero biases, so that bias
    // gradients and every code path are exercised. Deterministic in seed.
    static RefMlp random(const std::vector<int>& sizes, Act activation, uint32_t seed);
};

struct RefForward {
    std::vector<Matrix> pre;     // per layer: z_l = h_{l-1}·W_lᵀ + b_l (pre-activation; logits for the last)
    std::vector<Matrix> act;     // per hidden layer: a_l = act(z_l)
    std::vector<Matrix> hidden;  // per hidden layer: h_l = dropout(a_l) (the next layer's input)
    Matrix logits;               // (n, classes)
    XentResult xent;             // with grad_scale 1/n
    double loss = 0.0;           // batch mean
};

// masks: empty (no dropout anywhere), or one keep mask per hidden layer of size n · sizes[l+1]
// (row-major). rate applies to every hidden layer.
RefForward forward(const RefMlp& mlp, const Matrix& x, const std::vector<int>& labels,
                   const std::vector<std::vector<uint8_t>>& masks, double rate);

struct RefGrads {
    std::vector<Matrix> dw;               // like RefMlp::w
    std::vector<std::vector<double>> db;  // like RefMlp::b
    Matrix dx;                            // d loss / d input (n, sizes[0])
};

// Gradients of forward(...).loss with respect to every weight, bias and the input.
RefGrads backward(const RefMlp& mlp, const Matrix& x, const std::vector<int>& labels, const RefForward& fwd,
                  const std::vector<std::vector<uint8_t>>& masks, double rate);

// ---- Convolution and max pooling on NCHW tensors --------------------------------------------

// An NCHW tensor of double: (n, c, h, w), row-major with w fastest:
// element (in, ic, y, x) is data[((in · c + ic) · h + y) · w + x].
struct Tensor4 {
    int n = 0, c = 0, h = 0, w = 0;
    std::vector<double> data;

    Tensor4() = default;
    Tensor4(int n, int c, int h, int w, double fill = 0.0);

    // From NCHW float data (the backends' format), widened exactly.
    static Tensor4 from_float(const std::vector<float>& values, int n, int c, int h, int w);

    double& at(int in, int ic, int y, int x) { return data[index(in, ic, y, x)]; }
    double at(int in, int ic, int y, int x) const { return data[index(in, ic, y, x)]; }
    std::size_t size() const { return data.size(); }
    std::vector<float> to_float() const;

private:
    std::size_t index(int in, int ic, int y, int x) const {
        return ((static_cast<std::size_t>(in) * c + ic) * h + y) * w + x;
    }
};

// Padding of one spatial dimension, Keras/TensorFlow/ONNX SAME_UPPER convention: the odd extra
// padding element, if any, goes after (bottom/right).
struct Pad1 {
    int before = 0, after = 0, out = 0;
};
// valid: out = floor((in − k) / stride) + 1, no padding; out <= 0 when k > in (the caller checks).
// same:  out = ceil(in / stride); total = max((out − 1)·stride + k − in, 0);
//        before = total / 2 (floor), after = total − before.
Pad1 pad_valid(int in, int k, int stride);
Pad1 pad_same(int in, int k, int stride);

// Convolution (cross-correlation, as PyTorch/ONNX/Keras; the kernel is NOT flipped):
// w (out_c, in_c, kh, kw), bias (out_c), or empty for no bias.
//   y[n,o,oy,ox] = b[o] + Σ_{i,ky,kx} x[n, i, oy·stride_h − pad_h.before + ky,
//                                             ox·stride_w − pad_w.before + kx] · w[o,i,ky,kx]
// where terms whose input index falls outside the image are zero. Output (n, out_c, pad_h.out, pad_w.out).
Tensor4 conv2d(const Tensor4& x, const Tensor4& w, const std::vector<double>& bias, int stride_h, int stride_w,
               Pad1 pad_h, Pad1 pad_w);

// Gradients of L = Σ conv2d(x, w, b) · dy (dy of the output's shape):
// dL/dx (n, in_c, x_h, x_w): dx[n,i,iy,ix] = Σ over (o, oy, ox, ky, kx) with
//   oy·stride_h − pad_h.before + ky = iy and ox·stride_w − pad_w.before + kx = ix
//   of dy[n,o,oy,ox] · w[o,i,ky,kx].
Tensor4 conv2d_backward_data(const Tensor4& dy, const Tensor4& w, int x_h, int x_w, int stride_h, int stride_w,
                             Pad1 pad_h, Pad1 pad_w);
// dL/dw (out_c, in_c, kh, kw):
//   dw[o,i,ky,kx] = Σ_{n,oy,ox} dy[n,o,oy,ox] · x[n, i, oy·stride_h − pad_h.before + ky,
//                                                 ox·stride_w − pad_w.before + kx]
// (outside the image: zero).
Tensor4 conv2d_backward_filter(const Tensor4& dy, const Tensor4& x, int kh, int kw, int stride_h, int stride_w,
                               Pad1 pad_h, Pad1 pad_w);
// dL/db (out_c): db[o] = Σ_{n,oy,ox} dy[n,o,oy,ox].
std::vector<double> conv2d_bias_grad(const Tensor4& dy);

// Max pooling, window (kh, kw), strides (sh, sw), no padding ("valid"): out = (in − k) / s + 1,
// which must be ≥ 1 in both dimensions.
//   y[n,c,oy,ox] = max_{ky,kx} x[n, c, oy·sh + ky, ox·sw + kx]
// Ties: the FIRST maximum in row-major window order (ky outer, kx inner) is THE argmax; a later
// equal value does not replace it.
// argmax (optional output, resized to y.size(), in y's order): the flat index iy·W + ix, within the
// (n, c) input plane of width W = x.w, of the chosen element.
Tensor4 maxpool2d(const Tensor4& x, int kh, int kw, int sh, int sw, std::vector<int>* argmax = nullptr);

// Gradient of L = Σ maxpool2d(x) · dy with respect to x (shape of x): every dy[n,c,oy,ox] is added
// to the element that is that window's argmax (as defined above), zero elsewhere; overlapping
// windows (s < k) accumulate.
Tensor4 maxpool2d_backward(const Tensor4& dy, const Tensor4& x, int kh, int kw, int sh, int sw);

// ---- Optimizer updates of one scalar, in double, written from the formulas -----------------

// Adam, Keras form, t the 1-based step:
//   m ← m + (1 − β1)(g − m);  v ← v + (1 − β2)(g² − v)
//   α = lr · √(1 − β2ᵗ) / (1 − β1ᵗ);  w ← w − α · m / (√v + ε)
void adam(double& w, double& m, double& v, double g, double lr, double beta1, double beta2, double epsilon, uint64_t t);

// SGD with momentum μ (Keras): v ← μ v − lr g;  w ← w + v.
void sgd(double& w, double& velocity, double g, double lr, double momentum);

// RMSprop (Keras): s ← ρ s + (1 − ρ) g²;  w ← w − lr g / (√s + ε).
void rmsprop(double& w, double& s, double g, double lr, double rho, double epsilon);

}  // namespace ref
