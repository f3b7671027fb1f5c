// Vector helpers and the exact activations of the fused MLP engine (cpu/mlp.h) on vectors of one
// native register (vm::VNative: 64 bytes with AVX-512, 32 with AVX2): exp, GELU (z Φ(z), erf by
// rational approximations) and SiLU (z σ(z)), each with its derivative for the backward.
#pragma once
#include <cmath>
#include <cstddef>

#include "cpu/common.h"

namespace fastsamp {
namespace cpu {
namespace mlp {

template <typename T>
using Vec = typename vm::VNative<T>::V;
template <typename T>
using IVec = typename vm::VNative<T>::I;
template <typename T>
constexpr int kW = FASTSAMP_NATIVE_BYTES / static_cast<int>(sizeof(T));

// Vector load / store at a pointer aligned to one vector (a for aligned; the mixture kernels' loadu / storeu of
// cpu/gmm.h take any alignment).
template <typename T>
FASTSAMP_VINLINE Vec<T> loada(const T* p) {
  return *reinterpret_cast<const Vec<T>*>(p);
}
template <typename T>
FASTSAMP_VINLINE void storea(T* p, Vec<T> v) {
  *reinterpret_cast<Vec<T>*>(p) = v;
}
// Broadcast (not `Vec{} + x`: 0 + x is an add gcc may not drop, -0 + 0 being +0).
template <typename T>
FASTSAMP_VINLINE Vec<T> bc(T x) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm512_set1_ps(x));
  } else {
    return reinterpret_cast<Vec<T>>(_mm512_set1_pd(x));
  }
#elif defined(__AVX__)
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<Vec<T>>(_mm256_set1_ps(x));
  } else {
    return reinterpret_cast<Vec<T>>(_mm256_set1_pd(x));
  }
#else
  return x - Vec<T>{};  // x - 0 is x for every x, -0 included
#endif
}

// c[0] x^(N-1) + c[1] x^(N-2) + ... + c[N-1] by Horner's rule with FMAs.
template <typename T, size_t N>
FASTSAMP_VINLINE Vec<T> horner(Vec<T> x, const T (&c)[N]) {
  Vec<T> p = bc<T>(c[0]);
#pragma GCC unroll 16
  for (size_t i = 1; i < N; ++i) p = vm::vfma(p, x, bc<T>(c[i]));
  return p;
}

// ---------------------------------------------------------------- vector exp
// vm::exp (cpu_math.h) on engine vectors: same reduction, same polynomials.
template <typename T>
FASTSAMP_VINLINE Vec<T> vexp(Vec<T> x) {
  using V = Vec<T>;
  using I = IVec<T>;
  using C = vm::ExpC<T>;
  using BI = vm::Bits<T>;
  x = x < C::lo ? bc<T>(C::lo) : x;  // NaN passes both selects
  x = x > C::hi ? bc<T>(C::hi) : x;
  const V t = vm::vfma(x, bc<T>(C::log2e), bc<T>(C::shifter));
  const V n = t - C::shifter;
  const I ni = reinterpret_cast<I>(t) - reinterpret_cast<I>(bc<T>(C::shifter));
  V r = vm::vfma(-n, bc<T>(C::ln2_hi), x);
  r = vm::vfma(-n, bc<T>(C::ln2_lo), r);
  V p;
  if constexpr (sizeof(T) == 4) {
    p = horner<T>(r, {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
        5.0000001201e-1f});
    p = vm::vfma(p, r * r, r) + T(1);
  } else {
    p = horner<T>(r, {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
        1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0});
  }
  const I n1 = ni >> 1;
  const I n2 = ni - n1;
  const V s1 = reinterpret_cast<V>((n1 + BI::kBias) << BI::kMant);
  const V s2 = reinterpret_cast<V>((n2 + BI::kBias) << BI::kMant);
  return p * s1 * s2;
}

