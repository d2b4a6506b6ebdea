// The double-precision oracle (see reference.h): plain loops, written for clarity, not speed.
// Deliberately independent of every cumnist source file.
#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

namespace ref {

namespace {

void require(bool cond, const char* what) {
    if (!cond) throw std::invalid_argument(std::string("reference: ") + what);
}

}  // namespace

Matrix::Matrix(int r, int c, double fill) : rows(r), cols(c), data(static_cast<std::size_t>(r) * c, fill) {}

Matrix Matrix::from_float(const std::vector<float>& values, int r, int c) {
    require(values.size() == static_cast<std::size_t>(r) * c, "from_float: size does not match the shape");
    Matrix m(r, c);
    for (std::size_t i = 0; i < values.size(); ++i) m.data[i] = static_cast<double>(values[i]);
    return m;
}

std::vector<float> Matrix::to_float() const {
    std::vector<float> out(data.size());
    for (std::size_t i = 0; i < data.size(); ++i) out[i] = static_cast<float>(data[i]);
    return out;
}

// ---- Single operations ---------------------------------------------------------------------

Matrix matmul(const Matrix& a, bool ta, const Matrix& b, bool tb) {
    const int m = ta ? a.cols : a.rows;
    const int k = ta ? a.rows : a.cols;
    const int kb = tb ? b.cols : b.rows;
    const int n = tb ? b.rows : b.cols;
    require(k == kb, "matmul: inner dimensions differ");
    Matrix c(m, n);
    for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
            double s = 0.0;
            for (int p = 0; p < k; ++p) {
                const double aip = ta ? a.at(p, i) : a.at(i, p);  // op(A)[i][p]
                const double bpj = tb ? b.at(j, p) : b.at(p, j);  // op(B)[p][j]
                s += aip * bpj;
            }
            c.at(i, j) = s;
        }
    }
    return c;
}

void gemm(Matrix& c, const Matrix& a, bool ta, const Matrix& b, bool tb, double alpha, double beta) {
    const Matrix ab = matmul(a, ta, b, tb);
    require(c.rows == ab.rows && c.cols == ab.cols, "gemm: C has the wrong shape");
    for (std::size_t i = 0; i < c.data.size(); ++i) {
        // beta == 0 means "overwrite": the old value is not read, so NaN there does not propagate.
        c.data[i] = beta == 0.0 ? alpha * ab.data[i] : alpha * ab.data[i] + beta * c.data[i];
    }
}

double activate(double x, Act act) {
    switch (act) {
        case Act::None: return x;
        case Act::Relu: return x > 0.0 ? x : 0.0;
        case Act::Sigmoid: return 1.0 / (1.0 + std::exp(-x));
        case Act::Tanh: return std::tanh(x);
    }
    return x;
}

double activation_derivative_from_output(double a, Act act) {
    switch (act) {
        case Act::None: return 1.0;
        case Act::Relu: return a > 0.0 ? 1.0 : 0.0;
        case Act::Sigmoid: return a * (1.0 - a);
        case Act::Tanh: return 1.0 - a * a;
    }
    return 1.0;
}

Matrix bias_act(const Matrix& z, const std::vector<double>& bias, Act act) {
    require(bias.size() == static_cast<std::size_t>(z.cols), "bias_act: bias size differs from cols");
    Matrix a(z.rows, z.cols);
    for (int r = 0; r < z.rows; ++r)
        for (int c = 0; c < z.cols; ++c) a.at(r, c) = activate(z.at(r, c) + bias[c], act);
    return a;
}

Matrix dropout(const Matrix& a, const std::vector<uint8_t>& keep, double rate) {
    if (keep.empty()) return a;
    require(keep.size() == a.size(), "dropout: mask size differs from the matrix");
    Matrix h(a.rows, a.cols);
    const double scale = 1.0 / (1.0 - rate);
    for (std::size_t i = 0; i < a.size(); ++i) h.data[i] = keep[i] ? a.data[i] * scale : 0.0;
    return h;
}

