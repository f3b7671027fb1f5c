// Rows of a (B, D) array as SIMD lanes: RowLanes<T> loads W rows so that register d holds element d of each
// (row_columns: gathers, a contiguous load at D = 1, in-register transposes of whole blocks at some D), with the
// masked loads / stores and the arithmetic of one register. AVX-512 (F, BW, VL, DQ: 16 float / 8 double lanes)
// or AVX2 with FMA (8 float / 4 double); FASTSAMP_MH_ROW_LANES says whether either is built. score_mh_accept
// (cpu/mh.cpp) runs on them at a compile-time D.
#pragma once
#include <cstdint>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/common.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define FASTSAMP_MH_ROW_LANES 512
#elif defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define FASTSAMP_MH_ROW_LANES 256
#endif

#if FASTSAMP_MH_ROW_LANES
namespace fastsamp {
namespace cpu {

template <typename T>
struct RowLanes;

// What the float and double lanes share: `keep`.
struct RowLanesCommon {
  // v itself, opaque to the optimiser: a rounded product that must not fuse into the next add.
  template <typename V>
  static FASTSAMP_VINLINE V keep(V v) {
    asm("" : "+v"(v));
    return v;
  }
};

// The arithmetic members of RowLanes<T> on one register: intrinsics with prefix P (_mm512 / _mm256) and suffix
// ps (float) or pd (double).
#define FASTSAMP_ROW_LANE_ARITHMETIC(P, T, SFX)                                                          \
  static FASTSAMP_VINLINE V set1(T v) { return P##_set1_##SFX(v); }                                     \
  static FASTSAMP_VINLINE V add(V a, V b) { return P##_add_##SFX(a, b); }                               \
  static FASTSAMP_VINLINE V sub(V a, V b) { return P##_sub_##SFX(a, b); }                               \
  static FASTSAMP_VINLINE V mul(V a, V b) { return P##_mul_##SFX(a, b); }                               \
  static FASTSAMP_VINLINE V div(V a, V b) { return P##_div_##SFX(a, b); }                               \
  static FASTSAMP_VINLINE V fmadd(V a, V b, V c) { return P##_fmadd_##SFX(a, b, c); }                   \
  static FASTSAMP_VINLINE V fnmadd(V a, V b, V c) { return P##_fnmadd_##SFX(a, b, c); }

#if FASTSAMP_MH_ROW_LANES == 512
// The first n lanes of a block: one mask register (its bits are the lanes).
struct RowMask512 : RowLanesCommon {
  using Mask = __mmask16;
  static FASTSAMP_VINLINE Mask mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
  static FASTSAMP_VINLINE unsigned bits(Mask k) { return k; }
  // flags[l] = bit l of `set` for the lanes of k.
  static FASTSAMP_VINLINE void store_flags(Mask k, unsigned set, uint8_t* flags) {
    _mm_mask_storeu_epi8(flags, k, _mm_maskz_set1_epi8(static_cast<__mmask16>(set), 1));
  }
};

template <>
struct RowLanes<float> : RowMask512 {
  using V = __m512;
  static constexpr int W = 16;
  static FASTSAMP_VINLINE __m512i index(int D) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(Mask k, __m512i idx, const float* p) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, p, 4);
  }
  static FASTSAMP_VINLINE V load(Mask k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  static FASTSAMP_VINLINE void store(Mask k, float* p, V v) { _mm512_mask_storeu_ps(p, k, v); }
  static FASTSAMP_VINLINE unsigned lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  FASTSAMP_ROW_LANE_ARITHMETIC(_mm512, float, ps)
  static constexpr bool has_columns(int D) { return D == 8; }
  // c[d] = element d of the 16 rows p[0 .. 8), p[8 .. 16), ... (D = 8): [row r | row r + 8] in one
  // register, then the 8 x 8 transpose of both 256-bit halves at once (24 shuffles, not 8 gathers).
  template <int D>
  static FASTSAMP_VINLINE void columns(const float* p, V* c) {
    static_assert(D == 8, "whole-block transpose at D = 8");
    V z[8], a[8], t[8];
    for (int r = 0; r < 8; ++r)
      z[r] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p + 8 * r)), _mm256_loadu_ps(p + 64 + 8 * r), 1);
    for (int r = 0; r < 8; r += 2) {
      a[r] = _mm512_unpacklo_ps(z[r], z[r + 1]);
      a[r + 1] = _mm512_unpackhi_ps(z[r], z[r + 1]);
    }
    for (int h = 0; h < 8; h += 4) {
      t[h] = _mm512_shuffle_ps(a[h], a[h + 2], 0x44);
      t[h + 1] = _mm512_shuffle_ps(a[h], a[h + 2], 0xEE);
      t[h + 2] = _mm512_shuffle_ps(a[h + 1], a[h + 3], 0x44);
      t[h + 3] = _mm512_shuffle_ps(a[h + 1], a[h + 3], 0xEE);
    }
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    const __m512i hi = _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int d = 0; d < 4; ++d) {
      c[d] = _mm512_permutex2var_ps(t[d], lo, t[d + 4]);
      c[d + 4] = _mm512_permutex2var_ps(t[d], hi, t[d + 4]);
    }
  }
};

template <>
struct RowLanes<double> : RowMask512 {
  using V = __m512d;
  static constexpr int W = 8;
  static FASTSAMP_VINLINE __m256i index(int D) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(Mask k, __m256i idx, const double* p) {
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), static_cast<__mmask8>(k), idx, p, 8);
  }
  static FASTSAMP_VINLINE V load(Mask k, const double* p) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>(k), p); }
  static FASTSAMP_VINLINE void store(Mask k, double* p, V v) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>(k), v); }
  static FASTSAMP_VINLINE unsigned lt(V a, V b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
  FASTSAMP_ROW_LANE_ARITHMETIC(_mm512, double, pd)
  static constexpr bool has_columns(int) { return false; }
};
#else
// The first n lanes of a block: their bits, and a vector of all-ones lanes for the masked AVX2 loads,
// stores and gathers (AVX2 has no mask registers).
struct RowMask256 : RowLanesCommon {
  struct Mask {
    unsigned bits;
    __m256i lanes;
  };
  static FASTSAMP_VINLINE unsigned bits(Mask k) { return k.bits; }
  static FASTSAMP_VINLINE void store_flags(Mask k, unsigned set, uint8_t* flags) {
    for (unsigned l = 0; (k.bits >> l) & 1u; ++l) flags[l] = static_cast<uint8_t>((set >> l) & 1u);
  }
};

