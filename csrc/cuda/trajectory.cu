// Op 9: em_step_logprob -- an Euler-Maruyama transition with its forward and
// Brownian-bridge log-densities, and its backward.
//
// Forward: a group of G lanes of one warp owns one chain. Each lane walks the
// row's quads j = lane, lane + G, ... (elements 4j .. 4j+3: the four normals of
// one philox call, counter (j, b, offset)), keeps x_next and three partial row
// sums in registers and the group reduces them with an xor butterfly
// (group_sum). Backward: elementwise with per-row scalars, a grid-stride loop
// over quads like sde_step. Quads are float4 / 2x double2 accesses when D % 4 == 0
// and every pointer is 16-byte aligned (`vec`, uniform over the grid), scalar
// otherwise (the last quad of a row being partial).
//
// Per-call constants are computed in double on the host and rounded to T once:
// inv_s2 = 1/s2, inv_b2 = 1/b2, q = sqrt(s2 + e2), lpf0 = D log(2 pi s2),
// lpb0 = D log(2 pi b2). With log_var, log(2 pi s^2) = log(2 pi s2) + log_var: the row
// sum of log_var is accumulated instead of a log per element.
#include <cmath>
#include <string>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kEmThreads = 256;

template <typename T>
struct EmConst {
  T h, s2, e2, c, inv_s2, inv_b2, q, lpf0, lpb0;
  bool has_pb;
};

template <typename T>
EmConst<T> em_const(int64_t D, double h, double s2, double e2, double c, double b2) {
  const double two_pi = 6.283185307179586476925286766559;
  EmConst<T> k;
  k.h = static_cast<T>(h);
  k.s2 = static_cast<T>(s2);
  k.e2 = static_cast<T>(e2);
  k.c = static_cast<T>(c);
  k.inv_s2 = static_cast<T>(1.0 / s2);
  k.has_pb = b2 != 0.0;
  k.inv_b2 = static_cast<T>(k.has_pb ? 1.0 / b2 : 0.0);
  k.q = static_cast<T>(std::sqrt(s2 + e2));
  k.lpf0 = static_cast<T>(static_cast<double>(D) * std::log(two_pi * s2));
  k.lpb0 = static_cast<T>(k.has_pb ? static_cast<double>(D) * std::log(two_pi * b2) : 0.0);
  return k;
}

// The n (<= 4) elements of a quad at p, zeros past n; aligned vector load when vec.
template <typename T>
__device__ __forceinline__ void load_quad(const T* __restrict__ p, bool vec, int n, T v[4]) {
  if (vec) {
    load4_aligned(p, v);
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r) v[r] = r < n ? p[r] : static_cast<T>(0);
  }
}

template <typename T>
__device__ __forceinline__ void store_quad(T* __restrict__ p, bool vec, int n, const T v[4]) {
  if (vec) {
    store4_aligned(p, v);
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (r < n) p[r] = v[r];
  }
}

// GIVEN: x_next is read (evaluate); otherwise sampled, x_next = x + h drift + sqrt(s^2 + e2) xi,
// xi from `noise` (HAS_NOISE) or the Philox draw (seed, offset) of global chain chain0 + b.
template <typename T, int G, bool HAS_LV, bool GIVEN, bool HAS_NOISE>
__global__ void __launch_bounds__(kEmThreads)
    em_step_logprob_kernel(const T* __restrict__ x, const T* __restrict__ drift,
                           const T* __restrict__ log_var, const T* __restrict__ x_next,
                           const T* __restrict__ noise, T* __restrict__ y, T* __restrict__ log_pf,
                           T* __restrict__ log_pb, const int64_t B, const int64_t D,
                           const uint64_t seed, const uint64_t offset, uint64_t chain0, const EmConst<T> k,
                           const bool vec) {
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool active = b < B;
  const int64_t bc = active ? b : B - 1;  // inactive groups shadow the last chain, write nothing
  const int64_t row = bc * D;
  const int64_t Q = (D + 3) / 4;
  T sv = 0, slv = 0, su = 0;
  for (int64_t j = lane; j < Q; j += G) {
    const int64_t base = row + 4 * j;
    const int64_t rem = D - 4 * j;
    const int n = rem < 4 ? static_cast<int>(rem) : 4;
    T xv[4], dv[4], lv[4] = {0, 0, 0, 0}, yv[4], nv[4] = {0, 0, 0, 0};
    load_quad(x + base, vec, n, xv);
    load_quad(drift + base, vec, n, dv);
    if constexpr (HAS_LV) load_quad(log_var + base, vec, n, lv);
    if constexpr (GIVEN) {
      load_quad(x_next + base, vec, n, yv);
    } else if constexpr (HAS_NOISE) {
      load_quad(noise + base, vec, n, nv);
    } else {
      normal4<T>(seed, offset, static_cast<uint32_t>(chain0 + bc), static_cast<uint32_t>(j), nv);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const T mean = xv[r] + k.h * dv[r];
      const T var = HAS_LV ? k.s2 * exp(lv[r]) : k.s2;
      if constexpr (!GIVEN) yv[r] = mean + (HAS_LV ? sqrt(var + k.e2) : k.q) * nv[r];
      if (r < n) {
        const T v = yv[r] - mean;
        const T u = xv[r] - k.c * yv[r];
        sv += HAS_LV ? v * v / var : v * v;
        slv += lv[r];
        su += u * u;
      }
    }
    if constexpr (!GIVEN) {
      if (active) store_quad(y + base, vec, n, yv);
    }
  }
  sv = group_sum<G>(sv);
  if constexpr (HAS_LV) slv = group_sum<G>(slv);
  su = group_sum<G>(su);
  if (active && lane == 0) {
    log_pf[b] = static_cast<T>(-0.5) * ((HAS_LV ? sv : sv * k.inv_s2) + slv + k.lpf0);
    log_pb[b] = k.has_pb ? static_cast<T>(-0.5) * (su * k.inv_b2 + k.lpb0) : static_cast<T>(0);
  }
}

