// Branch-free, vectorisable elementary functions for the C++ CPU kernels.
//
// std::exp / std::log / std::sin in an `omp simd` loop do not vectorise without
// -ffast-math (and we do not build with it), so the hot loops call these
// instead: plain arithmetic, integer bit manipulation and selects, all inlined,
// so gcc vectorises them across SIMD lanes. Accuracy: a few ulp in float,
// ~1 ulp (~2e-16 relative) in double. NaN propagates; ±inf, 0, negatives and
// subnormals give the IEEE/libm answers (exp(-inf) = 0, exp(big) = inf,
// log(0) = -inf, log(<0) = NaN, log(inf) = inf). sin/cos use a Cody–Waite
// reduction by π/2 and are accurate for |x| up to ~1e4 (float) / ~1e9 (double),
// which covers every use here (Box–Muller angles in [0, 2π]).
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#define FASTSAMP_VINLINE inline __attribute__((always_inline))

namespace fastsamp {
namespace vm {

template <typename T> struct Bits;
template <> struct Bits<float> {
  using I = int32_t;
  using U = uint32_t;
  static constexpr int kMant = 23;
  static constexpr I kBias = 127;
};
template <> struct Bits<double> {
  using I = int64_t;
  using U = uint64_t;
  static constexpr int kMant = 52;
  static constexpr I kBias = 1023;
};

template <typename T>
FASTSAMP_VINLINE typename Bits<T>::I as_int(T x) {
  typename Bits<T>::I i;
  std::memcpy(&i, &x, sizeof(T));
  return i;
}
template <typename T, typename I>
FASTSAMP_VINLINE T as_float(I i) {
  static_assert(sizeof(I) == sizeof(T), "size");
  T x;
  std::memcpy(&x, &i, sizeof(T));
  return x;
}

// a*b + c, fused where the target has FMA (plain otherwise: never a libm call).
template <typename T>
FASTSAMP_VINLINE T fma_(T a, T b, T c) {
#if defined(__FMA__) || defined(__aarch64__)
  return __builtin_fma(a, b, c);
#else
  return a * b + c;
#endif
}
template <>
FASTSAMP_VINLINE float fma_<float>(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// cond ? a : b as a bit blend: both sides are always computed, so gcc cannot
// sink a (possibly trapping) computation into a branch and then refuse to
// if-convert it under -ftrapping-math.
template <typename T>
FASTSAMP_VINLINE T blend(bool cond, T a, T b) {
  using I = typename Bits<T>::I;
  const I m = -static_cast<I>(cond);
  return as_float<T>((as_int<T>(a) & m) | (as_int<T>(b) & ~m));
}

// max that propagates a NaN in `a` (the running maximum) or `b`.
template <typename T>
FASTSAMP_VINLINE T max_nan(T a, T b) {
  return blend<T>((a > b) | (a != a), a, b);
}

// ---------------------------------------------------------------- exp
template <typename T> struct ExpC;
template <> struct ExpC<float> {
  static constexpr float lo = -104.0f, hi = 89.0f;
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693145751953125f;      // 16 bits
  static constexpr float ln2_lo = 1.428606765330187045e-06f;
  static constexpr float shifter = 12582912.0f;             // 1.5 * 2^23
};
template <> struct ExpC<double> {
  static constexpr double lo = -746.0, hi = 710.0;
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93147180369123816490e-01;
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
  static constexpr double shifter = 6755399441055744.0;     // 1.5 * 2^52
};

template <typename T>
FASTSAMP_VINLINE T exp_poly(T r);
template <>
FASTSAMP_VINLINE float exp_poly<float>(float r) {
  // exp(r) on |r| <= ln2/2: 1 + r + r^2 P(r), cephes expf minimax coefficients
  float p = 1.9875691500e-4f;
  p = fma_(p, r, 1.3981999507e-3f);
  p = fma_(p, r, 8.3334519073e-3f);
  p = fma_(p, r, 4.1665795894e-2f);
  p = fma_(p, r, 1.6666665459e-1f);
  p = fma_(p, r, 5.0000001201e-1f);
  return fma_(p, r * r, r) + 1.0f;
}
template <>
FASTSAMP_VINLINE double exp_poly<double>(double r) {
  // Taylor to degree 12 on |r| <= ln2/2 (truncation < 4e-18)
  double p = 1.0 / 479001600.0;
  p = fma_(p, r, 1.0 / 39916800.0);
  p = fma_(p, r, 1.0 / 3628800.0);
  p = fma_(p, r, 1.0 / 362880.0);
  p = fma_(p, r, 1.0 / 40320.0);
  p = fma_(p, r, 1.0 / 5040.0);
  p = fma_(p, r, 1.0 / 720.0);
  p = fma_(p, r, 1.0 / 120.0);
  p = fma_(p, r, 1.0 / 24.0);
  p = fma_(p, r, 1.0 / 6.0);
  p = fma_(p, r, 0.5);
  p = fma_(p, r, 1.0);
  return fma_(p, r, 1.0);
}

template <typename T>
FASTSAMP_VINLINE T exp(T x) {
  using C = ExpC<T>;
  using I = typename Bits<T>::I;
  x = x < C::lo ? C::lo : x;  // NaN passes both selects
  x = x > C::hi ? C::hi : x;
  const T t = fma_(x, C::log2e, C::shifter);
  const T n = t - C::shifter;                       // round(x / ln2)
  const I ni = as_int<T>(t) - as_int<T>(C::shifter);  // same, as an integer
  T r = fma_(-n, C::ln2_hi, x);
  r = fma_(-n, C::ln2_lo, r);
  const T p = exp_poly<T>(r);
  // 2^n as two factors so that subnormal results and overflow come out right
  const I n1 = ni >> 1;
  const I n2 = ni - n1;
  const T s1 = as_float<T>((n1 + Bits<T>::kBias) << Bits<T>::kMant);
  const T s2 = as_float<T>((n2 + Bits<T>::kBias) << Bits<T>::kMant);
  return p * s1 * s2;
}

// ---------------------------------------------------------------- log
template <typename T> struct LogC;
template <> struct LogC<float> {
  static constexpr int32_t off = 0x3f3504f3;  // bits of sqrt(1/2)
  static constexpr int32_t one = 0x3f800000;
  static constexpr int32_t mmask = 0x007fffff;
  static constexpr float tiny = 1.17549435e-38f;  // FLT_MIN
  static constexpr float up = 33554432.0f;        // 2^25
  static constexpr int32_t upk = 25;
  static constexpr float ln2_hi = 6.9313812256e-01f, ln2_lo = 9.0580006145e-06f;
};
template <> struct LogC<double> {
  static constexpr int64_t off = 0x3fe6a09e667f3bcdLL;
  static constexpr int64_t one = 0x3ff0000000000000LL;
  static constexpr int64_t mmask = 0x000fffffffffffffLL;
  static constexpr double tiny = 2.2250738585072014e-308;
  static constexpr double up = 18014398509481984.0;  // 2^54
  static constexpr int64_t upk = 54;
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
};

template <typename T>
FASTSAMP_VINLINE T log_R(T z, T w);
template <>
FASTSAMP_VINLINE float log_R<float>(float z, float w) {  // musl logf
  const float t1 = w * fma_(w, 0.24279078841f, 0.40000972152f);
  const float t2 = z * fma_(w, 0.28498786688f, 0.66666662693f);
  return t2 + t1;
}
template <>
FASTSAMP_VINLINE double log_R<double>(double z, double w) {  // musl log
  const double t1 = w * fma_(w, fma_(w, 1.531383769920937332e-01, 2.222219843214978396e-01),
                             3.999999999940941908e-01);
  const double t2 = z * fma_(w, fma_(w, fma_(w, 1.479819860511658591e-01, 1.818357216161805012e-01),
                                     2.857142874366239149e-01),
                             6.666666666666735130e-01);
  return t2 + t1;
}

// Branch-free for `omp simd` loops without AVX-512 masks: the cases are told apart by integer compares of the
// bits (for positive finite x they order as the values; every other x takes the specials of the last blend) and
// x 2^upk is computed for every x and blended (-ftrapping-math: GCC would otherwise keep a float compare, or a
// multiply that only some x take, as a branch, and the loop scalar).
template <typename T>
FASTSAMP_VINLINE T log(T x) {
  using C = LogC<T>;
  using I = typename Bits<T>::I;
  const I bx = as_int<T>(x);
  const I binf = as_int<T>(std::numeric_limits<T>::infinity());
  const bool sub = bx < as_int<T>(C::tiny);  // subnormal (or 0 / negative: fixed below)
  const T xs = blend<T>(sub, x * C::up, x);
  I ix = as_int<T>(xs);
  ix += C::one - C::off;
  const I k = (ix >> Bits<T>::kMant) - Bits<T>::kBias - (sub ? C::upk : 0);
  ix = (ix & C::mmask) + C::off;
  const T f = as_float<T>(ix) - T(1);
  const T hfsq = T(0.5) * f * f;
  const T s = f / (T(2) + f);
  const T z = s * s;
  const T w = z * z;
  const T R = log_R<T>(z, w);
  const T dk = static_cast<T>(k);
  T r = s * (hfsq + R) + dk * C::ln2_lo;
  r = dk * C::ln2_hi + ((r - hfsq) + f);
  // specials: log(±0) = -inf, log(inf) = inf, log(<0) = log(NaN) = NaN
  const T inf = std::numeric_limits<T>::infinity();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T sp = ((bx & std::numeric_limits<I>::max()) == 0) ? -inf : ((bx == binf) ? inf : nan);
  return blend<T>((bx > 0) & (bx < binf), r, sp);
}

// ---------------------------------------------------------------- sin, cos
template <typename T> struct TrigC;
template <> struct TrigC<float> {
  static constexpr float two_over_pi = 0.636619772367581343f;
  static constexpr float p1 = 1.5707963705062866f, p2 = -4.371138828673793e-08f,
                         p3 = -1.7151245100058819e-15f;
  static constexpr float shifter = 12582912.0f;
};
template <> struct TrigC<double> {
  static constexpr double two_over_pi = 0.63661977236758134308;
  static constexpr double p1 = 1.5707963267948966, p2 = 6.123233995736766e-17,
                          p3 = -1.4973849048591698e-33;
  static constexpr double shifter = 6755399441055744.0;
};

template <typename T>
FASTSAMP_VINLINE void sincos_poly(T r, T* s, T* c);
template <>
FASTSAMP_VINLINE void sincos_poly<float>(float r, float* s, float* c) {  // cephes sinf/cosf
  const float z = r * r;
  float ps = fma_(fma_(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f);
  *s = fma_(ps * z, r, r);
  float pc = fma_(fma_(2.443315711809948e-5f, z, -1.388731625493765e-3f), z, 4.166664568298827e-2f);
  *c = fma_(pc * z, z, fma_(-0.5f, z, 1.0f));
}
template <>
FASTSAMP_VINLINE void sincos_poly<double>(double x, double* s, double* c) {  // musl __sin/__cos
  const double z = x * x;
  const double w = z * z;
  const double rs = fma_(z, fma_(z, 2.75573137070700676789e-06, -1.98412698298579493134e-04),
                         8.33333333332248946124e-03) +
                    z * w * fma_(z, 1.58969099521155010221e-10, -2.50507602534068634195e-08);
  const double v = z * x;
  *s = fma_(v, fma_(z, rs, -1.66666666666666324348e-01), x);
  const double rc = z * fma_(z, fma_(z, 2.48015872894767294178e-05, -1.38888888888741095749e-03),
                             4.16666666666666019037e-02) +
                    w * w * fma_(z, fma_(z, -1.13596475577881948265e-11, 2.08757232129817482790e-09),
                                 -2.75573143513906633035e-07);
  const double hz = 0.5 * z;
  const double ww = 1.0 - hz;
  *c = ww + (((1.0 - ww) - hz) + z * rc);
}

// sin(x) and cos(x) together.
template <typename T>
FASTSAMP_VINLINE void sincos(T x, T* sn, T* cs) {
  using C = TrigC<T>;
  using I = typename Bits<T>::I;
  const T t = fma_(x, C::two_over_pi, C::shifter);
  const T q = t - C::shifter;
  const I qi = as_int<T>(t) - as_int<T>(C::shifter);
  T r = fma_(-q, C::p1, x);
  r = fma_(-q, C::p2, r);
  r = fma_(-q, C::p3, r);
  T s, c;
  sincos_poly<T>(r, &s, &c);
  const I quad = qi & 3;
  // quadrant 0: (s, c); 1: (c, -s); 2: (-s, -c); 3: (-c, s)
  const T ss = (quad & 1) ? c : s;
  const T cc = (quad & 1) ? s : c;
  *sn = (quad & 2) ? -ss : ss;
  *cs = ((quad + 1) & 2) ? -cc : cc;
}


// ---------------------------------------------------------------- 64-byte vectors
// GCC vector-extension versions of the above for the Philox normal generator
// (one 512-bit register: 16 float / 8 double lanes; vneg2log_unit and vsincos
// also on the AVX2 generator's 32-byte vectors). Same formulas as the scalar
// functions (log restricted to the Box–Muller range, see log_unit).
template <typename T>
struct V64 {
  typedef T V __attribute__((vector_size(64)));
  typedef typename Bits<T>::I I __attribute__((vector_size(64)));
};

// One register of the build's widest vector ISA: 64 bytes with AVX-512, 32 with AVX / AVX2,
// 16 otherwise (SSE2, NEON). The MLP engine (cpu/mlp.h) computes on these: GCC keeps vector
// types wider than the hardware's in memory and splits every operation, which made the engine
// 5-10x slower on an AVX2-only CPU with 64-byte vectors (benchmarks/RESULTS.md, "Nineteenth session").
#if defined(__AVX512F__)
#define FASTSAMP_NATIVE_BYTES 64
#elif defined(__AVX__)
#define FASTSAMP_NATIVE_BYTES 32
#else
#define FASTSAMP_NATIVE_BYTES 16
#endif
template <typename T>
struct VNative {
  typedef T V __attribute__((vector_size(FASTSAMP_NATIVE_BYTES)));
  typedef typename Bits<T>::I I __attribute__((vector_size(FASTSAMP_NATIVE_BYTES)));
};

// a * b + c per lane, one rounding where the CPU has FMA (fma_ is a * b + c without it): one
// AVX-512 FMA for 64-byte vectors, one AVX2 FMA for 32-byte ones, otherwise fma_ per lane (which
// GCC vectorises; 64-byte vectors split into two AVX2 FMAs through memory ran the mixture
// sampler 6 % slower on Zen 3).
template <typename V>
FASTSAMP_VINLINE V vfma(V a, V b, V c) {
  constexpr bool kF32 = sizeof(a[0]) == 4;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    if constexpr (kF32) {
      return reinterpret_cast<V>(_mm512_fmadd_ps(reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b),
                                                 reinterpret_cast<__m512>(c)));
    } else {
      return reinterpret_cast<V>(_mm512_fmadd_pd(reinterpret_cast<__m512d>(a), reinterpret_cast<__m512d>(b),
                                                 reinterpret_cast<__m512d>(c)));
    }
  }
#endif
#if defined(__FMA__)
  if constexpr (sizeof(V) == 32) {
    if constexpr (kF32) {
      return reinterpret_cast<V>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                 reinterpret_cast<__m256>(c)));
    } else {
      return reinterpret_cast<V>(_mm256_fmadd_pd(reinterpret_cast<__m256d>(a), reinterpret_cast<__m256d>(b),
                                                 reinterpret_cast<__m256d>(c)));
    }
  }
#endif
  V r;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(a[0])); ++l) r[l] = fma_(a[l], b[l], c[l]);
  return r;
}