Matrix act_dropout_backward(const Matrix& dh, const Matrix& a, const std::vector<uint8_t>& keep, double rate, Act act) {
    require(dh.rows == a.rows && dh.cols == a.cols, "act_dropout_backward: shapes differ");
    require(keep.empty() || keep.size() == a.size(), "act_dropout_backward: mask size differs from the matrix");
    Matrix dpre(a.rows, a.cols);
    const double scale = keep.empty() ? 1.0 : 1.0 / (1.0 - rate);
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double through = keep.empty() ? 1.0 : (keep[i] ? scale : 0.0);
        dpre.data[i] = dh.data[i] * through * activation_derivative_from_output(a.data[i], act);
    }
    return dpre;
}

Matrix softmax(const Matrix& logits) {
    Matrix p(logits.rows, logits.cols);
    for (int r = 0; r < logits.rows; ++r) {
        double mx = logits.at(r, 0);
        for (int c = 1; c < logits.cols; ++c) mx = std::max(mx, logits.at(r, c));
        double sum = 0.0;
        for (int c = 0; c < logits.cols; ++c) {
            p.at(r, c) = std::exp(logits.at(r, c) - mx);
            sum += p.at(r, c);
        }
        for (int c = 0; c < logits.cols; ++c) p.at(r, c) /= sum;
    }
    return p;
}

XentResult softmax_xent(const Matrix& logits, const std::vector<int>& labels, double grad_scale) {
    require(labels.size() == static_cast<std::size_t>(logits.rows), "softmax_xent: one label per row");
    XentResult out;
    out.row_loss.resize(logits.rows);
    out.row_correct.resize(logits.rows);
    out.dlogits = Matrix(logits.rows, logits.cols);
    double total = 0.0;
    for (int r = 0; r < logits.rows; ++r) {
        const int label = labels[r];
        require(label >= 0 && label < logits.cols, "softmax_xent: label out of range");
        // First maximum: a later equal value does not replace it.
        int argmax = 0;
        for (int c = 1; c < logits.cols; ++c)
            if (logits.at(r, c) > logits.at(r, argmax)) argmax = c;
        const double mx = logits.at(r, argmax);
        double sum = 0.0;
        for (int c = 0; c < logits.cols; ++c) sum += std::exp(logits.at(r, c) - mx);
        // −log p[label] = log Σ exp(z − max) + max − z_label
        const double loss = std::log(sum) + mx - logits.at(r, label);
        out.row_loss[r] = loss;
        out.row_correct[r] = argmax == label ? 1.0 : 0.0;
        total += loss;
        for (int c = 0; c < logits.cols; ++c) {
            const double p = std::exp(logits.at(r, c) - mx) / sum;
            out.dlogits.at(r, c) = (p - (c == label ? 1.0 : 0.0)) * grad_scale;
        }
    }
    out.loss = logits.rows > 0 ? total / logits.rows : 0.0;
    return out;
}

std::vector<double> column_sums(const Matrix& m) {
    std::vector<double> s(m.cols, 0.0);
    for (int r = 0; r < m.rows; ++r)
        for (int c = 0; c < m.cols; ++c) s[c] += m.at(r, c);
    return s;
}

// ---- A whole MLP ---------------------------------------------------------------------------

RefMlp RefMlp::random(const std::vector<int>& sizes, Act activation, uint32_t seed) {
    require(sizes.size() >= 2, "RefMlp: needs an input and an output size");
    RefMlp mlp;
    mlp.sizes = sizes;
    mlp.activation = activation;
    std::mt19937 rng(seed);
    for (std::size_t l = 0; l + 1 < sizes.size(); ++l) {
        const int in = sizes[l], out = sizes[l + 1];
        const double limit = std::sqrt(6.0 / (in + out));  // Glorot uniform
        std::uniform_real_distribution<double> wdist(-limit, limit);
        std::uniform_real_distribution<double> bdist(-0.1, 0.1);
        Matrix w(out, in);
        for (double& v : w.data) v = wdist(rng);
        std::vector<double> b(out);
        for (double& v : b) v = bdist(rng);
        mlp.w.push_back(std::move(w));
        mlp.b.push_back(std::move(b));
    }
    return mlp;
}