// v = x_next - x - h drift, u = x - c x_next, a = g_pf v / s^2, w = g_pb u / b2,
// G = g_x_next - a + c w (g_x_next null: 0); g_x = a - w + R G, g_drift = h (a + R G),
// g_log_var = g_pf (v^2/(2 s^2) - 1/2) + R G s^2 v / (2 (s^2 + e2)), g_x_next_out = G.
template <typename T, bool HAS_LV, bool REPARAM, bool WANT_GXN>
__global__ void __launch_bounds__(kEmThreads)
    em_step_logprob_backward_kernel(const T* __restrict__ x, const T* __restrict__ drift,
                                    const T* __restrict__ log_var, const T* __restrict__ x_next,
                                    const T* __restrict__ g_x_next, const T* __restrict__ g_log_pf,
                                    const T* __restrict__ g_log_pb, T* __restrict__ g_x,
                                    T* __restrict__ g_drift, T* __restrict__ g_log_var,
                                    T* __restrict__ g_x_next_out, const int64_t B, const int64_t D,
                                    const int64_t Q, const EmConst<T> k, const bool vec) {
  const int64_t total = B * Q;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool idx32 = total <= 0xFFFFFFFFLL;  // uniform: cheap 32-bit division
  const T half = static_cast<T>(0.5);
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < total;
       it += stride) {
    int64_t b, j;
    if (idx32) {
      const uint32_t iu = static_cast<uint32_t>(it), qu = static_cast<uint32_t>(Q);
      const uint32_t bu = iu / qu;
      b = bu;
      j = iu - bu * qu;
    } else {
      b = it / Q;
      j = it - b * Q;
    }
    const int64_t base = b * D + 4 * j;
    const int64_t rem = D - 4 * j;
    const int n = rem < 4 ? static_cast<int>(rem) : 4;
    const T ga = g_log_pf[b];
    const T gas = ga * k.inv_s2;
    const T gw = k.has_pb ? g_log_pb[b] * k.inv_b2 : static_cast<T>(0);
    T xv[4], dv[4], yv[4], lv[4] = {0, 0, 0, 0}, gv[4] = {0, 0, 0, 0};
    load_quad(x + base, vec, n, xv);
    load_quad(drift + base, vec, n, dv);
    load_quad(x_next + base, vec, n, yv);
    if constexpr (HAS_LV) load_quad(log_var + base, vec, n, lv);
    if (g_x_next != nullptr) load_quad(g_x_next + base, vec, n, gv);
    T ox[4], od[4], ol[4], og[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const T v = yv[r] - (xv[r] + k.h * dv[r]);
      const T var = HAS_LV ? k.s2 * exp(lv[r]) : k.s2;
      T a = HAS_LV ? ga * v / var : gas * v;
      const T w = gw * (xv[r] - k.c * yv[r]);
      const T g = gv[r] - a + k.c * w;
      T gx = a - w;
      if constexpr (REPARAM) {
        gx += g;
        a += g;
      }
      ox[r] = gx;
      od[r] = k.h * a;
      if constexpr (HAS_LV) {
        T gl = ga * (half * v * v / var - half);
        if constexpr (REPARAM) gl += g * half * var * v / (var + k.e2);
        ol[r] = gl;
      }
      og[r] = g;
    }
    store_quad(g_x + base, vec, n, ox);
    store_quad(g_drift + base, vec, n, od);
    if constexpr (HAS_LV) store_quad(g_log_var + base, vec, n, ol);
    if constexpr (WANT_GXN) store_quad(g_x_next_out + base, vec, n, og);
  }
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

