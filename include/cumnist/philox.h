// Per-element arithmetic shared by the CPU and CUDA backends: Philox4x32-10, the dropout keep
// test, and the scalar updates of the optimizers. HOST_DEVICE inline, so the CPU tests exercise
// exactly the formulas the GPU runs. Plain C++ when not compiled by nvcc.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CUMNIST_HD __host__ __device__ __forceinline__
#else
#define CUMNIST_HD inline
#endif

namespace cumnist {

struct Philox4 {
    uint32_t v[4];
};

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
CUMNIST_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
        const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
        const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
        const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
        const uint32_t n0 = hi1 ^ c1 ^ k0;
        const uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += kW0;
        k1 += kW1;
    }
    return {{c0, c1, c2, c3}};
}

// The four random words for elements 4g..4g+3 of stream `stream` at step `step`, under `seed`:
// the counter (g, stream, step) is unique per (stream, step, element group), the key is the seed.
// Groups g < 2^32 (elements < 2^34) are supported.
CUMNIST_HD Philox4 philox_group(uint64_t seed, uint32_t stream, uint64_t step, uint64_t group) {
    return philox4x32_10(static_cast<uint32_t>(group), stream, static_cast<uint32_t>(step),
                         static_cast<uint32_t>(step >> 32), static_cast<uint32_t>(seed),
                         static_cast<uint32_t>(seed >> 32));
}

// The random word for element i: word i & 3 of group i / 4.
CUMNIST_HD uint32_t philox_word(uint64_t seed, uint32_t stream, uint64_t step, uint64_t i) {
    const Philox4 r = philox_group(seed, stream, step, i >> 2);
    // A select rather than r.v[i & 3]: a dynamic index would put r in local memory on the GPU.
    const uint32_t j = static_cast<uint32_t>(i & 3u);
    return j == 0 ? r.v[0] : j == 1 ? r.v[1] : j == 2 ? r.v[2] : r.v[3];
}

// A float uniform in [0, 1) from the top 24 bits of a word (exact in float).
CUMNIST_HD float word_to_unit_float(uint32_t word) { return static_cast<float>(word >> 8) * (1.0f / 16777216.0f); }

// Dropout with rate p keeps an element when its word is below keep_threshold(p). The threshold is
// computed once, on the host, in double; the test itself is an integer comparison, so the CPU and
// the GPU keep exactly the same elements.
inline uint32_t dropout_keep_threshold(double rate) {
    const double t = (1.0 - rate) * 4294967296.0;
    return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// Dropout streams: layer l of the model draws from stream kDropoutStreamBase + l.
constexpr uint32_t kDropoutStreamBase = 0x100u;

CUMNIST_HD bool dropout_keep(uint64_t seed, uint32_t stream, uint64_t step, uint64_t i, uint32_t threshold) {
    return philox_word(seed, stream, step, i) < threshold;
}

// --- Optimizer updates of one scalar (w, its gradient g, and the optimizer's state). ----------

// The learning rate a step uses: lr · *lr_scale when a schedule's factor is set, else lr (both
// backends: the same single rounding).
CUMNIST_HD float scaled_rate(float lr, const float* lr_scale) { return lr_scale ? lr * *lr_scale : lr; }

struct AdamScalars {
    float lr, beta1, beta2, epsilon;
};

// Adam (Kingma & Ba), in the Keras form, with t the 1-based step:
//   m ← m + (1 − β1)(g − m);  v ← v + (1 − β2)(g² − v)
//   α = lr · √(1 − β2ᵗ) / (1 − β1ᵗ);  w ← w − α · m / (√v + ε)
// `alpha` is computed once per step by adam_alpha().
CUMNIST_HD void adam_update(float& w, float& m, float& v, float g, float alpha, float beta1, float beta2, float epsilon) {
    m += (1.0f - beta1) * (g - m);
    v += (1.0f - beta2) * (g * g - v);
    w -= alpha * m / (sqrtf(v) + epsilon);
}

CUMNIST_HD float adam_alpha(float lr, float beta1, float beta2, uint64_t t) {
    const double tf = static_cast<double>(t);
    return static_cast<float>(lr * sqrt(1.0 - pow(static_cast<double>(beta2), tf)) /
                              (1.0 - pow(static_cast<double>(beta1), tf)));
}

// SGD with momentum μ (Keras form): v ← μ v − lr g;  w ← w + v.  μ = 0 is plain SGD.
CUMNIST_HD void sgd_update(float& w, float& velocity, float g, float lr, float momentum) {
    velocity = momentum * velocity - lr * g;
    w += velocity;
}

// RMSprop (Keras form): s ← ρ s + (1 − ρ) g²;  w ← w − lr g / (√s + ε).
CUMNIST_HD void rmsprop_update(float& w, float& s, float g, float lr, float rho, float epsilon) {
    s = rho * s + (1.0f - rho) * g * g;
    w -= lr * g / (sqrtf(s) + epsilon);
}

}  // namespace cumnist
