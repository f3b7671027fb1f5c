// Euler–Maruyama step with its forward / backward log-densities, em_step_logprob (op 9), forward
// and fused backward: one pass over rows, the in-kernel normals from the streaming engine
// (cpu/stream.h), the transition arithmetic of cpu/trajectory.h. See docs/backend-contract.md.
#include <cmath>

#include "cpu/ops.h"
#include "cpu/stream.h"
#include "cpu/trajectory.h"

namespace fastsamp {
namespace cpu {
namespace {

// Forward. GIVEN: x_next is read (evaluate the transition); otherwise it is sampled with xi the
// rows' normals (rows of the noise tensor (HAS_NOISE) or of the Philox chunk buffer of
// philox_chunks: the same body either way). One pass over the data, x_next and the terms in
// registers. Small D (< one 64-byte vector W): RB = W / D consecutive rows form one flat vector,
// whose terms go through a W-element stack buffer for the per-row sums (no per-row loop of D
// iterations and horizontal sums).
template <typename T, int DC, bool HAS_LV, bool GIVEN, bool HAS_NOISE>
void em_step_logprob_impl(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                          const T* __restrict xn, const T* __restrict noise, int64_t B, int Drt, uint64_t seed,
                          uint64_t offset, uint64_t chain0, const EmConst<T> k, T* __restrict y, T* __restrict log_pf,
                          T* __restrict log_pb) {
  const int D = DC > 0 ? DC : Drt;
  constexpr int W = Lanes<T>::W;
  constexpr int RB = (DC > 0 && DC < W) ? W / DC : 1;
  const T h = k.h, s2 = k.s2, e2 = k.e2, c = k.c, q = k.q;
  const T inv_s2 = k.inv_s2, inv_b2 = k.inv_b2, lpf0 = k.lpf0, lpb0 = k.lpb0;
  const bool has_pb = k.has_pb;
  // rows b0 .. b0+nb-1, their normals at xs[(b - b0) * D + d] (unused when GIVEN)
  auto rows = [x, drift, lv, xn, y, log_pf, log_pb, D, h, s2, e2, c, q, inv_s2, inv_b2, lpf0, lpb0, has_pb](
                  int64_t b0, int64_t nb, const T* __restrict xs) {
    const T* __restrict xp = x;
    const T* __restrict dp = drift;
    const T* __restrict lp = lv;
    const T* __restrict np = xn;
    T* __restrict yp = y;
    auto finish = [&](int64_t b, T sv, T su) {
      log_pf[b] = T(-0.5) * ((HAS_LV ? sv : sv * inv_s2) + lpf0);
      log_pb[b] = has_pb ? T(-0.5) * (su * inv_b2 + lpb0) : T(0);
    };
    int64_t r = 0;
    if constexpr (RB > 1) {
      // `rows` (<= RB) rows from row r: terms through the buffer, then per-row sums in order (the
      // last rows of B take the same arithmetic as full groups: results do not depend on B)
      auto group = [&](int64_t r, int rows) __attribute__((always_inline)) {
        const int64_t o = (b0 + r) * D;
        const T* __restrict xr = GIVEN ? nullptr : xs + r * D;
        const int ne = rows * DC;
        alignas(64) T tv[W], tu[W];
#pragma omp simd
        for (int e = 0; e < ne; ++e) {
          const EmTerms<T> t = em_forward_elem<T, HAS_LV, GIVEN>(xp, dp, lp, np, yp, o + e, GIVEN ? T(0) : xr[e],
                                                                 h, s2, e2, c, q);
          tv[e] = t.v;
          tu[e] = t.u;
        }
        for (int g = 0; g < rows; ++g) {
          T sv = 0, su = 0;
          for (int d = 0; d < DC; ++d) {
            sv += tv[g * DC + d];
            su += tu[g * DC + d];
          }
          finish(b0 + r + g, sv, su);
        }
      };
      for (; r + RB <= nb; r += RB) group(r, RB);
      if (r < nb) group(r, static_cast<int>(nb - r));
      return;
    }
    for (; r < nb; ++r) {
      const int64_t o = (b0 + r) * D;
      const T* __restrict xr = GIVEN ? nullptr : xs + r * D;
      T sv = 0, su = 0;
#pragma omp simd reduction(+ : sv, su)
      for (int d = 0; d < D; ++d) {
        const EmTerms<T> t = em_forward_elem<T, HAS_LV, GIVEN>(xp, dp, lp, np, yp, o + d, GIVEN ? T(0) : xr[d],
                                                               h, s2, e2, c, q);
        sv += t.v;
        su += t.u;
      }
      finish(b0 + r, sv, su);
    }
  };
  if constexpr (GIVEN || HAS_NOISE) {
    const int64_t groups = (B + RB - 1) / RB;
    parallel_for(stream_threads(B * D), groups, [&](int64_t g_begin, int64_t g_end) {
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int64_t b0 = g * RB;
        rows(b0, std::min<int64_t>(RB, B - b0), HAS_NOISE ? noise + b0 * D : nullptr);
      }
    });
  } else {
    // chunks of a multiple of 16 rows (so of RB): whole vectors but for the last rows of B
    const T* in[3] = {x, drift, lv};
    philox_chunks<T>(B, D, seed, offset, chain0, in, HAS_LV ? 3 : 2,
                     [&](int64_t b0, int64_t nb, const T* __restrict xs) { rows(b0, nb, xs); });
  }
}

// Backward of flat element i (elementwise, row scalars ga = g_pf, gw = g_pb / b2, 0 without
// log_pb): with v = x_next − x − h drift, u = x − c x_next, a = g_pf v / s², w = g_pb u / b2,
// G = g_x_next − a + c w (g_x_next = 0 without HAS_GXN): g_x = a − w + R G, g_drift = h (a + R G),
// g_log_var = g_pf (½ v²/s² − ½) + R G ½ s² v / (s² + e2), g_x_next = G (WANT_GXN); R = REPARAM.
template <typename T, bool HAS_LV, bool REPARAM, bool WANT_GXN, bool HAS_GXN>
FASTSAMP_VINLINE void em_backward_elem(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                                       const T* __restrict xn, const T* __restrict gxn, T* __restrict gx,
                                       T* __restrict gdr, T* __restrict glv, T* __restrict gxo, int64_t i, T ga,
                                       T gw, T h, T s2, T e2, T c, T inv_s2) {
  const T xv = x[i], yv = xn[i];
  const T v = yv - (xv + h * drift[i]);
  T var = s2;
  if constexpr (HAS_LV) var = s2 * vm::exp<T>(lv[i]);
  T a = HAS_LV ? ga * v / var : (ga * inv_s2) * v;
  const T w = gw * (xv - c * yv);
  T g = c * w - a;
  if constexpr (HAS_GXN) g += gxn[i];
  T gxv = a - w;
  if constexpr (REPARAM) {
    gxv += g;
    a += g;
  }
  gx[i] = gxv;
  gdr[i] = h * a;
  if constexpr (HAS_LV) {
    T gl = ga * (T(0.5) * v * v / var - T(0.5));
    if constexpr (REPARAM) gl += g * T(0.5) * var * v / (var + e2);
    glv[i] = gl;
  }
  if constexpr (WANT_GXN) gxo[i] = g;
}

// Backward: rows in groups of RB (small D: one flat vector, the row scalars spread over its lanes
// first; else one row per group).
template <typename T, int DC, bool HAS_LV, bool REPARAM, bool WANT_GXN>
void em_step_logprob_backward_impl(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                                   const T* __restrict xn, const T* __restrict gxn, const T* __restrict gpf,
                                   const T* __restrict gpb, int64_t B, int Drt, const EmConst<T> k,
                                   T* __restrict gx, T* __restrict gdr, T* __restrict glv,
                                   T* __restrict gxo) {
  const int D = DC > 0 ? DC : Drt;
  constexpr int W = Lanes<T>::W;
  constexpr int RB = (DC > 0 && DC < W) ? W / DC : 1;
  const T h = k.h, s2 = k.s2, e2 = k.e2, c = k.c, inv_s2 = k.inv_s2, inv_b2 = k.inv_b2;
  const bool has_pb = k.has_pb;
  const int64_t groups = (B + RB - 1) / RB;
  // (a null g_x_next as a compile-time flag: a runtime test inside the loop costs 2-3x)
  dispatch_bool(gxn != nullptr, [&](auto has_gxn) {
    constexpr bool HAS_GXN = decltype(has_gxn)::value;
    parallel_for(stream_threads(B * D), groups, [&](int64_t gi_begin, int64_t gi_end) {
      for (int64_t gi = gi_begin; gi < gi_end; ++gi) {
        const int64_t b0 = gi * RB;
        if (RB > 1 && b0 + RB <= B) {
          alignas(64) T gae[W], gwe[W];
          for (int e = 0; e < W; ++e) {
            const int64_t b = b0 + e / (DC > 0 ? DC : 1);
            gae[e] = gpf[b];
            gwe[e] = has_pb ? gpb[b] * inv_b2 : T(0);
          }
          const int64_t o = b0 * D;
#pragma omp simd
          for (int e = 0; e < W; ++e)
            em_backward_elem<T, HAS_LV, REPARAM, WANT_GXN, HAS_GXN>(x, drift, lv, xn, gxn, gx, gdr, glv, gxo, o + e,
                                                                    gae[e], gwe[e], h, s2, e2, c, inv_s2);
        } else {
          for (int64_t b = b0; b < std::min<int64_t>(B, b0 + RB); ++b) {
            const T ga = gpf[b], gw = has_pb ? gpb[b] * inv_b2 : T(0);
            const int64_t o = b * D;
#pragma omp simd
            for (int d = 0; d < D; ++d)
              em_backward_elem<T, HAS_LV, REPARAM, WANT_GXN, HAS_GXN>(x, drift, lv, xn, gxn, gx, gdr, glv, gxo, o + d,
                                                                      ga, gw, h, s2, e2, c, inv_s2);
          }
        }
      }
    });
  });
}

// run(T(), IntC<DC>(), bool_constant<LV>(), EmConst<T>) for the dtype code, D and whether log_var is given.
template <typename Run>
void em_dispatch(int dtype, int64_t D, bool has_log_var, double h, double s2, double e2, double c, double b2,
                 Run&& run) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    const EmConst<T> k(D, h, s2, e2, c, b2);
    dispatch_bool(has_log_var, [&](auto lvc) { run(tag, dc, lvc, k); });
  });
}

}  // namespace

