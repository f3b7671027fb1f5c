// MALA proposals and their MH tests: mala_propose (op 3), line_points (op 4), score_mh_accept
// (op 5, the trapezoidal line integral of the score) and energy_mh_accept (the exact log-density
// difference), streaming passes over rows (cpu/stream.h); the accepts read u or draw it (cpu/random.h).
// score_mh_accept at a compile-time D on AVX-512 takes rows as SIMD lanes (score_mh_accept_lanes).
// See docs/backend-contract.md.
#include <algorithm>
#include <cmath>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/ops.h"
#include "cpu/random.h"
#include "cpu/stream.h"

namespace fastsamp {
namespace cpu {
namespace {

// x' = x + eps s + sqrt(2 eps) xi, row by row (eps per chain).
template <typename T, int DC>
void mala_propose_impl(const T* __restrict x, const T* __restrict score, const T* __restrict step,
                       const T* noise, int64_t B, int Drt, uint64_t seed, uint64_t offset, uint64_t chain0,
                       T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  const T* in[2] = {x, score};
  rows_with_noise<T>(noise, B, D, seed, offset, chain0, in, 2, [&](int64_t b, const T* __restrict xi, int stride) {
    const T e = step[b];
    const T q = std::sqrt(T(2) * e);
    const T* __restrict xr = x + b * D;
    const T* __restrict sr = score + b * D;
    T* __restrict o = out + b * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] = xr[d] + e * sr[d] + q * xi[d * stride];
  });
}

// The interior trapezoid points x + (i/n)(x' - x), i = 1 .. n-1, as (n-1, B, D).
template <typename T>
void line_points_impl(const T* __restrict x, const T* __restrict xp, int64_t B, int64_t D, int64_t n,
                      T* __restrict out) {
  const int64_t N = B * D;
  const T tn = static_cast<T>(n);
  parallel_for(stream_threads(N * (n - 1)), N, [&](int64_t e0, int64_t e1) {
    for (int64_t i = 1; i < n; ++i) {
      const T t = static_cast<T>(i) / tn;
      T* __restrict o = out + (i - 1) * N;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) o[e] = x[e] + t * (xp[e] - x[e]);
    }
  });
}

// log alpha = (1/n)[1/2 s.d + sum_i s_i.d + 1/2 s'.d] + (|d - eps s|^2 - |d + eps s'|^2) / (4 eps), d = x' - x.
// One row at a time: the form kept for a runtime D (DC == 0) and for builds without AVX-512.
template <typename T, int DC>
void score_mh_accept_rows(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                          const T* __restrict sp, const T* __restrict step, const MhUniforms<T> un,
                          const T* __restrict interior, int64_t m, int64_t B, int Drt, T* __restrict x_new,
                          T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
  const int D = DC > 0 ? DC : Drt;
  const int64_t N = B * D;
  const T tn = static_cast<T>(m + 1);
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    un.rows(b_begin, b_end, [&](int64_t b, T log_u) __attribute__((always_inline)) {
      const T e = step[b];
      const T* __restrict xr = x + b * D;
      const T* __restrict xpr = xp + b * D;
      const T* __restrict sr = s + b * D;
      const T* __restrict spr = sp + b * D;
      T sd = 0, spd = 0, ff = 0, bb = 0;
#pragma omp simd reduction(+ : sd, spd, ff, bb)
      for (int d = 0; d < D; ++d) {
        const T dd = xpr[d] - xr[d];
        const T fwd = dd - e * sr[d];
        const T bwd = dd + e * spr[d];
        sd += sr[d] * dd;
        spd += spr[d] * dd;
        ff += fwd * fwd;
        bb += bwd * bwd;
      }
      T total = T(0.5) * (sd + spd);
      if (interior && m > 0) {
        T si = 0;
        for (int64_t i = 0; i < m; ++i) {
          const T* __restrict ir = interior + i * N + b * D;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int d = 0; d < D; ++d) acc += ir[d] * (xpr[d] - xr[d]);
          si += acc;
        }
        total = total + si;
      }
      accept_row<T>(b, total / tn + (ff - bb) / (T(4) * e), log_u, xpr, xr, spr, sr, D, x_new + b * D,
                    s_new + b * D, accepted, log_alpha);
    });
  });
}

// The row lanes need AVX-512 F, BW, VL and DQ (_mm512_insertf32x8 in the float32 transpose).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define FASTSAMP_MH_ROW_LANES 1
#endif

