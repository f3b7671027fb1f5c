// The MH uniforms of docs/backend-contract.md on the CPU: u of chain g in draw (seed, offset) is
// uniform_open(word 0 of philox((0xFFFFFFFF, g, offset_lo, offset_hi), seed)), computed for 16
// chains at a time across SIMD lanes (uniform_words: AVX-512, AVX2, lane loops). Used by ops.uniform
// (random.cpp) and by the accept kernels that draw their uniform in-kernel (mh.cpp, hmc.cpp).
#pragma once
#include <algorithm>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/common.h"

namespace fastsamp {
namespace cpu {

constexpr int kUniformBlock = 16;

#if defined(__AVX512F__)
// Word 0 of philox((0xFFFFFFFF, chain0 + l, offset_lo, offset_hi), seed) for l < kUniformBlock into w:
// the Philox of GroupNormals (cpu/normals.h), two sets of 8 lanes, one counter per 64-bit lane
// (vpmuludq reads the low 32 bits of each lane, so the high halves are never cleaned; the words
// are the low halves at the end). About 4x the lane loop of philox_lanes, whose 64-bit products
// GCC does not map onto vpmuludq.
FASTSAMP_VINLINE void uniform_words(uint64_t seed, uint64_t offset, uint64_t chain0, uint32_t* __restrict w) {
  const __m512i m0 = _mm512_set1_epi64(0xD2511F53u), m1 = _mm512_set1_epi64(0xCD9E8D57u);
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  __m512i c0[2], c1[2], c2[2], c3[2];
  for (int h = 0; h < 2; ++h) {
    c0[h] = _mm512_set1_epi64(0xFFFFFFFFu);
    c1[h] = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(chain0 + 8u * h)), lane);
    c2[h] = _mm512_set1_epi64(static_cast<uint32_t>(offset));
    c3[h] = _mm512_set1_epi64(static_cast<uint32_t>(offset >> 32));
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i kk0 = _mm512_set1_epi32(static_cast<int>(k0)), kk1 = _mm512_set1_epi32(static_cast<int>(k1));
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i p0 = _mm512_mul_epu32(c0[h], m0);
      const __m512i p1 = _mm512_mul_epu32(c2[h], m1);
      c0[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[h], kk0, 0x96);
      c1[h] = p1;
      c2[h] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[h], kk1, 0x96);
      c3[h] = p0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  _mm512_storeu_si512(w, _mm512_permutex2var_epi32(c0[0], even, c0[1]));
}
#elif defined(__AVX2__)
// The same words on AVX2: four sets of 4 lanes, one counter per 64-bit lane (vpmuludq as above), as the AVX2
// Philox of GroupNormals. About 4x the lane loop on a Zen 3.
FASTSAMP_VINLINE void uniform_words(uint64_t seed, uint64_t offset, uint64_t chain0, uint32_t* __restrict w) {
  const __m256i m0 = _mm256_set1_epi64x(0xD2511F53u), m1 = _mm256_set1_epi64x(0xCD9E8D57u);
  const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
  __m256i c0[4], c1[4], c2[4], c3[4];
  for (int h = 0; h < 4; ++h) {
    c0[h] = _mm256_set1_epi64x(0xFFFFFFFFu);
    c1[h] = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(chain0 + 4u * h)), lane);
    c2[h] = _mm256_set1_epi64x(static_cast<uint32_t>(offset));
    c3[h] = _mm256_set1_epi64x(static_cast<uint32_t>(offset >> 32));
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i kk0 = _mm256_set1_epi32(static_cast<int>(k0)), kk1 = _mm256_set1_epi32(static_cast<int>(k1));
#pragma GCC unroll 4
    for (int h = 0; h < 4; ++h) {
      const __m256i p0 = _mm256_mul_epu32(c0[h], m0);
      const __m256i p1 = _mm256_mul_epu32(c2[h], m1);
      c0[h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[h]), kk0);
      c1[h] = p1;
      c2[h] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[h]), kk1);
      c3[h] = p0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int h = 0; h < 4; ++h)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(w + 4 * h),
                     _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c0[h], even)));
}
#else
FASTSAMP_VINLINE void uniform_words(uint64_t seed, uint64_t offset, uint64_t chain0, uint32_t* __restrict w) {
  constexpr int W = kUniformBlock;
  alignas(64) uint32_t c1[W], c2[W], c3[W];
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    w[l] = 0xFFFFFFFFu;
    c1[l] = static_cast<uint32_t>(chain0 + static_cast<uint64_t>(l));
    c2[l] = static_cast<uint32_t>(offset);
    c3[l] = static_cast<uint32_t>(offset >> 32);
  }
  philox_lanes<W>(w, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}
#endif

// u[l] = MH uniform of chain chain0 + l in draw (seed, offset), l < n <= kUniformBlock.
template <typename T>
FASTSAMP_VINLINE void uniform_block(uint64_t seed, uint64_t offset, uint64_t chain0, int n, T* __restrict u) {
  alignas(64) uint32_t w[kUniformBlock];
  uniform_words(seed, offset, chain0, w);
  for (int l = 0; l < n; ++l) u[l] = uniform_open<T>(w[l]);
}

// The uniforms of an MH accept kernel: the given u (B,) when u is not null, else the draw
// (seed, offset) of chains chain0 + b (the same bits as ops.uniform). The kernels test
// log u < log alpha, so what they take is log u, computed 16 rows at a time across SIMD lanes (vm::log;
// a scalar std::log per row was a quarter of energy_mh_accept's time at B = 2048, D = 8).
template <typename T>
struct MhUniforms {
  const T* u;
  uint64_t seed, offset, chain0;

  // g(c, n, lu) for the blocks of rows c .. c + n - 1 (n <= kRows) of b0 .. b1 - 1, in order, with
  // lu[l] = log u_{c + l} (64-byte aligned): the Philox blocks of the kRows rows, then one vectorised log.
  static constexpr int kRows = 16 * kUniformBlock;
  template <typename G>
  FASTSAMP_VINLINE void blocks(int64_t b0, int64_t b1, G&& g) const {
    alignas(64) T lu[kRows];
    for (int64_t c = b0; c < b1; c += kRows) {
      const int n = static_cast<int>(std::min<int64_t>(kRows, b1 - c));
      if (u) {
        for (int l = 0; l < n; ++l) lu[l] = u[c + l];
      } else {
        for (int k = 0; k < n; k += kUniformBlock)
          uniform_block<T>(seed, offset, chain0 + static_cast<uint64_t>(c + k), kUniformBlock, lu + k);
      }
      const int nv = (n + kUniformBlock - 1) / kUniformBlock * kUniformBlock;
      for (int l = n; l < nv; ++l) lu[l] = T(1);
#pragma omp simd
      for (int l = 0; l < nv; ++l) lu[l] = vm::log<T>(lu[l]);
      g(c, n, static_cast<const T*>(lu));
    }
  }

  // f(b, log u_b) for the rows b0 .. b1 - 1, in order (`blocks`, then f over each block's rows).
  template <typename F>
  FASTSAMP_VINLINE void rows(int64_t b0, int64_t b1, F&& f) const {
    blocks(b0, b1, [&](int64_t c, int n, const T* lu) __attribute__((always_inline)) {
      for (int l = 0; l < n; ++l) f(c + l, lu[l]);
    });
  }
};

}  // namespace cpu
}  // namespace fastsamp
