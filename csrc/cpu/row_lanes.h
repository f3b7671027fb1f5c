// Rows of a (B, D) array as SIMD lanes: RowLanes<T> loads W rows so that register d holds element d of each
// (row_columns: gathers, a contiguous load at D = 1, in-register transposes of whole blocks at some D), with the
// masked loads / stores and the arithmetic of one register. AVX-512 (F, BW, VL, DQ: 16 float / 8 double lanes)
// or AVX2 with FMA (8 float / 4 double); FASTSAMP_MH_ROW_LANES says whether either is built. score_mh_accept
// (cpu/mh.cpp) runs on them at a compile-time D; the mixture score (cpu/gmm.h) loads and stores its blocks of rows
// through row_columns and RowLanes::rows.
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
  // out[i] = a[i] in the rows of the block whose bit of `take` is set, else b[i], for the W rows of D elements
  // at a, b, out (contiguous): per vector of 16 elements a mask register of its rows' bits, one masked blend.
  template <int D>
  static FASTSAMP_VINLINE void select_block(unsigned take, const float* a, const float* b, float* out) {
    const __m512i t = _mm512_set1_epi32(static_cast<int>(take)), one = _mm512_set1_epi32(1);
    for (int c = 0; c < D; ++c) {
      alignas(64) int32_t row[16];
      for (int e = 0; e < 16; ++e) row[e] = (16 * c + e) / D;
      const __mmask16 m = _mm512_test_epi32_mask(_mm512_srlv_epi32(t, _mm512_load_si512(row)), one);
      _mm512_storeu_ps(out + 16 * c, _mm512_mask_blend_ps(m, _mm512_loadu_ps(b + 16 * c), _mm512_loadu_ps(a + 16 * c)));
    }
  }
  static constexpr bool has_columns(int D) { return D == 2 || D == 4 || D == 8 || D == 16; }
  // c[d] = element d of the 16 rows p[0 .. D), p[D .. 2D), ... (D = 2, 4, 8, 16), no gathers. D = 2: one
  // two-source permute per column. D = 4: per 8 rows [element d | element d + 1] by two-source permutes, then 128-bit
  // block shuffles join the blocks' two halves. D = 8, 16: per 8 elements e.. e + 7 [row r | row r + 8] per register,
  // then transpose8.
  template <int D>
  static FASTSAMP_VINLINE void columns(const float* p, V* c) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D % 8 == 0) {
      for (int e = 0; e < D; e += 8) {
        V z[8];
        for (int r = 0; r < 8; ++r)
          z[r] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(p + D * r + e)),
                                    _mm256_loadu_ps(p + D * (r + 8) + e), 1);
        transpose8(z, c + e);
      }
    } else {
      V z[D];
      for (int j = 0; j < D; ++j) z[j] = _mm512_loadu_ps(p + 16 * j);
      if constexpr (D == 2) {
        c[0] = _mm512_permutex2var_ps(z[0], _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), z[1]);
        c[1] = _mm512_permutex2var_ps(z[0], _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), z[1]);
      } else {
        const __m512i e01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        const __m512i e23 = _mm512_add_epi32(e01, _mm512_set1_epi32(2));
        const V a0 = _mm512_permutex2var_ps(z[0], e01, z[1]), a1 = _mm512_permutex2var_ps(z[0], e23, z[1]);  // rows 0-7
        const V b0 = _mm512_permutex2var_ps(z[2], e01, z[3]), b1 = _mm512_permutex2var_ps(z[2], e23, z[3]);  // rows 8-15
        c[0] = _mm512_shuffle_f32x4(a0, b0, 0x44);
        c[1] = _mm512_shuffle_f32x4(a0, b0, 0xEE);
        c[2] = _mm512_shuffle_f32x4(a1, b1, 0x44);
        c[3] = _mm512_shuffle_f32x4(a1, b1, 0xEE);
      }
    }
  }
  // The inverse of columns: the 16 rows p[0 .. D), p[D .. 2D), ... from c[d] = element d of each row.
  template <int D>
  static FASTSAMP_VINLINE void rows(const V* c, float* p) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D % 8 == 0) {
      for (int e = 0; e < D; e += 8) {
        V z[8];
        transpose8(c + e, z);
        for (int r = 0; r < 8; ++r) {
          _mm256_storeu_ps(p + D * r + e, _mm512_castps512_ps256(z[r]));
          _mm256_storeu_ps(p + D * (r + 8) + e, _mm512_extractf32x8_ps(z[r], 1));
        }
      }
    } else if constexpr (D == 2) {
      _mm512_storeu_ps(p, _mm512_permutex2var_ps(
                              c[0], _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), c[1]));
      _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(c[0], _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                                                              13, 29, 14, 30, 15, 31), c[1]));
    } else {
      // a: rows 0-7, b: rows 8-15, as [element 0 | element 1] (a0, b0) and [element 2 | element 3] (a1, b1)
      const V a0 = _mm512_shuffle_f32x4(c[0], c[1], 0x44), b0 = _mm512_shuffle_f32x4(c[0], c[1], 0xEE);
      const V a1 = _mm512_shuffle_f32x4(c[2], c[3], 0x44), b1 = _mm512_shuffle_f32x4(c[2], c[3], 0xEE);
      const __m512i r03 = _mm512_setr_epi32(0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27);
      const __m512i r47 = _mm512_add_epi32(r03, _mm512_set1_epi32(4));
      _mm512_storeu_ps(p, _mm512_permutex2var_ps(a0, r03, a1));
      _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(a0, r47, a1));
      _mm512_storeu_ps(p + 32, _mm512_permutex2var_ps(b0, r03, b1));
      _mm512_storeu_ps(p + 48, _mm512_permutex2var_ps(b0, r47, b1));
    }
  }
  // out[i] half h = element i of in[0 .. 8) half h: the 8 x 8 transpose of both 256-bit halves at once (24
  // shuffles; its own inverse).
  static FASTSAMP_VINLINE void transpose8(const V* in, V* out) {
    V a[8], t[8];
    for (int r = 0; r < 8; r += 2) {
      a[r] = _mm512_unpacklo_ps(in[r], in[r + 1]);
      a[r + 1] = _mm512_unpackhi_ps(in[r], in[r + 1]);
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
      out[d] = _mm512_permutex2var_ps(t[d], lo, t[d + 4]);
      out[d + 4] = _mm512_permutex2var_ps(t[d], hi, t[d + 4]);
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
  // As RowLanes<float>::select_block, 8 doubles per vector.
  template <int D>
  static FASTSAMP_VINLINE void select_block(unsigned take, const double* a, const double* b, double* out) {
    const __m512i t = _mm512_set1_epi64(take), one = _mm512_set1_epi64(1);
    for (int c = 0; c < D; ++c) {
      alignas(64) int64_t row[8];
      for (int e = 0; e < 8; ++e) row[e] = (8 * c + e) / D;
      const __mmask8 m = _mm512_test_epi64_mask(_mm512_srlv_epi64(t, _mm512_load_si512(row)), one);
      _mm512_storeu_pd(out + 8 * c, _mm512_mask_blend_pd(m, _mm512_loadu_pd(b + 8 * c), _mm512_loadu_pd(a + 8 * c)));
    }
  }
  static constexpr bool has_columns(int D) { return D == 2 || D == 4 || D == 8 || D == 16; }
  // c[d] = element d of the 8 rows p[0 .. D), p[D .. 2D), ... (D = 2, 4, 8, 16), no gathers (as RowLanes<float>'s:
  // D = 8, 16 an 8 x 8 transpose per 8 elements).
  template <int D>
  static FASTSAMP_VINLINE void columns(const double* p, V* c) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D % 8 == 0) {
      for (int e = 0; e < D; e += 8) {
        V z[8];
        for (int r = 0; r < 8; ++r) z[r] = _mm512_loadu_pd(p + D * r + e);
        transpose8(z, c + e);
      }
    } else {
      V z[D];
      for (int j = 0; j < D; ++j) z[j] = _mm512_loadu_pd(p + 8 * j);
      if constexpr (D == 2) {
        c[0] = _mm512_permutex2var_pd(z[0], _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), z[1]);
        c[1] = _mm512_permutex2var_pd(z[0], _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), z[1]);
      } else {
        const __m512i e01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13);
        const __m512i e23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
        const V a0 = _mm512_permutex2var_pd(z[0], e01, z[1]), a1 = _mm512_permutex2var_pd(z[0], e23, z[1]);  // rows 0-3
        const V b0 = _mm512_permutex2var_pd(z[2], e01, z[3]), b1 = _mm512_permutex2var_pd(z[2], e23, z[3]);  // rows 4-7
        c[0] = _mm512_shuffle_f64x2(a0, b0, 0x44);
        c[1] = _mm512_shuffle_f64x2(a0, b0, 0xEE);
        c[2] = _mm512_shuffle_f64x2(a1, b1, 0x44);
        c[3] = _mm512_shuffle_f64x2(a1, b1, 0xEE);
      }
    }
  }
  // The inverse of columns.
  template <int D>
  static FASTSAMP_VINLINE void rows(const V* c, double* p) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D % 8 == 0) {
      for (int e = 0; e < D; e += 8) {
        V z[8];
        transpose8(c + e, z);
        for (int r = 0; r < 8; ++r) _mm512_storeu_pd(p + D * r + e, z[r]);
      }
    } else if constexpr (D == 2) {
      _mm512_storeu_pd(p, _mm512_permutex2var_pd(c[0], _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), c[1]));
      _mm512_storeu_pd(p + 8, _mm512_permutex2var_pd(c[0], _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15), c[1]));
    } else if constexpr (D == 4) {
      // a: rows 0-3, b: rows 4-7, as [element 0 | element 1] (a0, b0) and [element 2 | element 3] (a1, b1)
      const V a0 = _mm512_shuffle_f64x2(c[0], c[1], 0x44), b0 = _mm512_shuffle_f64x2(c[0], c[1], 0xEE);
      const V a1 = _mm512_shuffle_f64x2(c[2], c[3], 0x44), b1 = _mm512_shuffle_f64x2(c[2], c[3], 0xEE);
      const __m512i r01 = _mm512_setr_epi64(0, 4, 8, 12, 1, 5, 9, 13);
      const __m512i r23 = _mm512_setr_epi64(2, 6, 10, 14, 3, 7, 11, 15);
      _mm512_storeu_pd(p, _mm512_permutex2var_pd(a0, r01, a1));
      _mm512_storeu_pd(p + 8, _mm512_permutex2var_pd(a0, r23, a1));
      _mm512_storeu_pd(p + 16, _mm512_permutex2var_pd(b0, r01, b1));
      _mm512_storeu_pd(p + 24, _mm512_permutex2var_pd(b0, r23, b1));
    }
  }
  // out[i] = element i of in[0 .. 8): the 8 x 8 transpose (24 shuffles; its own inverse).
  static FASTSAMP_VINLINE void transpose8(const V* in, V* out) {
    V t[8], u[4], v[4];
    for (int r = 0; r < 8; r += 2) {  // rows r, r + 1: even elements, odd elements
      t[r] = _mm512_unpacklo_pd(in[r], in[r + 1]);
      t[r + 1] = _mm512_unpackhi_pd(in[r], in[r + 1]);
    }
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int q = 0; q < 2; ++q) {  // u: rows 0-3, v: rows 4-7; [element e | element e + 4], e = 0, 2, 1, 3
      u[2 * q] = _mm512_permutex2var_pd(t[q], lo, t[q + 2]);
      u[2 * q + 1] = _mm512_permutex2var_pd(t[q], hi, t[q + 2]);
      v[2 * q] = _mm512_permutex2var_pd(t[q + 4], lo, t[q + 6]);
      v[2 * q + 1] = _mm512_permutex2var_pd(t[q + 4], hi, t[q + 6]);
    }
    constexpr int element[4] = {0, 2, 1, 3};
    for (int i = 0; i < 4; ++i) {
      out[element[i]] = _mm512_shuffle_f64x2(u[i], v[i], 0x44);
      out[element[i] + 4] = _mm512_shuffle_f64x2(u[i], v[i], 0xEE);
    }
  }
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
  // out[i] = a[i] in the rows of the block whose bit of `take` is set, else b[i], for the W rows of D elements
  // at a, b, out (contiguous): per vector of 8 elements the rows' bits as its sign bits, one blend; no branch, and
  // the loads do not wait for `take`.
  template <int D>
  static FASTSAMP_VINLINE void select_block(unsigned take, const float* a, const float* b, float* out) {
    const __m256i t = _mm256_set1_epi32(static_cast<int>(take));
    for (int c = 0; c < D; ++c) {
      const __m256i row = _mm256_setr_epi32((8 * c) / D, (8 * c + 1) / D, (8 * c + 2) / D, (8 * c + 3) / D,
                                            (8 * c + 4) / D, (8 * c + 5) / D, (8 * c + 6) / D, (8 * c + 7) / D);
      const __m256 m = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srlv_epi32(t, row), 31));
      _mm256_storeu_ps(out + 8 * c, _mm256_blendv_ps(_mm256_loadu_ps(b + 8 * c), _mm256_loadu_ps(a + 8 * c), m));
    }
  }
  static constexpr bool has_columns(int D) { return D == 2 || D == 4 || D == 8 || D == 16; }
  // [4 floats at a | 4 floats at b]: the lane-crossing step of a transpose done by the loads (vinsertf128 from
  // memory, not vperm2f128: 8 micro-ops, one per 3 cycles, on Zen 1).
  static FASTSAMP_VINLINE V halves(const float* a, const float* b) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(a)), _mm_loadu_ps(b), 1);
  }
  // c[d] = element d of the 8 rows p[0 .. D), p[D .. 2D), ... (D = 2, 4, 8, 16): [row r | row r + 4] per register
  // (D = 2: [rows 0, 1 | rows 4, 5] and [rows 2, 3 | rows 6, 7]), then in-lane shuffles (D = 4, 8, 16: a 4 x 4
  // transpose per 4 elements).
  template <int D>
  static FASTSAMP_VINLINE void columns(const float* p, V* c) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D == 2) {
      const V a = halves(p, p + 8), b = halves(p + 4, p + 12);
      c[0] = _mm256_shuffle_ps(a, b, 0x88);
      c[1] = _mm256_shuffle_ps(a, b, 0xDD);
    } else {
      for (int e = 0; e < D; e += 4) {
        V r[4];
        for (int i = 0; i < 4; ++i) r[i] = halves(p + D * i + e, p + D * (i + 4) + e);
        const V a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);  // elements 0 1, 2 3
        const V a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
        c[e] = _mm256_shuffle_ps(a0, a2, 0x44);
        c[e + 1] = _mm256_shuffle_ps(a0, a2, 0xEE);
        c[e + 2] = _mm256_shuffle_ps(a1, a3, 0x44);
        c[e + 3] = _mm256_shuffle_ps(a1, a3, 0xEE);
      }
    }
  }
  // The inverse of columns: the 8 rows p[0 .. D), p[D .. 2D), ... from c[d] = element d of each row, by the same
  // in-lane shuffles and 128-bit stores of each register's halves (no vperm2f128).
  template <int D>
  static FASTSAMP_VINLINE void rows(const V* c, float* p) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    if constexpr (D == 2) {
      store_halves(p, p + 8, _mm256_unpacklo_ps(c[0], c[1]));
      store_halves(p + 4, p + 12, _mm256_unpackhi_ps(c[0], c[1]));
    } else {
      for (int e = 0; e < D; e += 4) {
        const V a0 = _mm256_unpacklo_ps(c[e], c[e + 1]), a1 = _mm256_unpackhi_ps(c[e], c[e + 1]);
        const V a2 = _mm256_unpacklo_ps(c[e + 2], c[e + 3]), a3 = _mm256_unpackhi_ps(c[e + 2], c[e + 3]);
        const V r[4] = {_mm256_shuffle_ps(a0, a2, 0x44), _mm256_shuffle_ps(a0, a2, 0xEE),
                        _mm256_shuffle_ps(a1, a3, 0x44), _mm256_shuffle_ps(a1, a3, 0xEE)};
        for (int i = 0; i < 4; ++i) store_halves(p + D * i + e, p + D * (i + 4) + e, r[i]);
      }
    }
  }
  // The low 4 floats of v to a, the high 4 to b.
  static FASTSAMP_VINLINE void store_halves(float* a, float* b, V v) {
    _mm_storeu_ps(a, _mm256_castps256_ps128(v));
    _mm_storeu_ps(b, _mm256_extractf128_ps(v, 1));
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
  // As RowLanes<float>::select_block, 4 doubles per vector.
  template <int D>
  static FASTSAMP_VINLINE void select_block(unsigned take, const double* a, const double* b, double* out) {
    const __m256i t = _mm256_set1_epi64x(take);
    for (int c = 0; c < D; ++c) {
      const __m256i row = _mm256_setr_epi64x((4 * c) / D, (4 * c + 1) / D, (4 * c + 2) / D, (4 * c + 3) / D);
      const __m256d m = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_srlv_epi64(t, row), 63));
      _mm256_storeu_pd(out + 4 * c, _mm256_blendv_pd(_mm256_loadu_pd(b + 4 * c), _mm256_loadu_pd(a + 4 * c), m));
    }
  }
  static constexpr bool has_columns(int D) { return D == 2 || D == 4 || D == 8 || D == 16; }
  // [2 doubles at a | 2 doubles at b] (as RowLanes<float>::halves).
  static FASTSAMP_VINLINE V halves(const double* a, const double* b) {
    return _mm256_insertf128_pd(_mm256_castpd128_pd256(_mm_loadu_pd(a)), _mm_loadu_pd(b), 1);
  }
  // c[d] = element d of the 4 rows p[0 .. D), p[D .. 2D), ... (D = 2, 4, 8, 16): per pair of elements [row 0 | row 2]
  // and [row 1 | row 3], then one unpack each.
  template <int D>
  static FASTSAMP_VINLINE void columns(const double* p, V* c) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    for (int e = 0; e < D; e += 2) {
      const V u = halves(p + e, p + 2 * D + e), v = halves(p + D + e, p + 3 * D + e);
      c[e] = _mm256_unpacklo_pd(u, v);
      c[e + 1] = _mm256_unpackhi_pd(u, v);
    }
  }
  // The inverse of columns (as RowLanes<float>::rows).
  template <int D>
  static FASTSAMP_VINLINE void rows(const V* c, double* p) {
    static_assert(has_columns(D), "whole-block transposes at D = 2, 4, 8, 16");
    for (int e = 0; e < D; e += 2) {
      store_halves(p + e, p + 2 * D + e, _mm256_unpacklo_pd(c[e], c[e + 1]));
      store_halves(p + D + e, p + 3 * D + e, _mm256_unpackhi_pd(c[e], c[e + 1]));
    }
  }
  // The low 2 doubles of v to a, the high 2 to b.
  static FASTSAMP_VINLINE void store_halves(double* a, double* b, V v) {
    _mm_storeu_pd(a, _mm256_castpd256_pd128(v));
    _mm_storeu_pd(b, _mm256_extractf128_pd(v, 1));
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