#if FASTSAMP_MH_ROW_LANES
// The same log alpha for a compile-time D, W rows at a time, one row per SIMD lane (16 float /
// 8 double), with the bits of score_mh_accept_rows. Those bits are the order GCC gives the row
// form's `omp simd` sums at D = DC: with G = min(DC, 32 bytes / sizeof(T)) (GCC's 256-bit
// vectors), partial sums p_j = a_j b_j (+ a_{j+G} b_{j+G}, fused, + ...) for j < G, then
// sum = ((0 + p_0) + p_1) + ... + p_{G-1}, each p_j rounded before its add (RowLanes::keep: GCC
// would otherwise contract a_j b_j + sum into one FMA); d - eps s and d + eps s' are fused. The rows are
// gathered (stride D), so the sums of a block run as independent lanes instead of in-order
// chains; the accept copy is the row form's (select_row).
template <typename T>
struct RowLanes;

// The arithmetic members of RowLanes<T>: the same AVX-512 intrinsics, suffix ps (float) or pd (double).
#define FASTSAMP_ROW_LANE_ARITHMETIC(T, SFX)                                                               \
  static FASTSAMP_VINLINE V set1(T v) { return _mm512_set1_##SFX(v); }                                    \
  static FASTSAMP_VINLINE V add(V a, V b) { return _mm512_add_##SFX(a, b); }                              \
  static FASTSAMP_VINLINE V sub(V a, V b) { return _mm512_sub_##SFX(a, b); }                              \
  static FASTSAMP_VINLINE V mul(V a, V b) { return _mm512_mul_##SFX(a, b); }                              \
  static FASTSAMP_VINLINE V div(V a, V b) { return _mm512_div_##SFX(a, b); }                              \
  static FASTSAMP_VINLINE V fmadd(V a, V b, V c) { return _mm512_fmadd_##SFX(a, b, c); }                  \
  static FASTSAMP_VINLINE V fnmadd(V a, V b, V c) { return _mm512_fnmadd_##SFX(a, b, c); }                \
  static FASTSAMP_VINLINE __mmask16 lt(V a, V b) { return _mm512_cmp_##SFX##_mask(a, b, _CMP_LT_OQ); }

// What the float and double lanes share: W rows, one per lane of a 512-bit register, and `keep`.
template <typename T>
struct RowLanesCommon {
  static constexpr int W = Lanes<T>::W;
  // v itself, opaque to the optimiser: a rounded product that must not fuse into the next add.
  template <typename V>
  static FASTSAMP_VINLINE V keep(V v) {
    asm("" : "+v"(v));
    return v;
  }
};

template <>
struct RowLanes<float> : RowLanesCommon<float> {
  using V = __m512;
  static FASTSAMP_VINLINE __m512i index(int D) {
    return _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                              _mm512_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(__mmask16 k, __m512i idx, const float* p) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, p, 4);
  }
  static FASTSAMP_VINLINE V load(__mmask16 k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
  static FASTSAMP_VINLINE void store(__mmask16 k, float* p, V v) { _mm512_mask_storeu_ps(p, k, v); }
  FASTSAMP_ROW_LANE_ARITHMETIC(float, ps)
  // c[d] = element d of the 16 rows p[0 .. 8), p[8 .. 16), ... (D = 8): [row r | row r + 8] in one
  // register, then the 8 x 8 transpose of both 256-bit halves at once (24 shuffles, not 8 gathers).
  static FASTSAMP_VINLINE void columns8(const float* p, V* c) {
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
struct RowLanes<double> : RowLanesCommon<double> {
  using V = __m512d;
  static FASTSAMP_VINLINE __m256i index(int D) {
    return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(D));
  }
  static FASTSAMP_VINLINE V gather(__mmask16 k, __m256i idx, const double* p) {
    return _mm512_mask_i32gather_pd(_mm512_setzero_pd(), static_cast<__mmask8>(k), idx, p, 8);
  }
  static FASTSAMP_VINLINE V load(__mmask16 k, const double* p) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(k), p);
  }
  static FASTSAMP_VINLINE void store(__mmask16 k, double* p, V v) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(k), v);
  }
  FASTSAMP_ROW_LANE_ARITHMETIC(double, pd)
};
#undef FASTSAMP_ROW_LANE_ARITHMETIC

// c[d] = element d of the n rows of D = DC elements from p (lanes past n: 0), for each d < DC.
template <typename T, int DC, typename L = RowLanes<T>, typename Idx>
FASTSAMP_VINLINE void row_columns(int n, __mmask16 k, Idx idx, const T* p, typename L::V* c) {
  if constexpr (std::is_same<T, float>::value && DC == 8) {
    if (n == L::W) {
      L::columns8(p, c);
      return;
    }
  }
  for (int d = 0; d < DC; ++d) c[d] = L::gather(k, idx, p + d);
}

template <typename T, int DC>
void score_mh_accept_lanes(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                           const T* __restrict sp, const T* __restrict step, const MhUniforms<T> un,
                           const T* __restrict interior, int64_t m, int64_t B, T* __restrict x_new,
                           T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
  using L = RowLanes<T>;
  using V = typename L::V;
  constexpr int W = L::W;
  constexpr int G = DC < 32 / static_cast<int>(sizeof(T)) ? DC : 32 / static_cast<int>(sizeof(T));
  constexpr int K = DC / G;
  const int64_t N = B * DC;
  const V tn = L::set1(static_cast<T>(m + 1)), half = L::set1(T(0.5)), four = L::set1(T(4));
  const auto idx = L::index(DC);
  parallel_for(stream_threads(B * DC), B, [&](int64_t b_begin, int64_t b_end) {
    un.blocks(b_begin, b_end, [&](int64_t c, int n_rows, const T* lu) __attribute__((always_inline)) {
      const int64_t c_end = c + n_rows;
      for (int64_t b0 = c; b0 < c_end; b0 += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, c_end - b0));
        const __mmask16 k = static_cast<__mmask16>((1u << n) - 1u);
        const int64_t o = b0 * DC;
        const V e = L::load(k, step + b0);
        V dd[DC], sc[DC], spc[DC];
        row_columns<T, DC>(n, k, idx, xp + o, dd);
        row_columns<T, DC>(n, k, idx, x + o, sc);
        for (int d = 0; d < DC; ++d) dd[d] = L::sub(dd[d], sc[d]);
        row_columns<T, DC>(n, k, idx, s + o, sc);
        row_columns<T, DC>(n, k, idx, sp + o, spc);
        V sd = L::set1(T(0)), spd = sd, ff = sd, bb = sd;
        for (int j = 0; j < G; ++j) {
          V psd, pspd, pff, pbb;
          for (int q = 0; q < K; ++q) {
            const int d = j + q * G;
            const V sr = sc[d], spr = spc[d];
            const V fwd = L::fnmadd(e, sr, dd[d]), bwd = L::fmadd(e, spr, dd[d]);
            if (q == 0) {
              psd = L::keep(L::mul(sr, dd[d]));
              pspd = L::keep(L::mul(spr, dd[d]));
              pff = L::keep(L::mul(fwd, fwd));
              pbb = L::keep(L::mul(bwd, bwd));
            } else {
              psd = L::fmadd(sr, dd[d], psd);
              pspd = L::fmadd(spr, dd[d], pspd);
              pff = L::fmadd(fwd, fwd, pff);
              pbb = L::fmadd(bwd, bwd, pbb);
            }
          }
          sd = L::add(sd, psd);
          spd = L::add(spd, pspd);
          ff = L::add(ff, pff);
          bb = L::add(bb, pbb);
        }
        V total = L::keep(L::mul(half, L::add(sd, spd)));
        if (interior && m > 0) {
          V si = L::set1(T(0));
          for (int64_t i = 0; i < m; ++i) {
            V ic[DC];
            row_columns<T, DC>(n, k, idx, interior + i * N + o, ic);
            V acc = L::set1(T(0));
            for (int j = 0; j < G; ++j) {
              V p = L::keep(L::mul(ic[j], dd[j]));
              for (int q = 1; q < K; ++q) p = L::fmadd(ic[j + q * G], dd[j + q * G], p);
              acc = L::add(acc, p);
            }
            si = L::add(si, acc);
          }
          total = L::add(total, si);
        }
        const V la = L::add(L::div(total, tn), L::div(L::sub(ff, bb), L::mul(four, e)));
        const __mmask16 acc = L::lt(L::load(k, lu + (b0 - c)), la) & k;
        L::store(k, log_alpha + b0, la);
        _mm_mask_storeu_epi8(accepted + b0, k, _mm_maskz_set1_epi8(acc, 1));
        for (int l = 0; l < n; ++l) {
          const int64_t r = o + l * DC;
          select_row<T>((acc >> l) & 1u, xp + r, x + r, sp + r, s + r, DC, x_new + r, s_new + r);
        }
      }
    });
  });
}
#endif

template <typename T, int DC>
void score_mh_accept_impl(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                          const T* __restrict sp, const T* __restrict step, const MhUniforms<T> un,
                          const T* __restrict interior, int64_t m, int64_t B, int Drt, T* __restrict x_new,
                          T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
#if FASTSAMP_MH_ROW_LANES
  // D = 16 keeps the row form: its sums already run over 256-bit chunks (2 float32, 4 float64),
  // and the lanes' gathers cost more than the in-order adds they save (measured, loaded: 0.95x
  // float32 at B = 2^20, 0.92x float64 with two interior sets at B = 2048).
  if constexpr (DC > 0 && DC <= 8) {
    score_mh_accept_lanes<T, DC>(x, xp, s, sp, step, un, interior, m, B, x_new, s_new, accepted, log_alpha);
  } else
#endif
  {
    score_mh_accept_rows<T, DC>(x, xp, s, sp, step, un, interior, m, B, Drt, x_new, s_new, accepted, log_alpha);
  }
}

// log alpha = (logp' - logp) + (|d - eps s|^2 - |d + eps s'|^2) / (4 eps), d = x' - x; logp_new selected with x.
template <typename T, int DC>
void energy_mh_accept_impl(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                           const T* __restrict sp, const T* __restrict lp, const T* __restrict lpp,
                           const T* __restrict step, const MhUniforms<T> un, int64_t B, int Drt,
                           T* __restrict x_new, T* __restrict s_new, T* __restrict lp_new,
                           uint8_t* __restrict accepted, T* __restrict log_alpha) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    un.rows(b_begin, b_end, [&](int64_t b, T log_u) __attribute__((always_inline)) {
      const T e = step[b];
      const T* __restrict xr = x + b * D;
      const T* __restrict xpr = xp + b * D;
      const T* __restrict sr = s + b * D;
      const T* __restrict spr = sp + b * D;
      T ff = 0, bb = 0;
#pragma omp simd reduction(+ : ff, bb)
      for (int d = 0; d < D; ++d) {
        const T dd = xpr[d] - xr[d];
        const T fwd = dd - e * sr[d];
        const T bwd = dd + e * spr[d];
        ff += fwd * fwd;
        bb += bwd * bwd;
      }
      accept_row<T>(b, (lpp[b] - lp[b]) + (ff - bb) / (T(4) * e), log_u, xpr, xr, spr, sr, D, x_new + b * D,
                    s_new + b * D, accepted, log_alpha);
      lp_new[b] = accepted[b] ? lpp[b] : lp[b];
    });
  });
}

}  // namespace

