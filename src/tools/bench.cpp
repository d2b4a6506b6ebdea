// Benchmark arithmetic: FLOP counts from the layer layout, the FMA and GEMM peaks, quantiles.
#include "cumnist/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "cpu/dnnl_gemm.h"
#include "cumnist/ops.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cumnist {

namespace {
double sum(const std::vector<double>& v) {
    double total = 0.0;
    for (double x : v) total += x;
    return total;
}
}  // namespace

double training_step_flops(const ModelSpec& spec, int n) {
    const std::vector<double> macs = layer_macs(spec);
    // forward 2·Σ, dW 2·Σ, dX 2·(Σ − first layer), per sample.
    return static_cast<double>(n) * (6.0 * sum(macs) - 2.0 * macs.front());
}

double inference_flops(const ModelSpec& spec, int n) { return static_cast<double>(n) * 2.0 * sum(layer_macs(spec)); }

namespace {

// One thread's FMA loop: kAcc independent accumulators (enough to cover the FMA latency times
// the number of FMA pipes), each updated acc ← acc·x + y, kIters times. The accumulators converge
// to y/(1 − x) (no overflow, no denormals); their sum is returned so the loop cannot be dropped.
// Returns the FLOP count (2 per lane per FMA) and the elapsed seconds.
#define CUMNIST_FMA16(fma, acc, x, y) \
    acc[0] = fma(acc[0], x, y); acc[1] = fma(acc[1], x, y); acc[2] = fma(acc[2], x, y); acc[3] = fma(acc[3], x, y); \
    acc[4] = fma(acc[4], x, y); acc[5] = fma(acc[5], x, y); acc[6] = fma(acc[6], x, y); acc[7] = fma(acc[7], x, y); \
    acc[8] = fma(acc[8], x, y); acc[9] = fma(acc[9], x, y); acc[10] = fma(acc[10], x, y); acc[11] = fma(acc[11], x, y); \
    acc[12] = fma(acc[12], x, y); acc[13] = fma(acc[13], x, y); acc[14] = fma(acc[14], x, y); acc[15] = fma(acc[15], x, y)

struct LoopResult {
    double flops = 0.0, seconds = 0.0, sink = 0.0;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// (The loops are written out in each function rather than passed as a lambda: a lambda's body
// does not inherit its enclosing function's target attribute.)
#if defined(__x86_64__)
__attribute__((target("avx512f"))) LoopResult fma_loop_avx512(long iters) {
    const auto t0 = std::chrono::steady_clock::now();
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
    const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.001f);
    for (long it = 0; it < iters; ++it) {
        CUMNIST_FMA16(_mm512_fmadd_ps, acc, x, y);
    }
    float lanes[16];
    for (int i = 1; i < 16; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
    _mm512_storeu_ps(lanes, acc[0]);
    double sum = 0.0;
    for (float v : lanes) sum += v;
    return {2.0 * 16 * 16 * static_cast<double>(iters), seconds_since(t0), sum};
}

__attribute__((target("avx2,fma"))) LoopResult fma_loop_avx2(long iters) {
    const auto t0 = std::chrono::steady_clock::now();
    __m256 acc[16];  // 16 ymm registers: GCC keeps x and y as memory operands of the FMA, which costs nothing
    for (int i = 0; i < 16; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
    const __m256 x = _mm256_set1_ps(0.999f), y = _mm256_set1_ps(0.001f);
    for (long it = 0; it < iters; ++it) {
        CUMNIST_FMA16(_mm256_fmadd_ps, acc, x, y);
    }
    float lanes[8];
    for (int i = 1; i < 16; ++i) acc[0] = _mm256_add_ps(acc[0], acc[i]);
    _mm256_storeu_ps(lanes, acc[0]);
    double sum = 0.0;
    for (float v : lanes) sum += v;
    return {2.0 * 16 * 8 * static_cast<double>(iters), seconds_since(t0), sum};
}
#endif

LoopResult fma_loop_scalar(long iters) {
    const auto t0 = std::chrono::steady_clock::now();
    float acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = static_cast<float>(i);
    const float x = 0.999f, y = 0.001f;
    for (long it = 0; it < iters; ++it) {
        CUMNIST_FMA16(std::fma, acc, x, y);
    }
    double sum = 0.0;
    for (float v : acc) sum += v;
    return {2.0 * 16 * static_cast<double>(iters), seconds_since(t0), sum};
}
#undef CUMNIST_FMA16

}  // namespace

FmaPeak measure_fma_peak(double seconds, int repeats) {
    CUMNIST_CHECK(seconds > 0 && repeats > 0, "FMA peak: seconds {} and repeats {} must be positive", seconds, repeats);
    FmaPeak peak;
    LoopResult (*loop)(long) = fma_loop_scalar;
    peak.unit = "scalar";
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        loop = fma_loop_avx512;
        peak.unit = "AVX-512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        loop = fma_loop_avx2;
        peak.unit = "AVX2+FMA";
    }
#endif
    // Calibrate on one thread: iterations for ~`seconds`.
    long iters = 1 << 16;
    for (;;) {
        const LoopResult r = loop(iters);
        if (r.seconds >= seconds / 4 || iters > (1L << 40)) {
            iters = std::max(1L, static_cast<long>(static_cast<double>(iters) * seconds / std::max(r.seconds, 1e-9)));
            break;
        }
        iters *= 4;
    }
    double sink = 0.0;
    for (int rep = 0; rep < repeats; ++rep) {
        double total = 0.0;
        int threads = 0;
#pragma omp parallel reduction(+ : total, threads, sink)
        {
            const LoopResult r = loop(iters);
            total += r.flops / r.seconds;
            threads += 1;
            sink += r.sink;
        }
        peak.gflops = std::max(peak.gflops, total / 1e9);
        peak.threads = threads;
    }
    CUMNIST_CHECK(std::isfinite(sink), "FMA peak: the accumulators are not finite");
    return peak;
}

GemmPeak measure_gemm_peak(int size, int repeats) {
    CUMNIST_CHECK(size > 0 && repeats > 0, "GEMM peak: size {} and repeats {} must be positive", size, repeats);
    const std::size_t count = static_cast<std::size_t>(size) * static_cast<std::size_t>(size);
    std::vector<float> a(count), b(count), c(count, 0.0f);
    // Values in [−0.5, 0.5): no denormals, no overflow, nothing a library could shortcut.
    uint32_t state = 12345u;
    for (std::size_t i = 0; i < count; ++i) {
        state = state * 1664525u + 1013904223u;
        a[i] = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
        state = state * 1664525u + 1013904223u;
        b[i] = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
    }
    GemmPeak peak{0.0, size, repeats, omp_get_max_threads(), ""};
    for (Trans ta : {Trans::No, Trans::Yes})
        for (Trans tb : {Trans::No, Trans::Yes}) {
            const auto gemm = [&] {
                ops::gemm(MatrixView<float>{c.data(), size, size, Device::Cpu},
                          MatrixView<const float>{a.data(), size, size, Device::Cpu}, ta,
                          MatrixView<const float>{b.data(), size, size, Device::Cpu}, tb);
            };
            gemm();  // untimed: primitive creation, thread start-up, page faults
            for (int r = 0; r < repeats; ++r) {
                const auto t0 = std::chrono::steady_clock::now();
                gemm();
                const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                const double gflops = 2.0 * size * static_cast<double>(size) * size / s / 1e9;
                if (gflops > peak.gflops) {
                    peak.gflops = gflops;
                    peak.transposes = std::string(ta == Trans::No ? "N" : "T") + (tb == Trans::No ? "N" : "T");
                }
            }
            CUMNIST_CHECK(std::isfinite(c[0]), "GEMM peak: the product is not finite");
        }
    return peak;
}

std::string cpu_gemm_library() { return cpu::onednn::describe(); }

GemmFloor measure_step_gemms(const ModelSpec& spec, int n) {
    CUMNIST_CHECK(n > 0, "GEMM floor: batch {} must be positive", n);
    for (const LayerSpec& l : spec.layers)
        if (l.kind == LayerKind::Conv2D) return {};  // defined for models of dense layers only
    const std::vector<LayerLayout> layout = layer_layout(spec);
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
    std::vector<double> times;
    while (floor.runs < 5 || (total < 0.2 && floor.runs < 10000)) {
        const auto t0 = std::chrono::steady_clock::now();
        step();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        floor.seconds_per_step = std::min(floor.seconds_per_step, s);
        times.push_back(s);
        total += s;
        ++floor.runs;
    }
    floor.median_seconds = quantile(times, 0.5);
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
