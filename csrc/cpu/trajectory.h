// The Euler–Maruyama transition of em_step_logprob (op 9): its per-call constants and the
// per-element forward terms, shared by the per-step kernel (trajectory.cpp) and the
// whole-trajectory policy kernels (trajectory_policy.cpp), so that both compute the same bits.
#pragma once
#include <cmath>
#include <cstdint>

#include "cpu/common.h"

namespace fastsamp {
namespace cpu {

// Euler–Maruyama transition with its forward / Brownian-bridge log-densities.
// Per call constants (host double, rounded to T once): s2 = σ²h, e2 = explore²,
// c = t/(t+h), b2 = s2 c (0: no log_pb), inv_s2 = 1/s2, inv_b2 = 1/b2, q = sqrt(s2 + e2)
// (the sampling scale without log_var), lpf0 = D log(2π s2), lpb0 = D log(2π b2).
// With log_var, log(2π s²) = log(2π s2) + log_var: the row sum of log_var is
// accumulated and no log is taken per element.
template <typename T>
struct EmConst {
  T h, s2, e2, c, inv_s2, inv_b2, q, lpf0, lpb0;
  bool has_pb;
  EmConst(int64_t D, double h_, double s2_, double e2_, double c_, double b2_)
      : h(static_cast<T>(h_)), s2(static_cast<T>(s2_)), e2(static_cast<T>(e2_)), c(static_cast<T>(c_)),
        inv_s2(static_cast<T>(1.0 / s2_)), inv_b2(static_cast<T>(b2_ != 0.0 ? 1.0 / b2_ : 0.0)),
        q(static_cast<T>(std::sqrt(s2_ + e2_))),
        lpf0(static_cast<T>(static_cast<double>(D) * std::log(kTwoPi * s2_))),
        lpb0(static_cast<T>(b2_ != 0.0 ? static_cast<double>(D) * std::log(kTwoPi * b2_) : 0.0)),
        has_pb(b2_ != 0.0) {}
};

// Forward terms of flat element i: {v²/s² + log_var (v² without log_var: 1/s2 is applied to the
// row sum), u²}; writes x_next = x + h drift + sqrt(s² + e2) xi unless GIVEN. A free function
// with its pointers as arguments (not a lambda's captures): inside `omp simd` loops gcc then sees
// them loop-invariant (captures are reloaded, even gathered, per lane).
template <typename T>
struct EmTerms {
  T v, u;
};
template <typename T, bool HAS_LV, bool GIVEN>
FASTSAMP_VINLINE EmTerms<T> em_forward_elem(const T* __restrict x, const T* __restrict drift,
                                            const T* __restrict lv, const T* __restrict xn, T* __restrict y,
                                            int64_t i, T xi, T h, T s2, T e2, T c, T q) {
  const T mean = x[i] + h * drift[i];
  T var = s2;
  if constexpr (HAS_LV) var = s2 * vm::exp<T>(lv[i]);
  T yv;
  if constexpr (GIVEN) {
    yv = xn[i];
  } else {
    yv = mean + (HAS_LV ? std::sqrt(var + e2) : q) * xi;
    y[i] = yv;
  }
  const T v = yv - mean;
  const T u = x[i] - c * yv;
  if constexpr (HAS_LV) {
    return {v * v / var + lv[i], u * u};
  } else {
    return {v * v, u * u};
  }
}

}  // namespace cpu
}  // namespace fastsamp
