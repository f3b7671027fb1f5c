// The trajectory family on CUDA: op 9, em_step_logprob -- an Euler-Maruyama transition with
// its forward and Brownian-bridge log-densities, and its backward. (The whole-trajectory
// policy ops have no CUDA kernel.)
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

// GIVEN: x_next is read (evaluate); otherwise sampled, x_next = x + h drift + sqrt(s^2 + e2) xi,
// xi from `noise` (HAS_NOISE) or the Philox draw (seed, offset) of global chain chain0 + b.
template <typename T, int G, bool HAS_LV, bool GIVEN, bool HAS_NOISE>
__global__ void __launch_bounds__(kEmThreads)
    em_step_logprob_kernel(const T* __restrict__ x, const T* __restrict__ drift,
                           const T* __restrict__ log_var, const T* __restrict__ x_next,
                           const T* __restrict__ noise, T* __restrict__ y, T* __restrict__ log_pf,
                           T* __restrict__ log_pb, const int64_t B, const int64_t D,
                           const U64Arg seed_a, const U64Arg offset_a, const U64Arg chain_a, const EmConst<T> k,
                           const bool vec) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  static_assert(kEmThreads % G == 0, "G must divide the block");
  const GroupChain ch = group_chain<G>(B);
  const int lane = ch.lane;
  const int64_t b = ch.b, bc = ch.bc;
  const bool active = ch.active;
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
  const bool idx32 = total <= 0xFFFFFFFFLL;
  const T half = static_cast<T>(0.5);
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < total;
       it += stride) {
    int64_t b, j;
    quad_coords(it, Q, idx32, b, j);
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

// with_quads (dtype dispatch, size checks) with both entry points' per-call constants:
// f(EmConst<T>, Q), Q = ceil(D / 4), unless there is nothing to compute.
template <typename F>
void with_em_const(int dtype, const char* op, int64_t B, int64_t D, double h, double s2, double e2, double c,
                   double b2, F&& f) {
  with_quads(dtype, op, B, D, [&](auto tag, int64_t Q) { f(em_const<decltype(tag)>(D, h, s2, e2, c, b2), Q); });
}

}  // namespace

void em_step_logprob(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uintptr_t seed_t, uint64_t offset,
                     uintptr_t offset_t,
                     uint64_t chain_offset, uintptr_t chain_offset_t, double h, double s2, double e2, double c,
                     double b2, uintptr_t y,
                     uintptr_t log_pf, uintptr_t log_pb, uintptr_t stream) {
  const char* op = "em_step_logprob";
  with_em_const(dtype, op, B, D, h, s2, e2, c, b2, [&](const auto& k, int64_t Q) {
    using T = decltype(k.h);
    const bool vec = vec_quads(D, {x, drift, log_var, x_next, noise, x_next == 0 ? y : 0});
    const int source = x_next != 0 ? 0 : noise != 0 ? 1 : 2;  // x_next given, noise tensor, Philox
    // About one or two quads per lane.
    with_group(Q, [&](auto g) {
      with_const<2>(log_var != 0, [&](auto has_lv) {
        with_const<3>(source, [&](auto src) {
          constexpr int G = decltype(g)::value, S = decltype(src)::value;
          em_step_logprob_kernel<T, G, decltype(has_lv)::value, S == 0, S == 1>
              <<<group_blocks(B, G, kEmThreads, op), kEmThreads, 0, as_stream(stream)>>>(
                  in<T>(x), in<T>(drift), in<T>(log_var), in<T>(x_next), in<T>(noise), out<T>(y), out<T>(log_pf),
                  out<T>(log_pb), B, D, u64_arg(seed, seed_t), u64_arg(offset, offset_t), u64_arg(chain_offset,
                  chain_offset_t), k, vec);
          check_launch(op);
        });
      });
    });
  });
}

void em_step_logprob_backward(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                              uintptr_t g_x_next, uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D,
                              double h, double s2, double e2, double c, double b2, bool reparam, uintptr_t g_x,
                              uintptr_t g_drift, uintptr_t g_log_var, uintptr_t g_x_next_out, uintptr_t stream) {
  const char* op = "em_step_logprob_backward";
  with_em_const(dtype, op, B, D, h, s2, e2, c, b2, [&](const auto& k, int64_t Q) {
    using T = decltype(k.h);
    const bool vec = vec_quads(D, {x, drift, log_var, x_next, g_x_next, g_x, g_drift, g_log_var, g_x_next_out});
    with_const<2>(log_var != 0, [&](auto has_lv) {
      with_const<2>(reparam, [&](auto rp) {
        with_const<2>(g_x_next_out != 0, [&](auto want_gxn) {
          em_step_logprob_backward_kernel<T, decltype(has_lv)::value, decltype(rp)::value, decltype(want_gxn)::value>
              <<<stride_blocks(B * Q, kEmThreads, op), kEmThreads, 0, as_stream(stream)>>>(
                  in<T>(x), in<T>(drift), in<T>(log_var), in<T>(x_next), in<T>(g_x_next), in<T>(g_log_pf),
                  in<T>(g_log_pb), out<T>(g_x), out<T>(g_drift), out<T>(g_log_var), out<T>(g_x_next_out), B, D, Q,
                  k, vec);
          check_launch(op);
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fastsamp