RefForward forward(const RefMlp& mlp, const Matrix& x, const std::vector<int>& labels,
                   const std::vector<std::vector<uint8_t>>& masks, double rate) {
    const int layers = mlp.n_layers();
    require(x.cols == mlp.sizes[0], "forward: input width differs from sizes[0]");
    require(masks.empty() || static_cast<int>(masks.size()) == layers - 1, "forward: one mask per hidden layer");
    RefForward f;
    const Matrix* input = &x;
    for (int l = 0; l < layers; ++l) {
        // z = input · Wᵀ + b
        Matrix z = matmul(*input, false, mlp.w[l], true);
        for (int r = 0; r < z.rows; ++r)
            for (int c = 0; c < z.cols; ++c) z.at(r, c) += mlp.b[l][c];
        f.pre.push_back(z);
        if (l == layers - 1) {
            f.logits = z;
            break;
        }
        Matrix a = bias_act(z, std::vector<double>(z.cols, 0.0), mlp.activation);
        f.act.push_back(a);
        f.hidden.push_back(dropout(a, masks.empty() ? std::vector<uint8_t>{} : masks[l], rate));
        input = &f.hidden.back();
    }
    f.xent = softmax_xent(f.logits, labels, 1.0 / x.rows);
    f.loss = f.xent.loss;
    return f;
}

RefGrads backward(const RefMlp& mlp, const Matrix& x, const std::vector<int>& labels, const RefForward& fwd,
                  const std::vector<std::vector<uint8_t>>& masks, double rate) {
    (void)labels;  // already folded into fwd.xent.dlogits
    const int layers = mlp.n_layers();
    RefGrads g;
    g.dw.resize(layers);
    g.db.resize(layers);
    // dz of the last layer: (p − onehot)/n, the batch mean's only 1/n.
    Matrix dz = fwd.xent.dlogits;
    for (int l = layers - 1; l >= 0; --l) {
        const Matrix& input = l == 0 ? x : fwd.hidden[l - 1];
        // z = input · Wᵀ + b  ⇒  dW = dzᵀ · input,  db = Σ_rows dz,  dinput = dz · W
        g.dw[l] = matmul(dz, true, input, false);
        g.db[l] = column_sums(dz);
        Matrix dinput = matmul(dz, false, mlp.w[l], false);
        if (l == 0) {
            g.dx = std::move(dinput);
        } else {
            const std::vector<uint8_t> none;
            dz =
                act_dropout_backward(dinput, fwd.act[l - 1], masks.empty() ? none : masks[l - 1], rate, mlp.activation);
        }
    }
    return g;
}

// ---- Convolution and max pooling -----------------------------------------------------------

Tensor4::Tensor4(int n_, int c_, int h_, int w_, double fill) : n(n_), c(c_), h(h_), w(w_) {
    require(n_ >= 0 && c_ >= 0 && h_ >= 0 && w_ >= 0, "Tensor4: negative dimension");
    data.assign(static_cast<std::size_t>(n_) * c_ * h_ * w_, fill);
}

Tensor4 Tensor4::from_float(const std::vector<float>& values, int n, int c, int h, int w) {
    Tensor4 t(n, c, h, w);
    require(values.size() == t.data.size(), "Tensor4::from_float: size does not match the shape");
    for (std::size_t i = 0; i < values.size(); ++i) t.data[i] = static_cast<double>(values[i]);
    return t;
}

std::vector<float> Tensor4::to_float() const {
    std::vector<float> out(data.size());
    for (std::size_t i = 0; i < data.size(); ++i) out[i] = static_cast<float>(data[i]);
    return out;
}

namespace {

// floor(a / b) for b > 0 (C++ '/' truncates toward zero, which differs for negative a).
int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

}  // namespace

Pad1 pad_valid(int in, int k, int stride) {
    require(in >= 0 && k >= 1 && stride >= 1, "pad_valid: needs in >= 0, k >= 1, stride >= 1");
    Pad1 p;
    p.out = floor_div(in - k, stride) + 1;  // ≤ 0 when k > in
    return p;
}

Pad1 pad_same(int in, int k, int stride) {
    require(in >= 0 && k >= 1 && stride >= 1, "pad_same: needs in >= 0, k >= 1, stride >= 1");
    Pad1 p;
    p.out = (in + stride - 1) / stride;  // ceil(in / stride)
    const int total = std::max((p.out - 1) * stride + k - in, 0);
    p.before = total / 2;
    p.after = total - p.before;  // the odd element goes after (SAME_UPPER)
    return p;
}

