// Tests of the per-element arithmetic shared by both backends (include/cumnist/philox.h):
// Philox4x32-10 against Random123's published known answers, the element → word mapping, the
// dropout keep test and its threshold, word_to_unit_float, and the scalar optimizer updates
// against the double-precision formulas of the oracle.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <vector>

#include <gtest/gtest.h>

#include "cpu/philox_blocks.h"
#include "cumnist/philox.h"
#include "reference/reference.h"

namespace {

using cumnist::Philox4;

// Random123 (D. E. Shaw Research), tests/kat_vectors, the "philox4x32 10" lines:
//   counter (4 words), key (2 words) -> output (4 words)
struct Kat {
    uint32_t ctr[4];
    uint32_t key[2];
    uint32_t out[4];
};
constexpr Kat kKats[] = {
    {{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u},
     {0x00000000u, 0x00000000u},
     {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

TEST(Philox, Random123KnownAnswers) {
    for (const Kat& k : kKats) {
        const Philox4 r = cumnist::philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
        for (int j = 0; j < 4; ++j) {
            EXPECT_EQ(r.v[j], k.out[j]) << std::hex << "counter " << k.ctr[0] << " " << k.ctr[1] << " " << k.ctr[2]
                                        << " " << k.ctr[3] << " key " << k.key[0] << " " << k.key[1] << ", word " << j;
        }
    }
}

// philox_word(seed, stream, step, i) is word i mod 4 of Philox(counter (i/4, stream, step lo,
// step hi), key (seed lo, seed hi)): the layout the header documents, so every 64-bit input
// really reaches the generator.
TEST(Philox, WordLayout) {
    const uint64_t seed = 0x0123456789abcdefull, step = 0x00000007fffffff3ull;
    const uint32_t stream = 0x101u;
    for (uint64_t i :
         {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{4}, uint64_t{783}, uint64_t{1} << 33}) {
        const Philox4 r = cumnist::philox4x32_10(static_cast<uint32_t>(i >> 2), stream, static_cast<uint32_t>(step),
                                                 static_cast<uint32_t>(step >> 32), static_cast<uint32_t>(seed),
                                                 static_cast<uint32_t>(seed >> 32));
        EXPECT_EQ(cumnist::philox_word(seed, stream, step, i), r.v[i & 3u]) << "element " << i;
    }
}

// Every input changes the word: the high halves of seed and step, the stream, the element.
TEST(Philox, EveryInputMatters) {
    const uint64_t seed = 42, step = 9;
    const uint32_t stream = cumnist::kDropoutStreamBase;
    const uint32_t base = cumnist::philox_word(seed, stream, step, 5);
    EXPECT_NE(cumnist::philox_word(seed + (uint64_t{1} << 32), stream, step, 5), base);
    EXPECT_NE(cumnist::philox_word(seed + 1, stream, step, 5), base);
    EXPECT_NE(cumnist::philox_word(seed, stream + 1, step, 5), base);
    EXPECT_NE(cumnist::philox_word(seed, stream, step + 1, 5), base);
    EXPECT_NE(cumnist::philox_word(seed, stream, step + (uint64_t{1} << 32), 5), base);
    EXPECT_NE(cumnist::philox_word(seed, stream, step, 6), base);
    EXPECT_NE(cumnist::philox_word(seed, stream, step, 5 + 4), base);
    // 4096 consecutive elements: no repeated word (a collision among 4096 uniform 32-bit words has
    // probability ~0.2 %; this fixed input has none).
    std::set<uint32_t> words;
    for (uint64_t i = 0; i < 4096; ++i) words.insert(cumnist::philox_word(seed, stream, step, i));
    EXPECT_EQ(words.size(), 4096u);
}

TEST(Philox, WordToUnitFloatRange) {
    EXPECT_EQ(cumnist::word_to_unit_float(0u), 0.0f);
    EXPECT_EQ(cumnist::word_to_unit_float(0xFFu), 0.0f);  // the low 8 bits are not used
    EXPECT_EQ(cumnist::word_to_unit_float(0x100u), 1.0f / 16777216.0f);
    EXPECT_EQ(cumnist::word_to_unit_float(0x80000000u), 0.5f);
    const float top = cumnist::word_to_unit_float(0xFFFFFFFFu);
    EXPECT_LT(top, 1.0f);
    EXPECT_EQ(top, 1.0f - 1.0f / 16777216.0f);
    double sum = 0.0;
    const int n = 100000;
    for (int i = 0; i < n; ++i) {
        const float u = cumnist::word_to_unit_float(cumnist::philox_word(7, 3, 1, static_cast<uint64_t>(i)));
        ASSERT_GE(u, 0.0f);
        ASSERT_LT(u, 1.0f);
        sum += u;
    }
    // Mean of n uniforms: standard deviation 1/√(12 n) ≈ 9e-4; 0.005 is > 5 sigma.
    EXPECT_NEAR(sum / n, 0.5, 0.005);
}

TEST(Philox, DropoutKeepThresholdEdgeCases) {
    // rate 0: everything below 2³² − 1 is kept (clamped, not wrapped to 0).
    EXPECT_EQ(cumnist::dropout_keep_threshold(0.0), 0xFFFFFFFFu);
    // A rate so small that (1 − rate) · 2³² rounds past 2³² − 1 still clamps.
    EXPECT_EQ(cumnist::dropout_keep_threshold(1e-12), 0xFFFFFFFFu);
    EXPECT_EQ(cumnist::dropout_keep_threshold(1.0), 0u);  // nothing kept
    EXPECT_EQ(cumnist::dropout_keep_threshold(0.5), 0x80000000u);
    EXPECT_EQ(cumnist::dropout_keep_threshold(0.25), 0xC0000000u);
    EXPECT_EQ(cumnist::dropout_keep_threshold(0.75), 0x40000000u);
    EXPECT_EQ(cumnist::dropout_keep_threshold(0.2), 3435973836u);  // floor(0.8 · 2³²)
    // Monotone: a higher rate never keeps more.
    uint32_t previous = cumnist::dropout_keep_threshold(0.0);
    for (int i = 1; i <= 1000; ++i) {
        const uint32_t t = cumnist::dropout_keep_threshold(i / 1000.0);
        EXPECT_LE(t, previous) << "rate " << i / 1000.0;
        previous = t;
    }
}

TEST(Philox, DropoutKeepIsAnIntegerComparison) {
    const uint32_t threshold = cumnist::dropout_keep_threshold(0.3);
    int kept = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        const uint64_t e = static_cast<uint64_t>(i);
        const bool keep = cumnist::dropout_keep(99, 0x100u, 12, e, threshold);
        ASSERT_EQ(keep, cumnist::philox_word(99, 0x100u, 12, e) < threshold);
        kept += keep;
    }
    // Binomial(n, 0.7): standard deviation √(n·0.21)/n ≈ 1e-3; 0.006 is 6 sigma.
    EXPECT_NEAR(static_cast<double>(kept) / n, 0.7, 0.006);
    // Threshold 0 keeps nothing, even for word 0.
    for (uint64_t e = 0; e < 64; ++e) EXPECT_FALSE(cumnist::dropout_keep(1, 2, 3, e, 0u));
}

// ---- Scalar optimizer updates vs the double formulas (tests/reference) ---------------------
//
// Float state vs double state over 20 steps: each step's float arithmetic has a relative error of
// a few ulp (≈ 1e-7) of quantities of size ≤ 1, so w drifts by at most ~20 · 1e-7. Tolerance
// 1e-6 absolute + 1e-5 relative, the element-wise tolerance of DESIGN §4.

std::vector<float> gradients(int steps, uint32_t seed) {
    std::vector<float> g(steps);
    uint32_t s = seed;
    for (float& v : g) {
        s = s * 1664525u + 1013904223u;
        v = static_cast<float>(static_cast<int>(s >> 8) - (1 << 23)) / static_cast<float>(1 << 23);  // [-1, 1)
    }
    return g;
}

void expect_close(double got, double want, const char* what, int step) {
    EXPECT_NEAR(got, want, 1e-6 + 1e-5 * std::fabs(want)) << what << " after step " << step;
}

// The CPU backend's blocks of 64 dropout words (src/cpu/philox_blocks.h), on every path this
// processor has (scalar always, AVX2 and AVX-512 where present): exactly philox_group()'s words,
// on both sides of where the 32-bit group counter wraps (blocks end there: 2^32 is a multiple of
// 16) and with a step above 2^32.
TEST(Philox, BlockWordsMatchOneByOne) {
    using cumnist::cpu::PhiloxPath;
    const std::size_t blocks[] = {0, 1, 125, (0xFFFFFFF0ull / 16), (uint64_t{1} << 28), (uint64_t{1} << 28) + 5};
    const uint64_t steps[] = {0, 1, 12345, (uint64_t{7} << 32) + 3};
    const uint64_t seeds[] = {0, 42, 0xDEADBEEFCAFEF00Dull};
    std::vector<PhiloxPath> paths = {PhiloxPath::Scalar};
    const PhiloxPath best = cumnist::cpu::best_philox_path();
    if (best != PhiloxPath::Scalar) paths.push_back(PhiloxPath::Avx2);  // AVX-512 implies AVX2
    if (best == PhiloxPath::Avx512) paths.push_back(PhiloxPath::Avx512);
    int checked = 0;
    for (PhiloxPath path : paths)
        for (uint64_t seed : seeds)
            for (uint64_t step : steps)
                for (std::size_t blk : blocks) {
                    uint32_t words[cumnist::cpu::kPhiloxBlock];
                    cumnist::cpu::block_words(seed, 0x101u, step, blk, path, words);
                    for (int l = 0; l < 16; ++l) {
                        const uint64_t group = 16 * static_cast<uint64_t>(blk) + l;
                        const Philox4 want = cumnist::philox_group(seed, 0x101u, step, group);
                        for (int j = 0; j < 4; ++j, ++checked)
                            ASSERT_EQ(words[4 * l + j], want.v[j]) << to_string(path) << " seed " << seed << " step "
                                                                   << step << " group " << group << " word " << j;
                    }
                }
    EXPECT_EQ(checked, static_cast<int>(paths.size()) * 3 * 4 * 6 * 64);
    std::printf("(paths checked on this processor: %zu of 3, the widest %s)\n", paths.size(), to_string(best));
}

TEST(SharedMath, AdamUpdateAndAlphaMatchFormulas) {
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-7f;
    for (uint64_t t : {uint64_t{1}, uint64_t{2}, uint64_t{10}, uint64_t{1000}, uint64_t{100000}}) {
        const double want = static_cast<double>(lr) * std::sqrt(1.0 - std::pow(static_cast<double>(b2), double(t))) /
                            (1.0 - std::pow(static_cast<double>(b1), double(t)));
        EXPECT_NEAR(cumnist::adam_alpha(lr, b1, b2, t), want, 1e-7 * want) << "t = " << t;
    }
    float w = 0.3f, m = 0.0f, v = 0.0f;
    double wd = w, md = 0.0, vd = 0.0;
    const std::vector<float> g = gradients(20, 5);
    for (int s = 0; s < 20; ++s) {
        const uint64_t t = static_cast<uint64_t>(s) + 1;
        cumnist::adam_update(w, m, v, g[s], cumnist::adam_alpha(lr, b1, b2, t), b1, b2, eps);
        ref::adam(wd, md, vd, g[s], lr, b1, b2, eps, t);
        expect_close(w, wd, "w", s);
        expect_close(m, md, "m", s);
        expect_close(v, vd, "v", s);
    }
}

TEST(SharedMath, SgdUpdateMatchesFormula) {
    for (float momentum : {0.0f, 0.9f}) {
        float w = -0.7f, vel = 0.0f;
        double wd = w, vd = 0.0;
        const std::vector<float> g = gradients(20, 6);
        for (int s = 0; s < 20; ++s) {
            cumnist::sgd_update(w, vel, g[s], 0.05f, momentum);
            ref::sgd(wd, vd, g[s], 0.05f, momentum);
            expect_close(w, wd, "w", s);
            expect_close(vel, vd, "velocity", s);
        }
    }
}

TEST(SharedMath, RmspropUpdateMatchesFormula) {
    float w = 0.1f, s = 0.0f;
    double wd = w, sd = 0.0;
    const std::vector<float> g = gradients(20, 7);
    for (int k = 0; k < 20; ++k) {
        cumnist::rmsprop_update(w, s, g[k], 1e-3f, 0.9f, 1e-7f);
        ref::rmsprop(wd, sd, g[k], 1e-3f, 0.9f, 1e-7f);
        expect_close(w, wd, "w", k);
        expect_close(s, sd, "s", k);
    }
}

}  // namespace