template <typename V>
FASTSAMP_VINLINE V vsqrt(V a) {
#if defined(__AVX512F__)
  if constexpr (sizeof(a[0]) == 4) {
    return reinterpret_cast<V>(_mm512_sqrt_ps(reinterpret_cast<__m512>(a)));
  } else {
    return reinterpret_cast<V>(_mm512_sqrt_pd(reinterpret_cast<__m512d>(a)));
  }
#else
  V r;
  for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(a[0])); ++l) r[l] = __builtin_sqrt(a[l]);
  return r;
#endif
}

// -2 log(u) for u in [2^-126, 1] (normal, positive, finite: the Box–Muller
// uniform_open range), on vectors V of T (64 bytes unless given). float: the
// cephes logf polynomial (no division, ~1 ulp), evaluated Estrin-style for a
// short dependency chain; double: the musl formula of log<double> above. The
// factor -2 is folded into the coefficients: scaling by a power of two is exact,
// so this is -2 times the log computed the plain way (same roundings), minus one
// multiply.
template <typename T, typename V = typename V64<T>::V>
FASTSAMP_VINLINE V vneg2log_unit(V u) {
  typedef typename Bits<T>::I I __attribute__((vector_size(sizeof(V))));
  using C = LogC<T>;
  I ix = reinterpret_cast<I>(u);
  ix += C::one - C::off;
  const I k = (ix >> Bits<T>::kMant) - Bits<T>::kBias;
  ix = (ix & C::mmask) + C::off;
  const V f = reinterpret_cast<V>(ix) - T(1);
  const V dk = __builtin_convertvector(k, V);
  if constexpr (sizeof(T) == 4) {
    // log = f - z/2 + f z P(f) + k ln2, P of degree 8 (coefficients times -2 below)
    const V z = f * f;
    const V z2 = z * z;
    const V q01 = vfma(V{} + -2 * -2.4999993993E-1f, f, V{} + -2 * 3.3333331174E-1f);
    const V q23 = vfma(V{} + -2 * -1.6668057665E-1f, f, V{} + -2 * 2.0000714765E-1f);
    const V q45 = vfma(V{} + -2 * -1.2420140846E-1f, f, V{} + -2 * 1.4249322787E-1f);
    const V q67 = vfma(V{} + -2 * -1.1514610310E-1f, f, V{} + -2 * 1.1676998740E-1f);
    const V r03 = vfma(q23, z, q01);
    const V r47 = vfma(V{} + -2 * 7.0376836292E-2f, z2, vfma(q67, z, q45));
    const V p = vfma(r47, z2, r03);
    V y = p * (f * z);
    y = vfma(dk, V{} + -2 * -2.12194440e-4f, y);
    y = y + z;  // -2 * (-z / 2)
    return vfma(dk, V{} + -2 * 0.693359375f, vfma(f, V{} - 2.0f, y));
  } else {
    const V hfsq = -(f * f);  // -2 * (f^2 / 2)
    const V s = f / (T(2) + f);
    const V z = s * s;
    const V w = z * z;
    const V t1 = w * vfma(w, vfma(w, V{} + -2 * 1.531383769920937332e-01, V{} + -2 * 2.222219843214978396e-01),
                          V{} + -2 * 3.999999999940941908e-01);
    const V t2 = z * vfma(w, vfma(w, vfma(w, V{} + -2 * 1.479819860511658591e-01, V{} + -2 * 1.818357216161805012e-01),
                                  V{} + -2 * 2.857142874366239149e-01),
                          V{} + -2 * 6.666666666666735130e-01);
    const V R = t2 + t1;
    const V r = vfma(dk, V{} + -2 * C::ln2_lo, s * (hfsq + R));
    return vfma(dk, V{} + -2 * C::ln2_hi, vfma(f, V{} - 2.0, r - hfsq));
  }
}