template <typename T, int G, bool HAS_LV, bool GIVEN, bool HAS_NOISE>
void run_fwd_cfg(const void* x, const void* drift, const void* lv, const void* xn, const void* noise,
                 void* y, void* pf, void* pb, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0,
                 const EmConst<T>& k, bool vec, cudaStream_t stream) {
  static_assert(kEmThreads % G == 0, "G must divide the block");
  const int64_t per_block = kEmThreads / G;
  const int64_t blocks = (B + per_block - 1) / per_block;
  if (blocks > 2147483647LL)
    throw std::invalid_argument("fastsamp cuda em_step_logprob: B too large");
  em_step_logprob_kernel<T, G, HAS_LV, GIVEN, HAS_NOISE>
      <<<static_cast<unsigned>(blocks), kEmThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(drift), static_cast<const T*>(lv),
          static_cast<const T*>(xn), static_cast<const T*>(noise), static_cast<T*>(y),
          static_cast<T*>(pf), static_cast<T*>(pb), B, D, seed, offset, chain0, k, vec);
  check_launch("em_step_logprob");
}

template <typename T, int G, bool HAS_LV>
void run_fwd_mode(const void* x, const void* drift, const void* lv, const void* xn, const void* noise,
                  void* y, void* pf, void* pb, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0,
                  const EmConst<T>& k, bool vec, cudaStream_t st) {
  if (xn != nullptr)
    run_fwd_cfg<T, G, HAS_LV, true, false>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  else if (noise != nullptr)
    run_fwd_cfg<T, G, HAS_LV, false, true>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  else
    run_fwd_cfg<T, G, HAS_LV, false, false>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
}

template <typename T, int G>
void run_fwd_lv(const void* x, const void* drift, const void* lv, const void* xn, const void* noise,
                void* y, void* pf, void* pb, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0,
                const EmConst<T>& k, bool vec, cudaStream_t st) {
  if (lv != nullptr)
    run_fwd_mode<T, G, true>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  else
    run_fwd_mode<T, G, false>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
}

template <typename T>
void run_fwd(const void* x, const void* drift, const void* lv, const void* xn, const void* noise, void* y,
             void* pf, void* pb, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0, double h, double s2,
             double e2, double c, double b2, cudaStream_t st) {
  const EmConst<T> k = em_const<T>(D, h, s2, e2, c, b2);
  const bool vec = (D % 4 == 0) && aligned16(x) && aligned16(drift) && aligned16(lv) && aligned16(xn) &&
                   aligned16(noise) && aligned16(xn == nullptr ? y : nullptr);
  // About one or two quads per lane.
  const int64_t Q = (D + 3) / 4;
  if (Q <= 1) return run_fwd_lv<T, 1>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  if (Q <= 2) return run_fwd_lv<T, 2>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  if (Q <= 4) return run_fwd_lv<T, 4>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  if (Q <= 8) return run_fwd_lv<T, 8>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  if (Q <= 16) return run_fwd_lv<T, 16>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
  return run_fwd_lv<T, 32>(x, drift, lv, xn, noise, y, pf, pb, B, D, seed, offset, chain0, k, vec, st);
}

template <typename T, bool HAS_LV, bool REPARAM, bool WANT_GXN>
void run_bwd_cfg(const void* x, const void* drift, const void* lv, const void* xn, const void* gxn,
                 const void* gpf, const void* gpb, void* gx, void* gdr, void* glv, void* gxno, int64_t B,
                 int64_t D, const EmConst<T>& k, bool vec, cudaStream_t stream) {
  const int64_t Q = (D + 3) / 4;
  const int64_t total = B * Q;
  const int sms = current_sm_count("em_step_logprob_backward");
  int64_t blocks = (total + kEmThreads - 1) / kEmThreads;
  const int64_t cap = static_cast<int64_t>(sms) * 16;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  em_step_logprob_backward_kernel<T, HAS_LV, REPARAM, WANT_GXN>
      <<<static_cast<unsigned>(blocks), kEmThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(drift), static_cast<const T*>(lv),
          static_cast<const T*>(xn), static_cast<const T*>(gxn), static_cast<const T*>(gpf),
          static_cast<const T*>(gpb), static_cast<T*>(gx), static_cast<T*>(gdr), static_cast<T*>(glv),
          static_cast<T*>(gxno), B, D, Q, k, vec);
  check_launch("em_step_logprob_backward");
}

