// Benchmark arithmetic: FLOP counts from the layer layout, the sgemm peak, quantiles.
#include "cumnist/bench.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cumnist/ops.h"

namespace cumnist {

namespace {
// Σ_l in_l·out_l: the multiply-adds of one sample's forward pass through the weight matrices.
double weight_macs(const MlpConfig& config) {
    double macs = 0.0;
    for (const LayerLayout& l : layer_layout(config)) macs += static_cast<double>(l.in) * l.out;
    return macs;
}
}  // namespace

double training_step_flops(const MlpConfig& config, int n) {
    const std::vector<LayerLayout> layout = layer_layout(config);
    const double first = static_cast<double>(layout.front().in) * layout.front().out;
    // forward 2·Σ, dW 2·Σ, dX 2·(Σ − in_0·out_0), per sample.
    return static_cast<double>(n) * (6.0 * weight_macs(config) - 2.0 * first);
}

double inference_flops(const MlpConfig& config, int n) { return static_cast<double>(n) * 2.0 * weight_macs(config); }

SgemmPeak measure_sgemm_peak(int size, int repeats) {
    CUMNIST_CHECK(size > 0 && repeats > 0, "sgemm peak: size {} and repeats {} must be positive", size, repeats);
    const std::size_t count = static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
    std::vector<float> a(count), b(count), c(count, 0.0f);
    // Values in [−0.5, 0.5): no denormals, no overflow, nothing a BLAS could shortcut.
    uint32_t state = 12345u;
    for (std::size_t i = 0; i < count; ++i) {
        state = state * 1664525u + 1013904223u;
        a[i] = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
        state = state * 1664525u + 1013904223u;
        b[i] = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
    }
    const auto sgemm = [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1.0f, a.data(), size, b.data(), size,
                    0.0f, c.data(), size);
    };
    sgemm();  // untimed: thread start-up, page faults
    double best = 0.0;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        sgemm();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, 2.0 * size * static_cast<double>(size) * size / s / 1e9);
    }
    CUMNIST_CHECK(std::isfinite(c[0]), "sgemm peak: the product is not finite");
    return {best, size, repeats, openblas_get_num_threads()};
}

GemmFloor measure_step_gemms(const MlpConfig& config, int n) {
    CUMNIST_CHECK(n > 0, "GEMM floor: batch {} must be positive", n);
    const std::vector<LayerLayout> layout = layer_layout(config);
    const auto filled = [](std::size_t count) {
        std::vector<float> v(count);
        for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<float>(i % 251) / 251.0f - 0.5f;
        return v;
    };
    // Per layer: input x and its gradient dx (n, in), weights w and dw (out, in), output y (n, out),
    // which also stands in for the output's gradient. x and w never change: no drift to denormals.
    std::vector<std::vector<float>> x, dx, w, dw, y;
    for (const LayerLayout& l : layout) {
        x.push_back(filled(static_cast<std::size_t>(n) * l.in));
        dx.push_back(filled(static_cast<std::size_t>(n) * l.in));
        w.push_back(filled(static_cast<std::size_t>(l.out) * l.in));
        dw.push_back(filled(static_cast<std::size_t>(l.out) * l.in));
        y.push_back(filled(static_cast<std::size_t>(n) * l.out));
    }
    // The training step's GEMMs through the same op (and so the same BLAS calls) as training.
    const auto view = [](std::vector<float>& v, int rows, int cols) {
        return MatrixView<float>{v.data(), rows, cols, Device::Cpu};
    };
    const auto step = [&] {
        for (std::size_t l = 0; l < layout.size(); ++l) {  // y (n, out) = x (n, in) · wᵀ
            const int in = layout[l].in, out = layout[l].out;
            ops::gemm(view(y[l], n, out), view(x[l], n, in), Trans::No, view(w[l], out, in), Trans::Yes);
        }
        for (std::size_t l = layout.size(); l-- > 0;) {
            const int in = layout[l].in, out = layout[l].out;
            // dw (out, in) = dyᵀ (out, n) · x (n, in)
            ops::gemm(view(dw[l], out, in), view(y[l], n, out), Trans::Yes, view(x[l], n, in), Trans::No);
            // dx (n, in) = dy (n, out) · w (out, in), not for the first layer
            if (l > 0) ops::gemm(view(dx[l], n, in), view(y[l], n, out), Trans::No, view(w[l], out, in), Trans::No);
        }
    };
    step();  // untimed
    GemmFloor floor;
    floor.seconds_per_step = 1e30;
    double total = 0.0;
    while (floor.runs < 5 || (total < 0.2 && floor.runs < 10000)) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        floor.seconds_per_step = std::min(floor.seconds_per_step, s);
        total += s;
        ++floor.runs;
    }
    return floor;
}

double quantile(std::vector<double> values, double q) {
    CUMNIST_CHECK(!values.empty(), "quantile of an empty list");
    CUMNIST_CHECK(q >= 0.0 && q <= 1.0, "quantile {} outside [0, 1]", q);
    std::sort(values.begin(), values.end());
    const double pos = q * static_cast<double>(values.size() - 1);
    const std::size_t lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (pos - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

}  // namespace cumnist
