// `cumnist selftest`: the CUDA backend against the CPU backend, op by op, then whole training.
#include "cumnist/selftest.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <random>

#include "cumnist/model.h"
#include "cumnist/ops.h"
#include "cumnist/philox.h"
#include "cumnist/trainer.h"

namespace cumnist {
namespace {

struct Tol {
    double abs, rel;
    std::string text() const { return fmt::format("{:g} + {:g}·|x|", abs, rel); }
};
// Element-wise ops share their formulas (philox.h) and differ only in expf/sqrtf rounding;
// GEMMs and reductions sum in a different order.
constexpr Tol kElementwise{1e-6, 1e-5};
constexpr Tol kGemm{1e-4, 1e-4};

std::vector<float> random_floats(std::size_t n, float lo, float hi, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

// Compares one GPU result with the CPU's, accumulating into `r`.
template <class T>
void compare(SelftestResult& r, const std::vector<T>& gpu, const std::vector<T>& cpu, Tol tol, const char* what) {
    if (gpu.size() != cpu.size()) {
        r.worst_error = HUGE_VAL;
        r.detail = fmt::format("{}: {} values, expected {}", what, gpu.size(), cpu.size());
        return;
    }
    for (std::size_t i = 0; i < gpu.size(); ++i) {
        const double g = static_cast<double>(gpu[i]), c = static_cast<double>(cpu[i]);
        const double err = std::fabs(g - c);
        const double excess = g == c ? 0.0 : std::isfinite(err) ? err / (tol.abs + tol.rel * std::fabs(c)) : HUGE_VAL;
        r.worst_abs = std::max(r.worst_abs, std::isfinite(err) ? err : HUGE_VAL);
        if (excess > r.worst_error) {
            r.worst_error = excess;
            if (excess > 1.0) r.detail = fmt::format("{}[{}]: gpu {:.9g}, cpu {:.9g}", what, i, g, c);
        }
    }
}

// Runs `op(device)` on both devices with inputs uploaded from the same host data.
struct Case {
    std::string name;
    Tol tol;
    std::function<void(SelftestResult&)> run;
};

template <class T>
Buffer<T> on(Device d, const std::vector<T>& host) {
    return Buffer<T>::from_host(host, d);
}

// Float rounding of a sum of k terms, in any order, with or without fused multiply-adds:
// |computed − exact| ≤ γ_k·Σ|terms| (Higham, Accuracy and Stability, §3.1), γ_k = k·u/(1 − k·u).
double gamma_k(int k) {
    const double u = std::ldexp(1.0, -24), ku = k * u;
    return ku / (1.0 - ku);
}

// compare() over [begin, begin + count) of two vectors.
void compare_range(SelftestResult& r, const std::vector<float>& gpu, const std::vector<float>& cpu, std::size_t begin,
                   std::size_t count, Tol tol, const std::string& what) {
    compare(r, std::vector<float>(gpu.begin() + begin, gpu.begin() + begin + count),
            std::vector<float>(cpu.begin() + begin, cpu.begin() + begin + count), tol, what.c_str());
}

std::vector<Case> op_cases() {
    std::vector<Case> cases;
    // GEMM, all four transpose combinations, odd sizes and the model's own.
    struct Shape {
        int m, n, k;
    };
    for (Shape s : {Shape{33, 47, 29}, Shape{32, 512, 784}, Shape{1, 7, 1000}}) {
        for (Trans ta : {Trans::No, Trans::Yes})
            for (Trans tb : {Trans::No, Trans::Yes}) {
                const std::string name = fmt::format("gemm {}{} {}x{}x{}", ta == Trans::No ? 'N' : 'T',
                                                     tb == Trans::No ? 'N' : 'T', s.m, s.n, s.k);
                cases.push_back({name, kGemm, [=](SelftestResult& r) {
                                     const auto a = random_floats(static_cast<std::size_t>(s.m) * s.k, -1, 1, 1);
                                     const auto b = random_floats(static_cast<std::size_t>(s.k) * s.n, -1, 1, 2);
                                     const auto c0 = random_floats(static_cast<std::size_t>(s.m) * s.n, -1, 1, 3);
                                     std::vector<float> out[2];
                                     for (Device d : {Device::Cpu, Device::Cuda}) {
                                         auto A = on(d, a), B = on(d, b), C = on(d, c0);
                                         const int ar = ta == Trans::No ? s.m : s.k, ac = ta == Trans::No ? s.k : s.m;
                                         const int br = tb == Trans::No ? s.k : s.n, bc = tb == Trans::No ? s.n : s.k;
                                         ops::gemm(C.view(s.m, s.n), A.view(ar, ac), ta, B.view(br, bc), tb, 0.5f, 1.0f);
                                         out[d == Device::Cuda] = C.to_host();
                                     }
                                     compare(r, out[1], out[0], kGemm, "c");
                                 }});
            }
    }
    // The fused epilogue and its backward, each activation, dropout on.
    for (Activation act : {Activation::None, Activation::Relu, Activation::Sigmoid, Activation::Tanh}) {
        cases.push_back({fmt::format("bias+{}+dropout fwd/bwd 33x257", to_string(act)), kElementwise,
                         [=](SelftestResult& r) {
                             const int n = 33, cols = 257;
                             const auto a0 = random_floats(static_cast<std::size_t>(n) * cols, -3, 3, 4);
                             const auto bias = random_floats(cols, -1, 1, 5);
                             const auto dh = random_floats(static_cast<std::size_t>(n) * cols, -1, 1, 6);
                             Dropout drop;
                             drop.rate = 0.2f;
                             drop.seed = 99;
                             drop.stream = kDropoutStreamBase + 1;
                             drop.training = true;
                             const std::vector<uint64_t> step = {12345};
                             std::vector<float> h[2], a[2], dpre[2];
                             for (Device d : {Device::Cpu, Device::Cuda}) {
                                 auto A = on(d, a0), B = on(d, bias), H = Buffer<float>(a0.size(), d), DH = on(d, dh);
                                 auto S = on(d, step);
                                 ops::bias_act_dropout_forward(H.view(n, cols), A.view(n, cols), B.view(1, cols), act,
                                                               drop, S.data());
                                 // ReLU's backward reads the forward's output h, the others a (ops.h).
                                 const auto& saved = act == Activation::Relu ? H : A;
                                 ops::act_dropout_backward(DH.view(n, cols), DH.view(n, cols), saved.view(n, cols), act,
                                                           drop, S.data());
                                 const int k = d == Device::Cuda;
                                 h[k] = H.to_host(), a[k] = A.to_host(), dpre[k] = DH.to_host();
                             }
                             compare(r, a[1], a[0], kElementwise, "a");
                             compare(r, h[1], h[0], kElementwise, "h");
                             compare(r, dpre[1], dpre[0], kElementwise, "dpre");
                         }});
    }
    cases.push_back({"bias_grad 1000x33", kGemm, [](SelftestResult& r) {
                         const auto dy = random_floats(1000 * 33, -1, 1, 7);
                         std::vector<float> db[2];
                         for (Device d : {Device::Cpu, Device::Cuda}) {
                             auto DY = on(d, dy);
                             Buffer<float> DB(33, d);
                             ops::bias_grad(DB.view(1, 33), DY.view(1000, 33));
                             db[d == Device::Cuda] = DB.to_host();
                         }
                         compare(r, db[1], db[0], kGemm, "db");
                     }});
    cases.push_back({"softmax_xent + metrics 1000x10, logits ±100", kElementwise, [](SelftestResult& r) {
                         const int n = 1000, k = 10;
                         const auto z = random_floats(static_cast<std::size_t>(n) * k, -100, 100, 8);
                         std::vector<uint8_t> labels(n);
                         for (int i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>((i * 7) % k);
                         std::vector<float> dz[2], loss[2], correct[2], probs[2];
                         std::vector<double> totals[2];
                         for (Device d : {Device::Cpu, Device::Cuda}) {
                             auto Z = on(d, z), P = on(d, z);
                             auto L = on(d, labels);
                             Buffer<float> DZ(z.size(), d), RL(n, d), RC(n, d);
                             Buffer<double> T(2, d);
                             T.zero();
                             ops::softmax_xent(DZ.view(n, k), RL.view(1, n), RC.view(1, n), Z.view(n, k), L.view(1, n),
                                               1.0f / n);
                             ops::accumulate_metrics(T.data(), RL.view(1, n), RC.view(1, n));
                             ops::softmax(P.view(n, k), P.view(n, k));
                             const int i = d == Device::Cuda;
                             dz[i] = DZ.to_host(), loss[i] = RL.to_host(), correct[i] = RC.to_host();
                             probs[i] = P.to_host(), totals[i] = T.to_host();
                         }
                         compare(r, dz[1], dz[0], kElementwise, "dlogits");
                         compare(r, loss[1], loss[0], kElementwise, "loss");
                         compare(r, correct[1], correct[0], {0, 0}, "correct");
                         compare(r, probs[1], probs[0], kElementwise, "softmax");
                         compare(r, totals[1], totals[0], kGemm, "totals");
                     }});
    // The training step's folds: the output layer's bias in the loss kernel, and its dx GEMM in the
    // layer before's backward epilogue (own dot products: GEMM tolerance).
    cases.push_back({"bias_softmax_xent 1000x10 (bias, loss, metrics, db in one kernel)", kGemm, [](SelftestResult& r) {
                         const int n = 1000, k = 10;
                         const auto z = random_floats(static_cast<std::size_t>(n) * k, -8, 8, 31);
                         const auto b = random_floats(k, -2, 2, 32);
                         std::vector<uint8_t> labels(n);
                         for (int i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>((i * 3) % k);
                         std::vector<float> logits[2], dz[2], loss[2], db[2];
                         std::vector<double> totals[2];
                         for (Device d : {Device::Cpu, Device::Cuda}) {
                             auto Z = on(d, z), B = on(d, b);
                             auto L = on(d, labels);
                             Buffer<float> DZ(z.size(), d), RL(n, d), RC(n, d), DB(k, d);
                             Buffer<double> T(2, d);
                             T.zero();
                             ops::bias_softmax_xent(DZ.view(n, k), DB.view(1, k), RL.view(1, n), RC.view(1, n),
                                                    Z.view(n, k), B.view(1, k), L.view(1, n), 1.0f / n, T.data());
                             const int i = d == Device::Cuda;
                             logits[i] = Z.to_host(), dz[i] = DZ.to_host(), loss[i] = RL.to_host();
                             db[i] = DB.to_host(), totals[i] = T.to_host();
                         }
                         compare(r, logits[1], logits[0], {0, 0}, "biased logits");
                         compare(r, dz[1], dz[0], kElementwise, "dlogits");
                         compare(r, loss[1], loss[0], kElementwise, "loss");
                         compare(r, db[1], db[0], kGemm, "db");
                         compare(r, totals[1], totals[0], kGemm, "totals");
                     }});
    for (Activation act : {Activation::Relu, Activation::Tanh}) {
        cases.push_back({fmt::format("act_dropout_backward_through {}+dropout 33x256, next layer 10", to_string(act)),
                         kGemm, [=](SelftestResult& r) {
                             const int n = 33, cols = 256, k = 10;
                             const auto dy = random_floats(static_cast<std::size_t>(n) * k, -1, 1, 33);
                             const auto w = random_floats(static_cast<std::size_t>(k) * cols, -0.3f, 0.3f, 34);
                             const auto saved = random_floats(static_cast<std::size_t>(n) * cols, -0.5f, 1, 35);
                             Dropout drop;
                             drop.rate = 0.2f, drop.seed = 5, drop.stream = kDropoutStreamBase + 1, drop.training = true;
                             const std::vector<uint64_t> step = {77};
                             std::vector<float> dpre[2], db[2];
                             for (Device d : {Device::Cpu, Device::Cuda}) {
                                 auto DY = on(d, dy), W = on(d, w), S = on(d, saved);
                                 auto T = on(d, step);
                                 Buffer<float> P(saved.size(), d), DB(cols, d);
                                 ops::act_dropout_backward_through(P.view(n, cols), DY.view(n, k), W.view(k, cols),
                                                                   S.view(n, cols), act, drop, T.data(), DB.view(1, cols));
                                 dpre[d == Device::Cuda] = P.to_host(), db[d == Device::Cuda] = DB.to_host();
                             }
                             compare(r, dpre[1], dpre[0], kGemm, "dpre");
                             compare(r, db[1], db[0], kGemm, "db");
                         }});
    }
    cases.push_back({"gather_batch 20x784, batch 2 of 40", {0, 0}, [](SelftestResult& r) {
                         const int n = 100, f = 784, batch = 40, rows = 20;
                         std::vector<uint8_t> images(static_cast<std::size_t>(n) * f), labels(n);
                         for (std::size_t i = 0; i < images.size(); ++i) images[i] = static_cast<uint8_t>(i * 31 % 256);
                         for (int i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i % 10);
                         std::vector<int32_t> order(n);
                         for (int i = 0; i < n; ++i) order[i] = (i * 37) % n;
                         const std::vector<uint64_t> index = {2};
                         std::vector<float> x[2];
                         std::vector<uint8_t> y[2];
                         for (Device d : {Device::Cpu, Device::Cuda}) {
                             auto I = on(d, images), L = on(d, labels);
                             auto B = on(d, index);
                             auto O = on(d, order);
                             Buffer<float> X(static_cast<std::size_t>(rows) * f, d);
                             Buffer<uint8_t> Y(rows, d);
                             ops::gather_batch(X.view(rows, f), Y.view(1, rows), I.view(n, f), L.view(1, n),
                                               O.view(1, n), B.data(), batch);
                             x[d == Device::Cuda] = X.to_host(), y[d == Device::Cuda] = Y.to_host();
                         }
                         compare(r, x[1], x[0], {0, 0}, "x");
                         compare(r, y[1], y[0], {0, 0}, "labels");
                     }});
    // Convolutions (cuDNN against oneDNN): forward with bias, backward-data, backward-filter and
    // the bias gradient; odd sizes, a stride, symmetric padding.
    for (int stride : {1, 2}) {
        Conv2dGeometry g;
        g.n = 7, g.in_c = 3, g.in_h = 9, g.in_w = 11, g.out_c = 5, g.k_h = 3, g.k_w = 3;
        g.stride_h = g.stride_w = stride;
        g.pad_top = g.pad_bottom = g.pad_left = g.pad_right = 1;
        cases.push_back({fmt::format("conv2d fwd/bwd 7x3x9x11, 5 filters 3x3, stride {}", stride), kGemm,
                         [=](SelftestResult& r) {
                             const auto x = random_floats(static_cast<std::size_t>(g.n) * g.in_size(), -1, 1, 21);
                             const auto w = random_floats(static_cast<std::size_t>(g.out_c) * g.filter_size(), -1, 1, 22);
                             const auto b = random_floats(g.out_c, -1, 1, 23);
                             const auto dy = random_floats(static_cast<std::size_t>(g.n) * g.out_size(), -1, 1, 24);
                             std::vector<float> y[2], dx[2], dw[2], db[2];
                             for (Device d : {Device::Cpu, Device::Cuda}) {
                                 auto X = on(d, x), W = on(d, w), B = on(d, b), DY = on(d, dy);
                                 Buffer<float> Y(dy.size(), d), DX(x.size(), d), DW(w.size(), d), DB(b.size(), d);
                                 Buffer<uint8_t> ws(ops::conv2d_workspace_bytes(g, d), d);
                                 const MatrixView<uint8_t> wsv = ws.flat();
                                 ops::conv2d_forward(Y.view(g.n, g.out_size()), X.view(g.n, g.in_size()),
                                                     W.view(g.out_c, g.filter_size()), B.view(1, g.out_c), g, wsv);
                                 ops::conv2d_backward_data(DX.view(g.n, g.in_size()), DY.view(g.n, g.out_size()),
                                                           W.view(g.out_c, g.filter_size()), g, wsv);
                                 ops::conv2d_backward_filter(DW.view(g.out_c, g.filter_size()), DY.view(g.n, g.out_size()),
                                                             X.view(g.n, g.in_size()), g, wsv);
                                 ops::channel_bias_grad(DB.view(1, g.out_c), DY.view(g.n, g.out_size()), g.out_c);
                                 const int k = d == Device::Cuda;
                                 y[k] = Y.to_host(), dx[k] = DX.to_host(), dw[k] = DW.to_host(), db[k] = DB.to_host();
                             }
                             compare(r, y[1], y[0], kGemm, "y");
                             compare(r, dx[1], dx[0], kGemm, "dx");
                             compare(r, dw[1], dw[0], kGemm, "dw");
                             compare(r, db[1], db[0], kGemm, "db");
                         }});
    }
    // Max pooling: the same argmax (first maximum) and bit-identical gradients on both devices,
    // with ties (values from a small set) and overlapping windows.
    for (int k : {2, 3}) {
        Pool2dGeometry g;
        g.n = 5, g.c = 3, g.in_h = 13, g.in_w = 10, g.k_h = g.k_w = k, g.stride_h = g.stride_w = 2;
        cases.push_back({fmt::format("maxpool {}x{} stride 2 fwd/bwd 5x3x13x10, ties", k, k), {0, 0}, [=](SelftestResult& r) {
                             std::vector<float> x = random_floats(static_cast<std::size_t>(g.n) * g.in_size(), 0, 4, 25);
                             for (float& v : x) v = std::floor(v);  // ties in most windows
                             const auto dy = random_floats(static_cast<std::size_t>(g.n) * g.out_size(), -1, 1, 26);
                             std::vector<float> y[2], dx[2];
                             std::vector<int32_t> at[2];
                             for (Device d : {Device::Cpu, Device::Cuda}) {
                                 auto X = on(d, x), DY = on(d, dy);
                                 Buffer<float> Y(dy.size(), d), DX(x.size(), d);
                                 Buffer<int32_t> A(dy.size(), d);
                                 ops::maxpool2d_forward(Y.view(g.n, g.out_size()), A.view(g.n, g.out_size()),
                                                        X.view(g.n, g.in_size()), g);
                                 ops::maxpool2d_backward(DX.view(g.n, g.in_size()), DY.view(g.n, g.out_size()),
                                                         A.view(g.n, g.out_size()), g);
                                 const int i = d == Device::Cuda;
                                 y[i] = Y.to_host(), dx[i] = DX.to_host(), at[i] = A.to_host();
                             }
                             compare(r, y[1], y[0], {0, 0}, "y");
                             compare(r, at[1], at[0], {0, 0}, "argmax");
                             compare(r, dx[1], dx[0], {0, 0}, "dx");
                         }});
    }
    cases.push_back({"tanh+dropout standalone fwd/bwd 33x257", kElementwise, [](SelftestResult& r) {
                         const int n = 33, cols = 257;
                         const auto x = random_floats(static_cast<std::size_t>(n) * cols, -3, 3, 27);
                         const auto dy = random_floats(x.size(), -1, 1, 28);
                         Dropout drop;
                         drop.rate = 0.3f, drop.seed = 7, drop.stream = kDropoutStreamBase + 2, drop.training = true;
                         const std::vector<uint64_t> step = {(uint64_t{1} << 32) + 5};
                         std::vector<float> y[2], dx[2];
                         for (Device d : {Device::Cpu, Device::Cuda}) {
                             auto X = on(d, x), DY = on(d, dy);
                             auto S = on(d, step);
                             Buffer<float> Y(x.size(), d), A(x.size(), d), DX(x.size(), d);
                             ops::act_dropout_forward(Y.view(n, cols), X.view(n, cols), Activation::Tanh, drop, S.data());
                             ops::act_dropout_forward(A.view(n, cols), X.view(n, cols), Activation::Tanh, {}, nullptr);
                             ops::act_dropout_backward(DX.view(n, cols), DY.view(n, cols), A.view(n, cols),
                                                       Activation::Tanh, drop, S.data());
                             y[d == Device::Cuda] = Y.to_host(), dx[d == Device::Cuda] = DX.to_host();
                         }
                         compare(r, y[1], y[0], kElementwise, "y");
                         compare(r, dx[1], dx[0], kElementwise, "dx");
                     }});
    for (OptimizerKind kind : {OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::RmsProp}) {
        cases.push_back({fmt::format("{} step x3, 100003 params", to_string(kind)), kElementwise, [=](SelftestResult& r) {
                             const std::size_t n = 100003;
                             const auto w0 = random_floats(n, -1, 1, 9);
                             OptimizerConfig cfg;
                             cfg.kind = kind;
                             cfg.momentum = 0.9f;
                             std::vector<float> w[2];
                             for (Device d : {Device::Cpu, Device::Cuda}) {
                                 auto W = on(d, w0);
                                 Optimizer opt(cfg, n, d);
                                 Buffer<uint64_t> step(1, d);
                                 step.zero();
                                 for (uint32_t s = 0; s < 3; ++s) {
                                     auto G = on(d, random_floats(n, -1, 1, 10 + s));
                                     opt.step(W, G, step.data());
                                     ops::increment(step.data(), d);
                                 }
                                 w[d == Device::Cuda] = W.to_host();
                             }
                             compare(r, w[1], w[0], kElementwise, "w");
                         }});
    }
    return cases;
}

// A synthetic 784-pixel task, so the self-test needs no data files.
Dataset synthetic(int n) {
    Dataset ds;
    ds.name = "synthetic";
    ds.n = n;
    ds.rows = ds.cols = 28;
    ds.images.resize(static_cast<std::size_t>(n) * 784);
    ds.labels.resize(n);
    for (int i = 0; i < n; ++i) {
        const int label = static_cast<int>(philox_word(1, 7, 0, static_cast<uint64_t>(i)) % 10);
        ds.labels[i] = static_cast<uint8_t>(label);
        for (int p = 0; p < 784; ++p) {
            const uint32_t noise = philox_word(2, 7, static_cast<uint64_t>(i), static_cast<uint64_t>(p)) >> 26;
            ds.images[static_cast<std::size_t>(i) * 784 + p] = static_cast<uint8_t>((p / 78 == label ? 160 : 0) + noise);
        }
    }
    return ds;
}

// A small convolutional model on the 28x28 synthetic task: symmetric 'same' padding (which cuDNN
// takes as it is), pooling, a standalone dropout and a fused dense + relu + dropout.
ModelSpec selftest_cnn() {
    return parse_model("conv8k3same,relu,pool2,conv16k3s2,relu,dropout0.1,flatten,dense32,relu,dropout0.2,dense10",
                       Shape{1, 28, 28}, 10);
}

// The training cases' configuration: batch 32 on `device`, evaluation batches of 64.
TrainConfig training_config(Device device) {
    TrainConfig t;
    t.epochs = 1;
    t.batch = 32;
    t.eval_batch = 64;
    t.device = device;
    return t;
}

std::vector<Case> training_cases() {
    std::vector<Case> cases;
    // Training, step by step from the CPU's state (compare_training_steps): the default model and
    // a CNN (loss, update, counter), and a ReLU MLP whose gates cannot differ (gradients too).
    const auto parity = [](TrainingParityCase c) {
        const std::string name = c.name;
        return Case{name, {1e-4, 1e-4}, [c = std::move(c)](SelftestResult& r) {
                        const SelftestResult got = compare_training_steps(c);
                        r.worst_error = got.worst_error, r.worst_abs = got.worst_abs;
                        r.tolerance = got.tolerance, r.detail = got.detail;
                    }};
    };
    {
        TrainingParityCase c;
        c.name = "training: 20 Adam steps of the default model, each from the CPU's state";
        c.model = MlpConfig{};
        c.data = synthetic(640);
        cases.push_back(parity(std::move(c)));
    }
    {
        TrainingParityCase c;
        c.name = "training: 20 Adam steps of a CNN, each from the CPU's state";
        c.model = selftest_cnn();
        c.data = synthetic(640);
        cases.push_back(parity(std::move(c)));
    }
    cases.push_back(parity(gate_margin_case()));
    cases.push_back({"CUDA Graph replay vs plain launches", {0, 0}, [](SelftestResult& r) {
                         const Dataset ds = synthetic(640);
                         TrainConfig t = training_config(Device::Cuda);
                         std::vector<float> params[2];
                         for (bool graph : {false, true}) {
                             t.use_graph = graph;
                             Trainer trainer(MlpConfig{}, OptimizerConfig{}, t, ds);
                             trainer.train_epoch(1, nullptr);
                             params[graph] = trainer.model().parameters().to_host();
                             if (graph && trainer.graph_nodes() == 0) r.detail = "no graph was captured";
                         }
                         compare(r, params[1], params[0], {0, 0}, "parameters");
                     }});
    // The CNN's captured step (convolutions, pooling, standalone dropout, the fused dense epilogue)
    // against plain launches.
    cases.push_back({"CNN: CUDA Graph replay vs plain launches", {0, 0}, [](SelftestResult& r) {
                         const Dataset ds = synthetic(650);  // the last batch is short
                         TrainConfig t = training_config(Device::Cuda);
                         std::vector<float> params[2];
                         for (bool graph : {false, true}) {
                             t.use_graph = graph;
                             Trainer trainer(selftest_cnn(), OptimizerConfig{}, t, ds);
                             trainer.train_epoch(1, nullptr);
                             params[graph] = trainer.model().parameters().to_host();
                             if (graph && trainer.graph_nodes() == 0) r.detail = "no graph was captured";
                             if (graph && !trainer.graph_failure().empty()) r.detail = trainer.graph_failure();
                         }
                         compare(r, params[1], params[0], {0, 0}, "parameters");
                     }});
    // The streaming path (loader thread, pinned slots, copy stream, device ring, events) against
    // the resident data set: two epochs of 21 steps, the last one short, bit for bit.
    cases.push_back({"streamed vs resident training data", {0, 0}, [](SelftestResult& r) {
                         const Dataset ds = synthetic(650);
                         TrainConfig t = training_config(Device::Cuda);
                         std::vector<float> params[2];
                         std::vector<double> loss[2];
                         for (DataPlacement p : {DataPlacement::Resident, DataPlacement::Stream}) {
                             t.placement = p;
                             Trainer trainer(MlpConfig{}, OptimizerConfig{}, t, ds);
                             const bool streamed = trainer.placement() == DataPlacement::Stream;
                             for (int epoch = 1; epoch <= 2; ++epoch)
                                 loss[streamed].push_back(trainer.train_epoch(epoch, nullptr).train_loss);
                             params[streamed] = trainer.model().parameters().to_host();
                         }
                         compare(r, loss[1], loss[0], {0, 0}, "loss");
                         compare(r, params[1], params[0], {0, 0}, "parameters");
                     }});
    return cases;
}

}  // namespace

SelftestResult compare_training_steps(const TrainingParityCase& c, Device reference, Device tested) {
    // The loss: the forward's rounding (float sums of ≤ 785 terms, each off by far less than
    // 1e-5 relative in practice) against a defect's O(1). The update: the same per-element
    // formula on the same inputs (the optimizer op cases' tolerance; for the optimizer state,
    // whose values are far below 1, the absolute part relative to the tensor's largest element).
    // The gradients, where no gate can differ: summation order and the forward's rounding, per
    // tensor relative to its largest element. Where gates can differ, each tensor's gradient in
    // relative L2 norm: one flipped gate (a pre-activation within ~1e-6 of zero, well under one
    // expected per step) moves one sample's contribution through one unit, about 1/√(batch ·
    // units) of the norm (1 % for the default model's layers, 3 % for a 32-unit layer at batch
    // 32); 0.1 takes many flips in one tensor at one step, while a wrong scale, mask or layout
    // in a backward kernel is O(1).
    constexpr Tol kLoss{1e-4, 1e-4}, kUpdate = kElementwise;
    constexpr double kGradAbs = 1e-4, kGradRel = 1e-3, kGradL2 = 0.1;
    SelftestResult r;
    r.name = c.name;
    r.tolerance = fmt::format("loss {}, update {}", kLoss.text(), kUpdate.text());
    std::optional<MlpConfig> gated;
    if (c.compare_gradients) {
        gated = as_mlp(c.model);
        if (!gated || gated->activation != Activation::Relu)
            throw Error(fmt::format("{}: comparing gradients element by element needs a ReLU MLP", c.name));
        r.tolerance += fmt::format(", gradients {:g}·max|g| + {:g}·|g| per tensor", kGradAbs, kGradRel);
    } else {
        r.tolerance += fmt::format(", gradients within {:g} in relative L2 norm per tensor", kGradL2);
    }
    TrainConfig t = training_config(reference);
    t.batch = c.batch;
    Trainer ref(c.model, c.optimizer, t, c.data);
    t.device = tested;
    Trainer dut(c.model, c.optimizer, t, c.data);
    const std::size_t n = ref.model().parameters().size();
    if (!c.init.empty()) {
        CUMNIST_CHECK(c.init.size() == n, "{}: {} initial parameters for a model of {}", c.name, c.init.size(), n);
        ref.model().parameters().copy_from_host(c.init.data(), n);
    }
    Optimizer update(c.optimizer, n, Device::Cpu);  // the reference formula, on the tested gradient
    const std::vector<std::string> state_names = update.state_names();
    Buffer<uint64_t> counter(1, Device::Cpu);
    // The tested trainer's own state is made to differ first: every step must take the copy.
    for (Buffer<float>& b : dut.optimizer().state()) {
        const std::vector<float> junk(b.size(), 0.5f);
        b.copy_from_host(junk.data(), junk.size());
    }
    dut.set_step(1000);
    for (int s = 1; s <= c.steps; ++s) {
        const std::vector<float> w0 = ref.model().parameters().to_host();
        std::vector<std::vector<float>> state0;
        for (const Buffer<float>& b : ref.optimizer().state()) state0.push_back(b.to_host());
        const uint64_t step0 = ref.step();
        if (gated) {
            const double margin = relu_gate_margin(*gated, w0, c.data);
            if (!(margin > 0)) {
                r.worst_error = HUGE_VAL;
                r.detail = fmt::format("step {}: a ReLU gate comes within {:g} of zero; the case no longer keeps "
                                       "its gates apart, so its gradients may differ on a correct backend",
                                       s, margin);
                return r;
            }
        }
        dut.model().parameters().copy_from_host(w0.data(), n);
        for (std::size_t k = 0; k < state0.size(); ++k)
            dut.optimizer().state()[k].copy_from_host(state0[k].data(), state0[k].size());
        dut.set_step(step0);
        const double before[2] = {ref.metric_totals()[0], dut.metric_totals()[0]};
        ref.train_steps(1);
        dut.train_steps(1);
        const std::vector<double> loss_ref = {(ref.metric_totals()[0] - before[0]) / c.batch};
        const std::vector<double> loss_dut = {(dut.metric_totals()[0] - before[1]) / c.batch};
        compare(r, loss_dut, loss_ref, kLoss, fmt::format("step {} loss", s).c_str());
        if (dut.step() != step0 + 1) {
            r.worst_error = HUGE_VAL;
            r.detail = fmt::format("step {}: the step counter is {}, expected {}", s, dut.step(), step0 + 1);
            return r;
        }
        const std::vector<float> g_dut = dut.model().gradients().to_host(), g_ref = ref.model().gradients().to_host();
        int layer = 0;
        for (const LayerLayout& L : ref.model().layout()) {
            ++layer;
            const std::size_t sizes[2] = {static_cast<std::size_t>(L.in) * L.out, static_cast<std::size_t>(L.out)};
            const std::size_t offsets[2] = {L.w_offset, L.b_offset};
            for (int part = 0; part < 2; ++part) {
                const std::string what = fmt::format("step {} layer {} {} gradient", s, layer, part == 0 ? "weight" : "bias");
                double largest = 0, diff2 = 0, norm2 = 0;
                for (std::size_t i = offsets[part]; i < offsets[part] + sizes[part]; ++i) {
                    const double g = g_ref[i], d = static_cast<double>(g_dut[i]) - g;
                    largest = std::max(largest, std::fabs(g));
                    diff2 += d * d, norm2 += g * g;
                }
                if (gated) {
                    compare_range(r, g_dut, g_ref, offsets[part], sizes[part], {kGradAbs * largest, kGradRel}, what);
                } else {
                    // As one value: the relative L2 distance against kGradL2.
                    const double rel = norm2 > 0 ? std::sqrt(diff2 / norm2) : diff2 > 0 ? HUGE_VAL : 0.0;
                    const double excess = std::isfinite(rel) ? rel / kGradL2 : HUGE_VAL;
                    r.worst_abs = std::max(r.worst_abs, std::sqrt(diff2));
                    if (excess > r.worst_error) {
                        r.worst_error = excess;
                        if (excess > 1.0) r.detail = fmt::format("{}: {:.3g} apart in relative L2 norm", what, rel);
                    }
                }
            }
        }
        Buffer<float> w = Buffer<float>::from_host(w0, Device::Cpu), g = Buffer<float>::from_host(g_dut, Device::Cpu);
        for (std::size_t k = 0; k < state0.size(); ++k)
            update.state()[k].copy_from_host(state0[k].data(), state0[k].size());
        counter.copy_from_host(&step0, 1);
        update.step(w, g, counter.data());
        compare(r, dut.model().parameters().to_host(), w.to_host(), kUpdate,
                fmt::format("step {} parameters", s).c_str());
        for (std::size_t k = 0; k < state0.size(); ++k) {
            const std::vector<float> want = update.state()[k].to_host();
            double largest = 0;
            for (float v : want) largest = std::max(largest, std::fabs(static_cast<double>(v)));
            compare(r, dut.optimizer().state()[k].to_host(), want, {kUpdate.abs * largest, kUpdate.rel},
                    fmt::format("step {} {}", s, state_names[k]).c_str());
        }
        if (!r.detail.empty()) return r;  // the first step that fails says it
    }
    r.passed = r.worst_error <= 1.0;
    return r;
}

double relu_gate_margin(const MlpConfig& mlp, const std::vector<float>& params, const Dataset& data) {
    if (mlp.activation != Activation::Relu) throw Error("relu_gate_margin: the MLP does not use ReLU");
    const ModelSpec spec(mlp);
    CUMNIST_CHECK(params.size() == parameter_count(spec), "{} parameters for a model of {}", params.size(),
                  parameter_count(spec));
    CUMNIST_CHECK(data.features() == mlp.inputs, "{} features for a model of {} inputs", data.features(), mlp.inputs);
    const double u = std::ldexp(1.0, -24);
    // The largest value each input takes over the data set (x = byte · fl(1/255): within 2 ulp).
    std::vector<double> in_max(mlp.inputs, 0.0);
    for (int i = 0; i < data.n; ++i)
        for (int p = 0; p < mlp.inputs; ++p)
            in_max[p] = std::max(in_max[p], data.images[static_cast<std::size_t>(i) * mlp.inputs + p] / 255.0 * (1 + 2 * u));
    const double keep_scale = mlp.dropout > 0 ? 1.0 / (1.0 - static_cast<double>(mlp.dropout)) : 1.0;
    const std::vector<LayerLayout> layout = layer_layout(spec);
    double margin = HUGE_VAL;
    for (std::size_t l = 0; l + 1 < layout.size(); ++l) {  // the hidden layers
        const LayerLayout& L = layout[l];
        const double gamma = gamma_k(L.in + 1);  // the dot product and the bias
        std::vector<double> out_max(L.out);
        for (int j = 0; j < L.out; ++j) {
            double reach = 0;  // ≥ |Σ w·x| for every sample
            for (int p = 0; p < L.in; ++p)
                reach += std::fabs(static_cast<double>(params[L.w_offset + static_cast<std::size_t>(j) * L.in + p])) * in_max[p];
            const double b = params[L.b_offset + j];
            const double rounding = gamma * (reach + std::fabs(b));
            margin = std::min(margin, std::fabs(b) - reach - rounding);
            // What the unit passes on, on any backend and under any mask: 0 when its gate is shut
            // for every sample, else at most its largest pre-activation, scaled by dropout.
            out_max[j] = std::max(0.0, b + reach + rounding) * keep_scale * (1 + 4 * u);
        }
        in_max = std::move(out_max);
    }
    return margin;
}

TrainingParityCase gate_margin_case() {
    MlpConfig mlp;
    mlp.hidden = {64, 32};
    mlp.dropout = 0.2f;
    TrainingParityCase c;
    c.name = "training: 20 Adam steps of a ReLU MLP whose gates stay away from zero, each from the CPU's state, "
             "gradients included";
    c.model = mlp;
    c.compare_gradients = true;
    // 640 images with the same 16 lit pixels, bright or dim by class, plus noise; the rest black.
    Dataset& ds = c.data;
    ds.name = "gate-margin";
    ds.n = 640;
    ds.rows = ds.cols = 28;
    ds.images.assign(static_cast<std::size_t>(ds.n) * 784, 0);
    ds.labels.resize(ds.n);
    for (int i = 0; i < ds.n; ++i) {
        const int label = static_cast<int>(philox_word(3, 7, 0, static_cast<uint64_t>(i)) % 10);
        ds.labels[i] = static_cast<uint8_t>(label);
        for (int k = 0; k < 16; ++k) {
            const uint32_t noise = philox_word(4, 7, static_cast<uint64_t>(i), static_cast<uint64_t>(k)) >> 27;
            ds.images[static_cast<std::size_t>(i) * 784 + 28 * (6 + k) + 6 + k] =
                static_cast<uint8_t>(((label + k) % 10 < 5 ? 150 : 30) + noise);
        }
    }
    // Glorot weights; the first layer's biases +2 on every 8th unit and −2 elsewhere (8 of 64
    // live), the second's +8 and −8 alternately (16 of 32): they clear the bound on |Σ w·x| for
    // every sample by 1.35 at the start, and by as much after 20 Adam steps (dead units never
    // move; Adam moves a live unit's weights by about lr a step, at most ~3.2 lr).
    c.init = glorot_uniform_init(c.model, 42);
    const std::vector<LayerLayout> layout = layer_layout(c.model);
    for (int j = 0; j < layout[0].out; ++j) c.init[layout[0].b_offset + j] = j % 8 == 0 ? 2.0f : -2.0f;
    for (int j = 0; j < layout[1].out; ++j) c.init[layout[1].b_offset + j] = j % 2 == 0 ? 8.0f : -8.0f;
    // The output layer's weights a tenth of Glorot's, so that its inputs of ~10 make logits of a
    // few units: a softmax that is not saturated, whose gradients are not just ±1.
    for (std::size_t i = 0; i < static_cast<std::size_t>(layout[2].in) * layout[2].out; ++i)
        c.init[layout[2].w_offset + i] *= 0.1f;
    return c;
}

std::vector<SelftestResult> run_gpu_selftest() {
    const std::string why = cuda_unavailable_reason();
    if (!why.empty()) throw Error(fmt::format("no usable GPU: {}", why));
    std::vector<SelftestResult> results;
    std::vector<Case> cases = op_cases();
    for (Case& c : training_cases()) cases.push_back(std::move(c));
    for (const Case& c : cases) {
        SelftestResult r;
        r.name = c.name;
        r.tolerance = c.tol.abs == 0 && c.tol.rel == 0 ? "exact" : c.tol.text();
        try {
            c.run(r);
            r.passed = r.worst_error <= 1.0 && r.detail.empty();
        } catch (const std::exception& e) {
            r.passed = false;
            r.detail = e.what();
        }
        results.push_back(std::move(r));
    }
    return results;
}

}  // namespace cumnist