template <typename T, bool HAS_LV>
void run_bwd_flags(bool reparam, const void* x, const void* drift, const void* lv, const void* xn,
                   const void* gxn, const void* gpf, const void* gpb, void* gx, void* gdr, void* glv,
                   void* gxno, int64_t B, int64_t D, const EmConst<T>& k, bool vec, cudaStream_t st) {
  const bool want = gxno != nullptr;
  if (reparam && want)
    run_bwd_cfg<T, HAS_LV, true, true>(x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
  else if (reparam)
    run_bwd_cfg<T, HAS_LV, true, false>(x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
  else if (want)
    run_bwd_cfg<T, HAS_LV, false, true>(x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
  else
    run_bwd_cfg<T, HAS_LV, false, false>(x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
}

template <typename T>
void run_bwd(const void* x, const void* drift, const void* lv, const void* xn, const void* gxn, const void* gpf,
             const void* gpb, void* gx, void* gdr, void* glv, void* gxno, int64_t B, int64_t D, double h,
             double s2, double e2, double c, double b2, bool reparam, cudaStream_t st) {
  const EmConst<T> k = em_const<T>(D, h, s2, e2, c, b2);
  const bool vec = (D % 4 == 0) && aligned16(x) && aligned16(drift) && aligned16(lv) && aligned16(xn) &&
                   aligned16(gxn) && aligned16(gx) && aligned16(gdr) && aligned16(glv) && aligned16(gxno);
  if (lv != nullptr)
    run_bwd_flags<T, true>(reparam, x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
  else
    run_bwd_flags<T, false>(reparam, x, drift, lv, xn, gxn, gpf, gpb, gx, gdr, glv, gxno, B, D, k, vec, st);
}

void check_sizes(const char* op, int64_t B, int64_t D) {
  if (B < 0 || D < 0 || B > 0xFFFFFFFFLL || (D + 3) / 4 > 0xFFFFFFFFLL)
    throw std::invalid_argument(std::string("fastsamp cuda ") + op + ": bad sizes B=" + std::to_string(B) +
                                " D=" + std::to_string(D));
}

}  // namespace

void launch_em_step_logprob(int dtype, const void* x, const void* drift, const void* log_var,
                            const void* x_next, const void* noise, void* y, void* log_pf, void* log_pb,
                            int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0, double h, double s2,
                            double e2, double c, double b2, void* stream) {
  check_dtype(dtype, "em_step_logprob");
  check_sizes("em_step_logprob", B, D);
  if (B == 0 || D == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run_fwd<float>(x, drift, log_var, x_next, noise, y, log_pf, log_pb, B, D, seed, offset, chain0, h, s2, e2, c, b2, st);
  else
    run_fwd<double>(x, drift, log_var, x_next, noise, y, log_pf, log_pb, B, D, seed, offset, chain0, h, s2, e2, c, b2, st);
}

void launch_em_step_logprob_backward(int dtype, const void* x, const void* drift, const void* log_var,
                                     const void* x_next, const void* g_x_next, const void* g_log_pf,
                                     const void* g_log_pb, void* g_x, void* g_drift, void* g_log_var,
                                     void* g_x_next_out, int64_t B, int64_t D, double h, double s2, double e2,
                                     double c, double b2, bool reparam, void* stream) {
  check_dtype(dtype, "em_step_logprob_backward");
  check_sizes("em_step_logprob_backward", B, D);
  if (B == 0 || D == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run_bwd<float>(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, g_x, g_drift, g_log_var, g_x_next_out,
                   B, D, h, s2, e2, c, b2, reparam, st);
  else
    run_bwd<double>(x, drift, log_var, x_next, g_x_next, g_log_pf, g_log_pb, g_x, g_drift, g_log_var,
                    g_x_next_out, B, D, h, s2, e2, c, b2, reparam, st);
}

}  // namespace cuda
}  // namespace fastsamp
