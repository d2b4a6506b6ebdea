// The CPU backend's dropout masks, drawn in blocks of 64 elements (sixteen Philox groups): with
// AVX-512, the sixteen groups at once in vector registers; with AVX2, eight at a time; otherwise
// one philox_group() per group (which leaves the vector units idle: drawing masks was most of the
// epilogues' time). All give philox_group()'s words bit for bit (tests/test_philox.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cumnist/philox.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace cumnist::cpu {

#if defined(__x86_64__)

inline bool cpu_has_avx2() {
    static const bool has = __builtin_cpu_supports("avx2");
    return has;
}

// words[4 l + j] = philox_group(seed, stream, step, first + l).v[j] for l in 0..7, j in 0..3: the
// words of elements 4·first .. 4·first + 31 in element order. Lane l of each register carries
// group first + l (the 32-bit counter wraps like philox_group's cast).
__attribute__((target("avx2"))) inline void philox_group8(uint64_t seed, uint32_t stream, uint64_t step,
                                                           uint64_t first, uint32_t (&words)[32]) {
    const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
    const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(stream));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        // 32x32 -> 64-bit products: _mm256_mul_epu32 multiplies the even lanes; shifting each 64-bit
        // pair right by 32 brings the odd lanes into even position. Then the high and low halves are
        // blended back into lane order.
        const __m256i e0 = _mm256_mul_epu32(c0, m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
        const __m256i e1 = _mm256_mul_epu32(c2, m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
        const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
        const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
        const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
        const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
        c1 = lo1;
        c3 = lo0;
        k0 += kW0;
        k1 += kW1;
    }
    // Transpose (word, group) -> (group, word): 4x4 transposes within each 128-bit half, then the
    // halves regrouped, so group l's four words are consecutive.
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i g04 = _mm256_unpacklo_epi64(t0, t2), g15 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i g26 = _mm256_unpacklo_epi64(t1, t3), g37 = _mm256_unpackhi_epi64(t1, t3);
    __m256i* out = reinterpret_cast<__m256i*>(words);
    _mm256_storeu_si256(out + 0, _mm256_permute2x128_si256(g04, g15, 0x20));  // groups 0, 1
    _mm256_storeu_si256(out + 1, _mm256_permute2x128_si256(g26, g37, 0x20));  // groups 2, 3
    _mm256_storeu_si256(out + 2, _mm256_permute2x128_si256(g04, g15, 0x31));  // groups 4, 5
    _mm256_storeu_si256(out + 3, _mm256_permute2x128_si256(g26, g37, 0x31));  // groups 6, 7
}

// words[4 l + j] = philox_group(seed, stream, step, first + l).v[j] for l in 0..15, j in 0..3:
// philox_group8's computation over sixteen lanes. (GCC 12 warns, wrongly, that the
// _mm512_undefined_epi32() inside its own shift and multiply intrinsics may be used uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) inline void philox_group16(uint64_t seed, uint32_t stream, uint64_t step,
                                                              uint64_t first, uint32_t (&words)[64]) {
    const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
    const __m512i m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    constexpr __mmask16 kOdd = 0xAAAA;
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first))),
                                  _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(stream));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step)));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(step >> 32)));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        // As philox_group8: even-lane products, odd lanes shifted into even position, halves
        // blended back into lane order (mask bit set: the odd lane's value).
        const __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
        const __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
        const __m512i hi0 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e0, 32), o0);
        const __m512i lo0 = _mm512_mask_blend_epi32(kOdd, e0, _mm512_slli_epi64(o0, 32));
        const __m512i hi1 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e1, 32), o1);
        const __m512i lo1 = _mm512_mask_blend_epi32(kOdd, e1, _mm512_slli_epi64(o1, 32));
        c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
        c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
        c1 = lo1;
        c3 = lo0;
        k0 += kW0;
        k1 += kW1;
    }
    // (word, group) -> (group, word): 4x4 transposes within each 128-bit lane leave groups
    // {0, 4, 8, 12} in a, {1, 5, 9, 13} in b, {2, ...} in c, {3, ...} in d (lane k: group 4k + r);
    // then a 4x4 transpose of the 128-bit lanes puts groups 4k .. 4k + 3 in output register k.
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i a = _mm512_unpacklo_epi64(t0, t2), b = _mm512_unpackhi_epi64(t0, t2);
    const __m512i c = _mm512_unpacklo_epi64(t1, t3), d = _mm512_unpackhi_epi64(t1, t3);
    const __m512i ab_lo = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0));  // a0 a1 b0 b1
    const __m512i cd_lo = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0));  // c0 c1 d0 d1
    const __m512i ab_hi = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2));  // a2 a3 b2 b3
    const __m512i cd_hi = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2));  // c2 c3 d2 d3
    __m512i* out = reinterpret_cast<__m512i*>(words);
    _mm512_storeu_si512(out + 0, _mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(2, 0, 2, 0)));  // groups 0-3
    _mm512_storeu_si512(out + 1, _mm512_shuffle_i32x4(ab_lo, cd_lo, _MM_SHUFFLE(3, 1, 3, 1)));  // groups 4-7
    _mm512_storeu_si512(out + 2, _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(2, 0, 2, 0)));  // groups 8-11
    _mm512_storeu_si512(out + 3, _mm512_shuffle_i32x4(ab_hi, cd_hi, _MM_SHUFFLE(3, 1, 3, 1)));  // groups 12-15
}
#pragma GCC diagnostic pop

#endif

// How block_words() draws: one group at a time, eight or sixteen at once.
enum class PhiloxPath { Scalar, Avx2, Avx512 };

inline const char* to_string(PhiloxPath path) {
    switch (path) {
        case PhiloxPath::Scalar: return "scalar";
        case PhiloxPath::Avx2: return "AVX2";
        case PhiloxPath::Avx512: return "AVX-512";
    }
    return "?";
}

// The widest path this processor has.
inline PhiloxPath best_philox_path() {
#if defined(__x86_64__)
    static const PhiloxPath best = __builtin_cpu_supports("avx512f") ? PhiloxPath::Avx512
                                   : cpu_has_avx2()                  ? PhiloxPath::Avx2
                                                                     : PhiloxPath::Scalar;
    return best;
#else
    return PhiloxPath::Scalar;
#endif
}

// Elements per block_words() call.
constexpr std::size_t kPhiloxBlock = 64;

// The Philox words of elements 64·blk .. 64·blk + 63 (sixteen groups) in element order: the words
// dropout_keep() would draw one by one, on `path` (one this processor has: best_philox_path() or
// narrower).
inline void block_words(uint64_t seed, uint32_t stream, uint64_t step, std::size_t blk, PhiloxPath path,
                        uint32_t (&words)[kPhiloxBlock]) {
    const uint64_t first_group = 16 * static_cast<uint64_t>(blk);
#if defined(__x86_64__)
    if (path == PhiloxPath::Avx512) {
        philox_group16(seed, stream, step, first_group, words);
        return;
    }
    if (path == PhiloxPath::Avx2) {
        uint32_t half[32];
        for (int h = 0; h < 2; ++h) {
            philox_group8(seed, stream, step, first_group + 8 * h, half);
            for (int e = 0; e < 32; ++e) words[32 * h + e] = half[e];
        }
        return;
    }
#endif
    (void)path;
    for (int l = 0; l < 16; ++l) {
        const Philox4 w = philox_group(seed, stream, step, first_group + l);
        for (int j = 0; j < 4; ++j) words[4 * l + j] = w.v[j];
    }
}

}  // namespace cumnist::cpu
