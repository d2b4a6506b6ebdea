// The CPU backend's dropout masks, drawn in blocks of 32 elements (eight Philox groups): with AVX2,
// the eight groups at once in vector registers (one philox_group() call per group leaves the vector
// units idle, and drawing masks was most of the epilogues' time); without it, one philox_group() per
// group. Both give philox_group()'s words bit for bit (tests/test_philox.cpp).
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

#endif

// Whether block_words() can take the AVX2 path on this processor.
inline bool use_avx2() {
#if defined(__x86_64__)
    return cpu_has_avx2();
#else
    return false;
#endif
}

// The Philox words of elements 32·blk .. 32·blk + 31 (eight groups) in element order: the words
// dropout_keep() would draw one by one. `avx2` (from use_avx2()) picks the vector path.
inline void block_words(uint64_t seed, uint32_t stream, uint64_t step, std::size_t blk, bool avx2,
                        uint32_t (&words)[32]) {
    const uint64_t first_group = 8 * static_cast<uint64_t>(blk);
#if defined(__x86_64__)
    if (avx2) {
        philox_group8(seed, stream, step, first_group, words);
        return;
    }
#endif
    (void)avx2;
    for (int l = 0; l < 8; ++l) {
        const Philox4 w = philox_group(seed, stream, step, first_group + l);
        for (int j = 0; j < 4; ++j) words[4 * l + j] = w.v[j];
    }
}

}  // namespace cumnist::cpu