template <>
struct RowLanes<float> : RowMask256 {
  using V = __m256;
  static constexpr int W = 8;
  static FASTSAMP_VINLINE Mask mask(int n) {
    return {(1u << n) - 1u, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))};
  }
  static FASTSAMP_VINLINE __m256i index(int D) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(Mask k, __m256i idx, const float* p) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, idx, _mm256_castsi256_ps(k.lanes), 4);
  }
  static FASTSAMP_VINLINE V load(Mask k, const float* p) { return _mm256_maskload_ps(p, k.lanes); }
  static FASTSAMP_VINLINE void store(Mask k, float* p, V v) { _mm256_maskstore_ps(p, k.lanes, v); }
  static FASTSAMP_VINLINE unsigned lt(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_LT_OQ)));
  }
  FASTSAMP_ROW_LANE_ARITHMETIC(_mm256, float, ps)
  static constexpr bool has_columns(int D) { return D == 8; }
  // c[d] = element d of the 8 rows p[0 .. 8), p[8 .. 16), ... (D = 8): the 8 x 8 transpose (24 shuffles).
  template <int D>
  static FASTSAMP_VINLINE void columns(const float* p, V* c) {
    static_assert(D == 8, "whole-block transpose at D = 8");
    V r[8], a[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(p + 8 * i);
    for (int i = 0; i < 8; i += 2) {
      a[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);  // rows i, i + 1: elements 0 1 | 4 5, interleaved
      a[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // 2 3 | 6 7
    }
    for (int h = 0; h < 8; h += 4) {  // rows h .. h + 3: element q | q + 4 of each
      t[h] = _mm256_shuffle_ps(a[h], a[h + 2], 0x44);
      t[h + 1] = _mm256_shuffle_ps(a[h], a[h + 2], 0xEE);
      t[h + 2] = _mm256_shuffle_ps(a[h + 1], a[h + 3], 0x44);
      t[h + 3] = _mm256_shuffle_ps(a[h + 1], a[h + 3], 0xEE);
    }
    for (int d = 0; d < 4; ++d) {
      c[d] = _mm256_permute2f128_ps(t[d], t[d + 4], 0x20);
      c[d + 4] = _mm256_permute2f128_ps(t[d], t[d + 4], 0x31);
    }
  }
};

template <>
struct RowLanes<double> : RowMask256 {
  using V = __m256d;
  static constexpr int W = 4;
  static FASTSAMP_VINLINE Mask mask(int n) {
    return {(1u << n) - 1u, _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3))};
  }
  static FASTSAMP_VINLINE __m128i index(int D) {
    return _mm_mullo_epi32(_mm_setr_epi32(0, 1, 2, 3), _mm_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(Mask k, __m128i idx, const double* p) {
    return _mm256_mask_i32gather_pd(_mm256_setzero_pd(), p, idx, _mm256_castsi256_pd(k.lanes), 8);
  }
  static FASTSAMP_VINLINE V load(Mask k, const double* p) { return _mm256_maskload_pd(p, k.lanes); }
  static FASTSAMP_VINLINE void store(Mask k, double* p, V v) { _mm256_maskstore_pd(p, k.lanes, v); }
  static FASTSAMP_VINLINE unsigned lt(V a, V b) {
    return static_cast<unsigned>(_mm256_movemask_pd(_mm256_cmp_pd(a, b, _CMP_LT_OQ)));
  }
  FASTSAMP_ROW_LANE_ARITHMETIC(_mm256, double, pd)
  static constexpr bool has_columns(int D) { return D == 4 || D == 8; }
  // c[d] = element d of the 4 rows p[0 .. D), p[D .. 2D), ... (D = 4, 8): 4 x 4 transposes (8 shuffles each).
  template <int D>
  static FASTSAMP_VINLINE void columns(const double* p, V* c) {
    static_assert(D == 4 || D == 8, "whole-block transposes at D = 4, 8");
    for (int q = 0; q < D; q += 4) {
      const V r0 = _mm256_loadu_pd(p + q), r1 = _mm256_loadu_pd(p + D + q);
      const V r2 = _mm256_loadu_pd(p + 2 * D + q), r3 = _mm256_loadu_pd(p + 3 * D + q);
      const V t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);  // 0 | 2 and 1 | 3 of rows 0, 1
      const V t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
      c[q] = _mm256_permute2f128_pd(t0, t2, 0x20);
      c[q + 1] = _mm256_permute2f128_pd(t1, t3, 0x20);
      c[q + 2] = _mm256_permute2f128_pd(t0, t2, 0x31);
      c[q + 3] = _mm256_permute2f128_pd(t1, t3, 0x31);
    }
  }
};
#endif
#undef FASTSAMP_ROW_LANE_ARITHMETIC

// c[d] = element d of the n rows of D = DC elements from p (lanes past n: 0), for each d < DC.
template <typename T, int DC, typename L = RowLanes<T>, typename Idx>
FASTSAMP_VINLINE void row_columns(int n, typename L::Mask k, Idx idx, const T* p, typename L::V* c) {
  if constexpr (DC == 1) {
    c[0] = L::load(k, p);
    return;
  } else if constexpr (L::has_columns(DC)) {
    if (n == L::W) {
      L::template columns<DC>(p, c);
      return;
    }
  }
  for (int d = 0; d < DC; ++d) c[d] = L::gather(k, idx, p + d);
}

}  // namespace cpu
}  // namespace fastsamp
#endif