// ---------------------------------------------------------------- GELU
// gelu(z) = z Φ(z), Φ(z) = ½ (1 + erf(z/√2)); gelu'(z) = Φ(z) + z φ(z), φ(z) = e^{-z²/2}/√(2π).
//
// float: erf(x) = x P(x²)/Q(x²) on |x| <= 4 (x clamped; 1 - erf(4) = 1.5e-8 is below float's
// resolution at 1), P, Q of degree 5, fitted for minimax relative error (2.5e-8 in exact
// arithmetic, 5e-8 with the coefficients rounded to float). Evaluated in float with FMAs (the
// constants ½ and 1/√2 folded into the coefficients) the absolute error of Φ is < 1.9e-7 (3 ulp
// at 1; all of it the float rounding of the Horner sums, the relative error of erf itself is
// < 4e-7); no exp in the forward. 16 vector operations and one division per 16 values.
// double: W. J. Cody's rational Chebyshev approximations (Math. Comp. 23, 1969; CALERF):
// erf(x) = x A(x²)/B(x²) for |x| < 0.46875 and erfc(y) = e^{-y²} C(y)/D(y) for y = |x| >= 0.46875
// (fitted on [0.46875, 4]; beyond 4 it stays within 1e-7 relative up to y = 26, where erfc
// underflows, so the absolute error of Φ is < 2e-16 everywhere). One division: the numerator and
// denominator are selected per lane before it. e^{-y²} is shared with φ in the backward.
template <typename T, bool DERIV>
FASTSAMP_VINLINE void gelu_v(Vec<T> z, Vec<T>* g, Vec<T>* dg) {
  using V = Vec<T>;
  constexpr T kRsqrt2 = T(0.70710678118654752440);
  constexpr T kInvSqrt2Pi = T(0.39894228040143267794);
  if constexpr (sizeof(T) == 4) {
    // Φ = ½ + ½ x P(x²)/Q(x²) with x = z/√2, the factors ½, 1/√2 folded into the coefficients:
    // Φ = ½ + zc P'(zc²)/Q'(zc²), zc = clamp(z, ±4√2)
    V zc = z > 5.656854249f ? bc<T>(5.656854249f) : z;  // NaN passes
    zc = zc < -5.656854249f ? bc<T>(-5.656854249f) : zc;
    const V w = zc * zc;
    V p = horner<T>(w, {2.1950317119490137e-08f, 6.287460109888343e-06f, 0.00017159221170004457f,
        0.004693393129855394f, 0.0342118963599205f, 0.3989422619342804f});
    V q = horner<T>(w, {1.1693128953993437e-06f, 7.408671081066132e-05f, 0.001900743693113327f, 0.028836052864789963f,
        0.2524227797985077f, 1.0f});
    const V phi = vm::vfma(zc, p / q, bc<T>(0.5f));
    *g = z * phi;
    if constexpr (DERIV) *dg = vm::vfma(z, vexp<T>((z * z) * T(-0.5)) * kInvSqrt2Pi, phi);
  } else {
    const V x = z * kRsqrt2;
    const V y = x < 0.0 ? -x : x;
    const V yc = y > 30.0 ? bc<T>(30.0) : y;  // erfc(30) underflows; keeps C/D finite at inf
    const V u = x * x;
    V a = horner<T>(u, {1.85777706184603153e-1, 3.16112374387056560e00, 1.13864154151050156e02,
        3.77485237685302021e02, 3.20937758913846947e03});
    V b = horner<T>(u, {1.0, 2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
        2.84423683343917062e03});
    V c = horner<T>(yc, {2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e00,
        6.61191906371416295e01, 2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
        2.05107837782607147e03, 1.23033935479799725e03});
    V d = horner<T>(yc, {1.0, 1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
        1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03,
        1.23033935480374942e03});
    const auto small = y < 0.46875;
    const V r = (small ? x * a : c) / (small ? b : d);  // erf(x) (small) or erfc(y) e^{y²}
    const V e = vexp<T>(-(yc * yc));
    const V ec = e * r;
    const V big = x > 0.0 ? T(1) - T(0.5) * ec : T(0.5) * ec;
    const V phi = small ? vm::vfma(bc<T>(0.5), r, bc<T>(0.5)) : big;
    *g = z * phi;
    if constexpr (DERIV) *dg = vm::vfma(z, e * kInvSqrt2Pi, phi);
  }
}

// ---------------------------------------------------------------- SiLU
// silu(z) = z σ(z) = z / (1 + e^{-z}) (exact up to the rounding of vexp and one division);
// silu'(z) = σ(z) (1 + z (1 − σ(z))). At z -> -inf e^{-z} saturates (vexp clamps), silu -> -0.
template <typename T, bool DERIV>
FASTSAMP_VINLINE void silu_v(Vec<T> z, Vec<T>* g, Vec<T>* dg) {
  const Vec<T> sig = T(1) / (vexp<T>(-z) + T(1));
  *g = z * sig;
  if constexpr (DERIV) *dg = sig * vm::vfma(z, T(1) - sig, bc<T>(T(1)));
}

enum Act : int { kGelu = 0, kSilu = 1 };

template <typename T, int ACT, bool DERIV>
FASTSAMP_VINLINE void act_v(Vec<T> z, Vec<T>* g, Vec<T>* dg) {
  if constexpr (ACT == kSilu) {
    silu_v<T, DERIV>(z, g, dg);
  } else {
    gelu_v<T, DERIV>(z, g, dg);
  }
}

// act, act' and act'' (the energy network's training pass, cpu/mlp_net.cpp; act and act' as act_v's):
// silu''(z) = σ(1 − σ)(2 + z(1 − 2σ)),  gelu''(z) = φ(z)(2 − z²).
template <typename T, int ACT>
FASTSAMP_VINLINE void act_v2(Vec<T> z, Vec<T>* g, Vec<T>* dg, Vec<T>* d2g) {
  if constexpr (ACT == kSilu) {
    const Vec<T> sig = T(1) / (vexp<T>(-z) + T(1));
    *g = z * sig;
    *dg = sig * vm::vfma(z, T(1) - sig, bc<T>(T(1)));
    *d2g = (sig * (T(1) - sig)) * vm::vfma(z, T(1) - T(2) * sig, bc<T>(T(2)));
  } else {
    gelu_v<T, true>(z, g, dg);
    *d2g = vexp<T>((z * z) * T(-0.5)) * T(0.39894228040143267794) * (T(2) - z * z);
  }
}

// f(IntC<ACT>()) for the runtime activation code act.
template <typename F>
FASTSAMP_VINLINE void with_act(int act, F&& f) {
  if (act == kSilu) {
    f(IntC<kSilu>());
  } else {
    f(IntC<kGelu>());
  }
}

}  // namespace mlp
}  // namespace cpu
}  // namespace fastsamp
