// Philox4x32-10 (common/philox.h) on SIMD registers of 64-bit lanes, one counter per lane: 8 lanes per register
// with AVX-512, 4 with AVX2. A counter word sits in the low 32 bits of its lane. vpmuludq reads only those, so
// the lo of a product is the product itself and its hi one shift, and the high halves are never cleaned. The one
// Philox of the vectorised CPU draws: the in-kernel normals (GroupNormals, cpu/normals.h), the whole-move kernels'
// LanePhilox (cpu/gmm.h) and the MH uniforms (cpu/random.h). Without AVX2 those use the lane loops of
// philox_lanes (cpu/common.h).
#pragma once
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>

#include <cstdint>

#include "common/cpu_math.h"
#include "common/philox.h"

namespace fastsamp {
namespace cpu {

#if defined(__AVX512F__)
using PhiloxReg = __m512i;
constexpr int kPhiloxLanes = 8;
FASTSAMP_VINLINE PhiloxReg philox_set(uint64_t v) { return _mm512_set1_epi64(static_cast<int64_t>(v)); }
FASTSAMP_VINLINE PhiloxReg philox_key(uint32_t k) { return _mm512_set1_epi32(static_cast<int>(k)); }
FASTSAMP_VINLINE PhiloxReg philox_iota(uint64_t v) {  // v + l in lane l
  return _mm512_add_epi64(philox_set(v), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
}
FASTSAMP_VINLINE PhiloxReg philox_mul(PhiloxReg a, PhiloxReg b) { return _mm512_mul_epu32(a, b); }
FASTSAMP_VINLINE PhiloxReg philox_hi(PhiloxReg p) { return _mm512_srli_epi64(p, 32); }
FASTSAMP_VINLINE PhiloxReg philox_xor3(PhiloxReg a, PhiloxReg b, PhiloxReg c) {
  return _mm512_ternarylogic_epi64(a, b, c, 0x96);
}
FASTSAMP_VINLINE PhiloxReg philox_xor(PhiloxReg a, PhiloxReg b) { return _mm512_xor_si512(a, b); }
// Words 8h .. 8h + 7 of the 16 words w, one per 64-bit lane.
FASTSAMP_VINLINE PhiloxReg philox_widen(const __m512i& w, int h) {
  return _mm512_cvtepu32_epi64(h == 0 ? _mm512_castsi512_si256(w) : _mm512_extracti64x4_epi64(w, 1));
}
// The low words of a's lanes, then b's: 16 words.
FASTSAMP_VINLINE __m512i philox_words(PhiloxReg a, PhiloxReg b) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_epi32(a, even, b);
}
// The low words of a's lanes: 8 words.
FASTSAMP_VINLINE __m256i philox_words(PhiloxReg a) { return _mm512_cvtepi64_epi32(a); }
#else
using PhiloxReg = __m256i;
constexpr int kPhiloxLanes = 4;
FASTSAMP_VINLINE PhiloxReg philox_set(uint64_t v) { return _mm256_set1_epi64x(static_cast<int64_t>(v)); }
FASTSAMP_VINLINE PhiloxReg philox_key(uint32_t k) { return _mm256_set1_epi32(static_cast<int>(k)); }
FASTSAMP_VINLINE PhiloxReg philox_iota(uint64_t v) {  // v + l in lane l
  return _mm256_add_epi64(philox_set(v), _mm256_setr_epi64x(0, 1, 2, 3));
}
FASTSAMP_VINLINE PhiloxReg philox_mul(PhiloxReg a, PhiloxReg b) { return _mm256_mul_epu32(a, b); }
FASTSAMP_VINLINE PhiloxReg philox_hi(PhiloxReg p) { return _mm256_srli_epi64(p, 32); }
FASTSAMP_VINLINE PhiloxReg philox_xor3(PhiloxReg a, PhiloxReg b, PhiloxReg c) {
  return _mm256_xor_si256(_mm256_xor_si256(a, b), c);
}
FASTSAMP_VINLINE PhiloxReg philox_xor(PhiloxReg a, PhiloxReg b) { return _mm256_xor_si256(a, b); }
// Words 4h .. 4h + 3 of the 16 words w, one per 64-bit lane.
FASTSAMP_VINLINE PhiloxReg philox_widen(const __m512i& w, int h) {
  return _mm256_cvtepu32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(&w) + h));
}
// The low words of a's and b's lanes in-lane, a0 a1 b0 b1 | a2 a3 b2 b3 (one vshufps).
FASTSAMP_VINLINE __m256i philox_words_inlane(PhiloxReg a, PhiloxReg b) {
  return _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), 0x88));
}
// The low words of a's lanes, then b's: 8 words. philox_words_inlane, then the middle 64-bit pairs swapped (two
// lane-crossing vpermd and a vperm2i128 before: 14 micro-ops on Zen 1, 5 here).
FASTSAMP_VINLINE __m256i philox_words(PhiloxReg a, PhiloxReg b) {
  return _mm256_permute4x64_epi64(philox_words_inlane(a, b), 0xD8);
}
// The low words of a's lanes as exact doubles: the 2^52 exponent over them, minus 2^52 (no packing; the unsigned
// conversion's values).
FASTSAMP_VINLINE __m256d philox_words_f64(PhiloxReg a) {
  const __m256i bits = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi64x(0xFFFFFFFF)),
                                       _mm256_set1_epi64x(0x4330000000000000));
  return _mm256_sub_pd(_mm256_castsi256_pd(bits), _mm256_set1_pd(4503599627370496.0));
}
#endif

