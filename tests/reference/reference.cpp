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
    }
    return x;
}

double activation_derivative_from_output(double a, Act act) {
    switch (act) {
        case Act::None: return 1.0;
        case Act::Relu: return a > 0.0 ? 1.0 : 0.0;
        case Act::Sigmoid: return a * (1.0 - a);
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