void em_step_logprob(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double h, double s2, double e2, double c, double b2, uintptr_t y, uintptr_t log_pf, uintptr_t log_pb) {
  const int mode = x_next ? 0 : (noise ? 1 : 2);  // given / noise tensor / Philox
  em_dispatch(dtype, D, log_var != 0, h, s2, e2, c, b2, [&](auto tag, auto dc, auto lvc, const auto& k) {
    using T = decltype(tag);
    auto run = [&](auto given, auto has_noise) {
      em_step_logprob_impl<T, decltype(dc)::value, decltype(lvc)::value, decltype(given)::value,
                           decltype(has_noise)::value>(
          ptr<T>(x), ptr<T>(drift), ptr<T>(log_var), ptr<T>(x_next), ptr<T>(noise), B, static_cast<int>(D), seed,
          offset, chain_offset, k, ptr<T>(y), ptr<T>(log_pf), ptr<T>(log_pb));
    };
    if (mode == 0) {
      run(std::true_type(), std::false_type());
    } else if (mode == 1) {
      run(std::false_type(), std::true_type());
    } else {
      run(std::false_type(), std::false_type());
    }
  });
}

void em_step_logprob_backward(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                              uintptr_t g_x_next, uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D,
                              double h, double s2, double e2, double c, double b2, bool reparam, uintptr_t g_x,
                              uintptr_t g_drift, uintptr_t g_log_var, uintptr_t g_x_next_out) {
  em_dispatch(dtype, D, log_var != 0, h, s2, e2, c, b2, [&](auto tag, auto dc, auto lvc, const auto& k) {
    using T = decltype(tag);
    dispatch_bool(reparam, [&](auto rep) {
      dispatch_bool(g_x_next_out != 0, [&](auto want) {
        em_step_logprob_backward_impl<T, decltype(dc)::value, decltype(lvc)::value, decltype(rep)::value,
                                      decltype(want)::value>(
            ptr<T>(x), ptr<T>(drift), ptr<T>(log_var), ptr<T>(x_next), ptr<T>(g_x_next), ptr<T>(g_log_pf),
            ptr<T>(g_log_pb), B, static_cast<int>(D), k, ptr<T>(g_x), ptr<T>(g_drift), ptr<T>(g_log_var),
            ptr<T>(g_x_next_out));
      });
    });
  });
}

}  // namespace cpu
}  // namespace fastsamp
