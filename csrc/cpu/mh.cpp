// MALA proposals and their MH tests: mala_propose (op 3), line_points (op 4), score_mh_accept
// (op 5, the trapezoidal line integral of the score) and energy_mh_accept (the exact log-density
// difference), streaming passes over rows (cpu/stream.h); the accepts read u or draw it (cpu/random.h).
// score_mh_accept at a compile-time D <= 8 takes rows as SIMD lanes on AVX-512 and AVX2 (score_mh_accept_lanes).
// See docs/backend-contract.md.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/ops.h"
#include "cpu/random.h"
#include "cpu/row_lanes.h"
#include "cpu/stream.h"

namespace fastsamp {
namespace cpu {
namespace {

// e = the per-chain values v[row] of the flat elements i .. i + L - 1 (one 64-byte vector) of a (B, D) array: a broadcast
// when the vector lies in one row, the L / D rows of a vector that starts a row at a compile-time D dividing L (one
// masked load and a lane permutation on AVX-512), else lane by lane.
template <typename T, int DC>
FASTSAMP_VINLINE void row_values(const T* __restrict v, int64_t i, int Drt, Vec64<T>& e) {
  constexpr int L = 64 / static_cast<int>(sizeof(T));
  const int D = DC > 0 ? DC : Drt;
  int64_t r = i / D;
  int c = static_cast<int>(i - r * D);
  if (c + L <= D) {
    e = Vec64<T>{} + v[r];
    return;
  }
  if constexpr (DC > 0 && L % DC == 0) {
    if (c == 0) {
#if defined(__AVX512F__)
      constexpr unsigned first_rows = (1u << (L / DC)) - 1;  // lane k holds row k / D of the vector
      if constexpr (sizeof(T) == 4) {
        alignas(64) int32_t idx[L];
        for (int k = 0; k < L; ++k) idx[k] = k / DC;
        const __m512 rows = _mm512_maskz_loadu_ps(static_cast<__mmask16>(first_rows), v + r);
        e = reinterpret_cast<Vec64<T>>(_mm512_permutexvar_ps(_mm512_load_si512(idx), rows));
      } else {
        alignas(64) int64_t idx[L];
        for (int k = 0; k < L; ++k) idx[k] = k / DC;
        const __m512d rows = _mm512_maskz_loadu_pd(static_cast<__mmask8>(first_rows), v + r);
        e = reinterpret_cast<Vec64<T>>(_mm512_permutexvar_pd(_mm512_load_si512(idx), rows));
      }
#else
      for (int k = 0; k < L; ++k) e[k] = v[r + k / DC];
#endif
      return;
    }
  }
  for (int k = 0; k < L; ++k) {
    e[k] = v[r];
    if (++c == D) c = 0, ++r;
  }
}

// v = sqrt(v) lane by lane, in place (a 64-byte vector: no vector return where the build lacks AVX-512).
template <typename T>
FASTSAMP_VINLINE void sqrt_lanes(Vec64<T>& v) {
#if defined(__AVX512F__)
  v = vm::vsqrt(v);
#else
  for (int k = 0; k < static_cast<int>(64 / sizeof(T)); ++k) v[k] = std::sqrt(v[k]);
#endif
}

// x' = x + eps s + sqrt(2 eps) xi, eps per chain: one streaming pass (noise_pass: the Philox normals fused into it
// where D % 4 == 0 on AVX-512), the same arithmetic per element on every path.
template <typename T, int DC>
void mala_propose_impl(const T* __restrict x, const T* __restrict score, const T* __restrict step,
                       const T* noise, int64_t B, int Drt, uint64_t seed, uint64_t offset, uint64_t chain0,
                       T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  const T* in[2] = {x, score};
  noise_pass<T>(noise, B, D, seed, offset, chain0, in, 2, out,
                [=](int64_t i, T xi) {
                  const T e = step[i / D];
                  return x[i] + e * score[i] + std::sqrt(T(2) * e) * xi;
                },
                [=](int64_t i, auto& v, auto xi) {
                  using V = std::remove_reference_t<decltype(v)>;
                  V xv, sv;
                  std::memcpy(&xv, x + i, sizeof(V));
                  std::memcpy(&sv, score + i, sizeof(V));
                  V e, q;
                  row_values<T, DC>(step, i, D, e);
                  q = T(2) * e;
                  sqrt_lanes<T>(q);
                  v = xv + e * sv + q * xi;
                });
}

// Elements of x and x' per tile of line_points: every plane of a tile reads them from L1 (2 x 8 KiB in float32).
constexpr int64_t kLineTile = 2048;

// The interior trapezoid points x + (i/n)(x' - x), i = 1 .. n-1, as (n-1, B, D), by tiles of kLineTile elements whose
// x and x' are read from memory once for all n - 1 planes.
template <typename T>
void line_points_impl(const T* __restrict x, const T* __restrict xp, int64_t B, int64_t D, int64_t n,
                      T* __restrict out) {
  const int64_t N = B * D;
  const T tn = static_cast<T>(n);
  parallel_for(stream_threads(N * (n - 1)), N, [&](int64_t e0, int64_t e1) {
    for (int64_t a = e0; a < e1; a += kLineTile) {
      const int64_t z = std::min(e1, a + kLineTile);
      for (int64_t i = 1; i < n; ++i) {
        const T t = static_cast<T>(i) / tn;
        T* __restrict o = out + (i - 1) * N;
#pragma omp simd
        for (int64_t e = a; e < z; ++e) o[e] = x[e] + t * (xp[e] - x[e]);
      }
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

#if FASTSAMP_MH_ROW_LANES
// The same log alpha for a compile-time D, W rows at a time, one row per SIMD lane (cpu/row_lanes.h: 16 float /
// 8 double on AVX-512, 8 / 4 on AVX2), with the bits of score_mh_accept_rows. Those bits are the order GCC gives
// the row form's `omp simd` sums at D = DC: with G = min(DC, 32 bytes / sizeof(T)) (GCC's 256-bit vectors),
// partial sums p_j = a_j b_j (+ a_{j+G} b_{j+G}, fused, + ...) for j < G, then
// sum = ((0 + p_0) + p_1) + ... + p_{G-1}, each p_j rounded before its add (RowLanes::keep: GCC would otherwise
// contract a_j b_j + sum into one FMA); d - eps s and d + eps s' are fused. The rows are gathered (stride D) or
// transposed, so the sums of a block run as independent lanes instead of in-order chains; the accept copy is the
// row form's (select_row) for a partial block, a whole block's by blends (RowLanes::select_block).
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
        const auto k = L::mask(n);
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
        const unsigned acc = L::lt(L::load(k, lu + (b0 - c)), la) & L::bits(k);
        L::store(k, log_alpha + b0, la);
        L::store_flags(k, acc, accepted + b0);
        if (n == W) {  // a whole block by blends (no branch per row)
          L::template select_block<DC>(acc, xp + o, x + o, x_new + o);
          L::template select_block<DC>(acc, sp + o, s + o, s_new + o);
          continue;
        }
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
  // D = 16 in float32 takes the lanes where they load whole blocks by transposes (AVX2: 1.3x). Float64 keeps the row
  // form, whose sums already run over 4-double chunks (AVX2 lanes: 0.8x, their 48 registers of columns spill), as
  // does float32 with gathers (AVX-512, loaded: 0.95x at B = 2^20).
  if constexpr (DC > 0 && (DC <= 8 || (DC == 16 && sizeof(T) == 4 && RowLanes<T>::has_columns(DC)))) {
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