void mala_propose(int dtype, uintptr_t x, uintptr_t score, uintptr_t step_size, uintptr_t noise, int64_t B,
                  int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    mala_propose_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(score), ptr<T>(step_size), ptr<T>(noise),
                                              B, static_cast<int>(D), seed, offset, chain_offset,
                                              ptr<T>(out));
  });
}

void line_points(int dtype, uintptr_t x, uintptr_t x_prop, int64_t B, int64_t D, int64_t n, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    line_points_impl<T>(ptr<T>(x), ptr<T>(x_prop), B, D, n, ptr<T>(out));
  });
}

void score_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                     uintptr_t step_size, uintptr_t u, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     uintptr_t interior, int64_t m, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                     uintptr_t accepted, uintptr_t log_alpha) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    score_mh_accept_impl<T, decltype(dc)::value>(
        ptr<T>(x), ptr<T>(x_prop), ptr<T>(score), ptr<T>(score_prop), ptr<T>(step_size),
        MhUniforms<T>{ptr<T>(u), seed, offset, chain_offset},
        interior || m == 0 ? ptr<T>(interior) : ptr<T>(score_prop) + B * D, m, B, static_cast<int>(D),
        ptr<T>(x_new), ptr<T>(score_new), ptr<uint8_t>(accepted), ptr<T>(log_alpha));
  });
}

void energy_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                      uintptr_t logp, uintptr_t logp_prop, uintptr_t step_size, uintptr_t u, uint64_t seed,
                      uint64_t offset, uint64_t chain_offset, int64_t B, int64_t D, uintptr_t x_new,
                      uintptr_t score_new, uintptr_t logp_new, uintptr_t accepted, uintptr_t log_alpha) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    energy_mh_accept_impl<T, decltype(dc)::value>(
        ptr<T>(x), ptr<T>(x_prop), ptr<T>(score), ptr<T>(score_prop), ptr<T>(logp), ptr<T>(logp_prop),
        ptr<T>(step_size), MhUniforms<T>{ptr<T>(u), seed, offset, chain_offset}, B, static_cast<int>(D),
        ptr<T>(x_new), ptr<T>(score_new), ptr<T>(logp_new), ptr<uint8_t>(accepted), ptr<T>(log_alpha));
  });
}

}  // namespace cpu
}  // namespace fastsamp