// sin(x), cos(x) for |x| in the range of sincos<T> above, on vectors V of T
// (64 bytes unless given; same formulas).
template <typename T, typename V = typename V64<T>::V>
FASTSAMP_VINLINE void vsincos(V x, V* sn, V* cs) {
  typedef typename Bits<T>::I I __attribute__((vector_size(sizeof(V))));
  using C = TrigC<T>;
  const V t = vfma(x, V{} + C::two_over_pi, V{} + C::shifter);
  const V q = t - C::shifter;
  // the shifter's low mantissa bits are 0: the low bits of t are those of q
  const I qi = reinterpret_cast<I>(t);
  V r = vfma(-q, V{} + C::p1, x);
  r = vfma(-q, V{} + C::p2, r);
  if constexpr (sizeof(T) == 8) r = vfma(-q, V{} + C::p3, r);  // float: |q| <= 4 here, p3 q < 1e-14
  V s, c;
  const V z = r * r;
  if constexpr (sizeof(T) == 4) {
    const V ps = vfma(vfma(V{} - 1.9515295891e-4f, z, V{} + 8.3321608736e-3f), z, V{} - 1.6666654611e-1f);
    s = vfma(ps * z, r, r);
    const V pc = vfma(vfma(V{} + 2.443315711809948e-5f, z, V{} - 1.388731625493765e-3f), z,
                      V{} + 4.166664568298827e-2f);
    c = vfma(pc * z, z, vfma(V{} - 0.5f, z, V{} + 1.0f));
  } else {
    const V w = z * z;
    const V rs = vfma(z, vfma(z, V{} + 2.75573137070700676789e-06, V{} - 1.98412698298579493134e-04),
                      V{} + 8.33333333332248946124e-03) +
                 z * w * vfma(z, V{} + 1.58969099521155010221e-10, V{} - 2.50507602534068634195e-08);
    const V v = z * r;
    s = vfma(v, vfma(z, rs, V{} - 1.66666666666666324348e-01), r);
    const V rc = z * vfma(z, vfma(z, V{} + 2.48015872894767294178e-05, V{} - 1.38888888888741095749e-03),
                          V{} + 4.16666666666666019037e-02) +
                 w * w * vfma(z, vfma(z, V{} - 1.13596475577881948265e-11, V{} + 2.08757232129817482790e-09),
                              V{} - 2.75573143513906633035e-07);
    const V hz = T(0.5) * z;
    const V ww = T(1) - hz;
    c = ww + (((T(1) - ww) - hz) + z * rc);
  }
  // quadrant 0: (s, c); 1: (c, -s); 2: (-s, -c); 3: (-c, s): swap on bit 0,
  // sign of sin from bit 1 of q, of cos from bit 1 of q + 1 (moved to the sign bit)
  constexpr int kSh = 8 * static_cast<int>(sizeof(T)) - 2;
  const I sign = I{} + (static_cast<typename Bits<T>::I>(1) << (kSh + 1));
  const I swap = (qi & 1) != 0;
  const V ss = swap ? c : s;
  const V cc = swap ? s : c;
  *sn = reinterpret_cast<V>(reinterpret_cast<I>(ss) ^ ((qi << kSh) & sign));
  *cs = reinterpret_cast<V>(reinterpret_cast<I>(cc) ^ (((qi + 1) << kSh) & sign));
}

}  // namespace vm
}  // namespace fastsamp