namespace {

void require_conv_geometry(int stride_h, int stride_w, Pad1 pad_h, Pad1 pad_w, const char* what) {
    require(stride_h >= 1 && stride_w >= 1, what);
    require(pad_h.out >= 1 && pad_w.out >= 1, what);
    require(pad_h.before >= 0 && pad_w.before >= 0, what);
}

}  // namespace

Tensor4 conv2d(const Tensor4& x, const Tensor4& w, const std::vector<double>& bias, int stride_h, int stride_w,
               Pad1 pad_h, Pad1 pad_w) {
    require_conv_geometry(stride_h, stride_w, pad_h, pad_w, "conv2d: bad strides or padding (output size < 1?)");
    require(w.c == x.c, "conv2d: filter in_c differs from the input's channels");
    require(bias.empty() || bias.size() == static_cast<std::size_t>(w.n), "conv2d: bias size differs from out_c");
    Tensor4 y(x.n, w.n, pad_h.out, pad_w.out);
    for (int n = 0; n < x.n; ++n)
        for (int o = 0; o < w.n; ++o)
            for (int oy = 0; oy < pad_h.out; ++oy)
                for (int ox = 0; ox < pad_w.out; ++ox) {
                    double s = bias.empty() ? 0.0 : bias[o];
                    for (int i = 0; i < w.c; ++i)
                        for (int ky = 0; ky < w.h; ++ky)
                            for (int kx = 0; kx < w.w; ++kx) {
                                const int iy = oy * stride_h - pad_h.before + ky;
                                const int ix = ox * stride_w - pad_w.before + kx;
                                if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w) continue;  // zero padding
                                s += x.at(n, i, iy, ix) * w.at(o, i, ky, kx);
                            }
                    y.at(n, o, oy, ox) = s;
                }
    return y;
}

Tensor4 conv2d_backward_data(const Tensor4& dy, const Tensor4& w, int x_h, int x_w, int stride_h, int stride_w,
                             Pad1 pad_h, Pad1 pad_w) {
    require_conv_geometry(stride_h, stride_w, pad_h, pad_w, "conv2d_backward_data: bad strides or padding");
    require(dy.c == w.n, "conv2d_backward_data: dy channels differ from out_c");
    require(dy.h == pad_h.out && dy.w == pad_w.out, "conv2d_backward_data: dy size differs from the padding's out");
    Tensor4 dx(dy.n, w.c, x_h, x_w);
    // The transpose of conv2d's sum: each term x[iy,ix]·w[ky,kx] of y[oy,ox] sends dy[oy,ox]·w[ky,kx] to x[iy,ix].
    for (int n = 0; n < dy.n; ++n)
        for (int o = 0; o < w.n; ++o)
            for (int oy = 0; oy < dy.h; ++oy)
                for (int ox = 0; ox < dy.w; ++ox)
                    for (int i = 0; i < w.c; ++i)
                        for (int ky = 0; ky < w.h; ++ky)
                            for (int kx = 0; kx < w.w; ++kx) {
                                const int iy = oy * stride_h - pad_h.before + ky;
                                const int ix = ox * stride_w - pad_w.before + kx;
                                if (iy < 0 || iy >= x_h || ix < 0 || ix >= x_w) continue;
                                dx.at(n, i, iy, ix) += dy.at(n, o, oy, ox) * w.at(o, i, ky, kx);
                            }
    return dx;
}

Tensor4 conv2d_backward_filter(const Tensor4& dy, const Tensor4& x, int kh, int kw, int stride_h, int stride_w,
                               Pad1 pad_h, Pad1 pad_w) {
    require_conv_geometry(stride_h, stride_w, pad_h, pad_w, "conv2d_backward_filter: bad strides or padding");
    require(kh >= 1 && kw >= 1, "conv2d_backward_filter: kernel size < 1");
    require(dy.n == x.n, "conv2d_backward_filter: dy and x batch sizes differ");
    require(dy.h == pad_h.out && dy.w == pad_w.out, "conv2d_backward_filter: dy size differs from the padding's out");
    Tensor4 dw(dy.c, x.c, kh, kw);
    for (int o = 0; o < dy.c; ++o)
        for (int i = 0; i < x.c; ++i)
            for (int ky = 0; ky < kh; ++ky)
                for (int kx = 0; kx < kw; ++kx) {
                    double s = 0.0;
                    for (int n = 0; n < dy.n; ++n)
                        for (int oy = 0; oy < dy.h; ++oy)
                            for (int ox = 0; ox < dy.w; ++ox) {
                                const int iy = oy * stride_h - pad_h.before + ky;
                                const int ix = ox * stride_w - pad_w.before + kx;
                                if (iy < 0 || iy >= x.h || ix < 0 || ix >= x.w) continue;
                                s += dy.at(n, o, oy, ox) * x.at(n, i, iy, ix);
                            }
                    dw.at(o, i, ky, kx) = s;
                }
    return dw;
}