// The Philox state of H kPhiloxLanes counters: word k of counter h kPhiloxLanes + l in lane l of c[k][h].
template <int H>
struct PhiloxState {
  PhiloxReg c[4][H];

  // Counters (w0, lane0 + i, offset_lo, offset_hi), i < H kPhiloxLanes.
  FASTSAMP_VINLINE void set(uint32_t w0, uint64_t lane0, uint64_t offset) {
    for (int h = 0; h < H; ++h) {
      c[0][h] = philox_set(w0);
      c[1][h] = philox_iota(lane0 + static_cast<uint64_t>(kPhiloxLanes * h));
      c[2][h] = philox_set(static_cast<uint32_t>(offset));
      c[3][h] = philox_set(static_cast<uint32_t>(offset >> 32));
    }
  }

  // One round with the broadcast round keys k0, k1.
  FASTSAMP_VINLINE void round(PhiloxReg k0, PhiloxReg k1) {
    const PhiloxReg m0 = philox_set(kPhiloxM0), m1 = philox_set(kPhiloxM1);
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const PhiloxReg p0 = philox_mul(c[0][h], m0);
      const PhiloxReg p1 = philox_mul(c[2][h], m1);
      c[0][h] = philox_xor3(philox_hi(p1), c[1][h], k0);
      c[1][h] = p1;
      c[2][h] = philox_xor3(philox_hi(p0), c[3][h], k1);
      c[3][h] = p0;
    }
  }

  // Rounds r0 .. 9 with the round keys k0[r], k1[r], G registers at a time: their rounds all done before the next
  // G registers'. With AVX2's 16 registers the state of all four (16 words) spills every round; two at a time
  // stay in registers and still hide the multiplies' latency (1.1x faster on Zen 1).
  template <int G>
  FASTSAMP_VINLINE void rounds_from(int r0, const uint32_t* k0, const uint32_t* k1) {
    static_assert(H % G == 0, "G must divide the registers");
    if constexpr (G == H) {
      // in place (AVX-512's two registers): through the copies below GCC compiled AVX-512's normals differently
      for (int r = r0; r < 10; ++r) round(philox_key(k0[r]), philox_key(k1[r]));
    } else {
#pragma GCC unroll 2
      for (int g = 0; g < H; g += G) {
        PhiloxState<G> part;
        for (int h = 0; h < G; ++h)
          for (int k = 0; k < 4; ++k) part.c[k][h] = c[k][g + h];
        for (int r = r0; r < 10; ++r) part.round(philox_key(k0[r]), philox_key(k1[r]));
        for (int h = 0; h < G; ++h)
          for (int k = 0; k < 4; ++k) c[k][g + h] = part.c[k][h];
      }
    }
  }

  // The ten rounds under key (seed_lo, seed_hi), two registers at a time (rounds_from).
  FASTSAMP_VINLINE void rounds(uint64_t seed) {
    uint32_t k0[10], k1[10];
    philox_round_keys(seed, k0, k1);
    rounds_from<H < 2 ? H : 2>(0, k0, k1);
  }
};

// The broadcast round keys of seed: k0[r], k1[r] for round r.
struct PhiloxKeys {
  PhiloxReg k0[10], k1[10];

  explicit PhiloxKeys(uint64_t seed) {
    uint32_t a[10], b[10];
    philox_round_keys(seed, a, b);
    for (int r = 0; r < 10; ++r) {
      k0[r] = philox_key(a[r]);
      k1[r] = philox_key(b[r]);
    }
  }
};

}  // namespace cpu
}  // namespace fastsamp
#endif