std::vector<double> conv2d_bias_grad(const Tensor4& dy) {
    std::vector<double> db(dy.c, 0.0);
    for (int n = 0; n < dy.n; ++n)
        for (int o = 0; o < dy.c; ++o)
            for (int oy = 0; oy < dy.h; ++oy)
                for (int ox = 0; ox < dy.w; ++ox) db[o] += dy.at(n, o, oy, ox);
    return db;
}

Tensor4 maxpool2d(const Tensor4& x, int kh, int kw, int sh, int sw, std::vector<int>* argmax) {
    require(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1, "maxpool2d: window and strides must be >= 1");
    require(x.h >= kh && x.w >= kw, "maxpool2d: window larger than the image");
    const int oh = (x.h - kh) / sh + 1;
    const int ow = (x.w - kw) / sw + 1;
    Tensor4 y(x.n, x.c, oh, ow);
    if (argmax) argmax->assign(y.size(), 0);
    std::size_t k = 0;  // y's flat index: (n, c, oy, ox) in row-major order
    for (int n = 0; n < x.n; ++n)
        for (int c = 0; c < x.c; ++c)
            for (int oy = 0; oy < oh; ++oy)
                for (int ox = 0; ox < ow; ++ox, ++k) {
                    // Start from the window's first element; only a strictly greater value replaces it.
                    int best_y = oy * sh, best_x = ox * sw;
                    for (int ky = 0; ky < kh; ++ky)
                        for (int kx = 0; kx < kw; ++kx) {
                            const int iy = oy * sh + ky, ix = ox * sw + kx;
                            if (x.at(n, c, iy, ix) > x.at(n, c, best_y, best_x)) {
                                best_y = iy;
                                best_x = ix;
                            }
                        }
                    y.data[k] = x.at(n, c, best_y, best_x);
                    if (argmax) (*argmax)[k] = best_y * x.w + best_x;
                }
    return y;
}

Tensor4 maxpool2d_backward(const Tensor4& dy, const Tensor4& x, int kh, int kw, int sh, int sw) {
    std::vector<int> argmax;
    const Tensor4 y = maxpool2d(x, kh, kw, sh, sw, &argmax);
    require(dy.n == y.n && dy.c == y.c && dy.h == y.h && dy.w == y.w, "maxpool2d_backward: dy shape differs from y");
    Tensor4 dx(x.n, x.c, x.h, x.w);
    std::size_t k = 0;
    for (int n = 0; n < dy.n; ++n)
        for (int c = 0; c < dy.c; ++c)
            for (int oy = 0; oy < dy.h; ++oy)
                for (int ox = 0; ox < dy.w; ++ox, ++k) {
                    const int a = argmax[k];
                    dx.at(n, c, a / x.w, a % x.w) += dy.data[k];  // overlapping windows accumulate
                }
    return dx;
}

// ---- Optimizer updates ---------------------------------------------------------------------

void adam(double& w, double& m, double& v, double g, double lr, double beta1, double beta2, double epsilon,
          uint64_t t) {
    m += (1.0 - beta1) * (g - m);
    v += (1.0 - beta2) * (g * g - v);
    const double td = static_cast<double>(t);
    const double alpha = lr * std::sqrt(1.0 - std::pow(beta2, td)) / (1.0 - std::pow(beta1, td));
    w -= alpha * m / (std::sqrt(v) + epsilon);
}

void sgd(double& w, double& velocity, double g, double lr, double momentum) {
    velocity = momentum * velocity - lr * g;
    w += velocity;
}

void rmsprop(double& w, double& s, double g, double lr, double rho, double epsilon) {
    s = rho * s + (1.0 - rho) * g * g;
    w -= lr * g / (std::sqrt(s) + epsilon);
}

}  // namespace ref
