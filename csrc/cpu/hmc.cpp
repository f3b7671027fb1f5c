// HMC pieces with the trapezoid along the leapfrog path: leapfrog (op 6a), leapfrog_finish (6b),
// hmc_accept (6c) and the partial momentum refresh (6d), streaming passes over rows
// (cpu/stream.h). See docs/backend-contract.md.
#include <cmath>
#include <cstring>

#include "cpu/ops.h"
#include "cpu/random.h"
#include "cpu/stream.h"

namespace fastsamp {
namespace cpu {
namespace {

// Half kick and drift: p_half = p + (eps/2) s, x_next = x + eps p_half.
template <typename T, int DC>
void leapfrog_impl(const T* __restrict x, const T* __restrict p, const T* __restrict s,
                   const T* __restrict step, int64_t B, int Drt, T* __restrict x_next, T* __restrict p_half) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T e = step[b];
      const T he = T(0.5) * e;
      const int64_t o = b * D;
#pragma omp simd
      for (int d = 0; d < D; ++d) {
        const T ph = p[o + d] + he * s[o + d];
        p_half[o + d] = ph;
        x_next[o + d] = x[o + d] + e * ph;
      }
    }
  });
}

// Second half kick p_next = p_half + (eps/2) s_next and one trapezoid segment
// delta_logp += 1/2 (s + s_next).(x_next - x).
template <typename T, int DC>
void leapfrog_finish_impl(const T* __restrict x, const T* __restrict xn, const T* __restrict ph,
                          const T* __restrict s, const T* __restrict sn, const T* __restrict step,
                          const T* __restrict dlp, int64_t B, int Drt, T* __restrict p_next,
                          T* __restrict dlp_next) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T he = T(0.5) * step[b];
      const int64_t o = b * D;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int d = 0; d < D; ++d) {
        p_next[o + d] = ph[o + d] + he * sn[o + d];
        acc += (s[o + d] + sn[o + d]) * (xn[o + d] - x[o + d]);
      }
      dlp_next[b] = dlp[b] + T(0.5) * acc;
    }
  });
}

// log alpha = delta_logp - 1/2 |p'|^2 + 1/2 |p|^2.
template <typename T, int DC>
void hmc_accept_impl(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                     const T* __restrict sp, const T* __restrict p, const T* __restrict pp,
                     const T* __restrict dlp, const MhUniforms<T> un, int64_t B, int Drt, T* __restrict x_new,
                     T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    un.rows(b_begin, b_end, [&](int64_t b, T log_u) __attribute__((always_inline)) {
      const int64_t o = b * D;
      T k0 = 0, k1 = 0;
#pragma omp simd reduction(+ : k0, k1)
      for (int d = 0; d < D; ++d) {
        k0 += p[o + d] * p[o + d];
        k1 += pp[o + d] * pp[o + d];
      }
      accept_row<T>(b, (dlp[b] - T(0.5) * k1) + T(0.5) * k0, log_u, xp + o, x + o, sp + o, s + o, D, x_new + o,
                    s_new + o, accepted, log_alpha);
    });
  });
}

// p' = damping p + sqrt(1 - damping^2) xi.
template <typename T, int DC>
void momentum_refresh_impl(const T* __restrict p, T damp, T c, const T* noise, int64_t B, int Drt,
                           uint64_t seed, uint64_t offset, uint64_t chain0, T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  const T* in[1] = {p};
  noise_pass<T>(noise, B, D, seed, offset, chain0, in, 1, out, [=](int64_t i, T xi) { return damp * p[i] + c * xi; },
                [=](int64_t i, auto& v, auto xi) {
                  using V = std::remove_reference_t<decltype(v)>;
                  V pv;
                  std::memcpy(&pv, p + i, sizeof(V));
                  v = damp * pv + c * xi;
                });
}

}  // namespace

void leapfrog(int dtype, uintptr_t x, uintptr_t p, uintptr_t score, uintptr_t step_size, int64_t B,
              int64_t D, uintptr_t x_next, uintptr_t p_half) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    leapfrog_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(p), ptr<T>(score), ptr<T>(step_size), B,
                                          static_cast<int>(D), ptr<T>(x_next), ptr<T>(p_half));
  });
}

void leapfrog_finish(int dtype, uintptr_t x, uintptr_t x_next, uintptr_t p_half, uintptr_t score,
                     uintptr_t score_next, uintptr_t step_size, uintptr_t delta_logp, int64_t B, int64_t D,
                     uintptr_t p_next, uintptr_t delta_logp_next) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    leapfrog_finish_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(x_next), ptr<T>(p_half), ptr<T>(score),
                                                 ptr<T>(score_next), ptr<T>(step_size), ptr<T>(delta_logp),
                                                 B, static_cast<int>(D), ptr<T>(p_next),
                                                 ptr<T>(delta_logp_next));
  });
}

void hmc_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop, uintptr_t p,
                uintptr_t p_prop, uintptr_t delta_logp, uintptr_t u, uint64_t seed, uint64_t offset,
                uint64_t chain_offset, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                uintptr_t accepted, uintptr_t log_alpha) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    hmc_accept_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(x_prop), ptr<T>(score), ptr<T>(score_prop),
                                            ptr<T>(p), ptr<T>(p_prop), ptr<T>(delta_logp),
                                            MhUniforms<T>{ptr<T>(u), seed, offset, chain_offset}, B,
                                            static_cast<int>(D), ptr<T>(x_new), ptr<T>(score_new),
                                            ptr<uint8_t>(accepted), ptr<T>(log_alpha));
  });
}

void momentum_refresh(int dtype, uintptr_t p, double damping, uintptr_t noise, int64_t B, int64_t D,
                      uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    const T damp = static_cast<T>(damping);
    const T c = static_cast<T>(std::sqrt(1.0 - damping * damping));
    momentum_refresh_impl<T, decltype(dc)::value>(ptr<T>(p), damp, c, ptr<T>(noise), B, static_cast<int>(D), seed,
                                                  offset, chain_offset, ptr<T>(out));
  });
}

}  // namespace cpu
}  // namespace fastsamp
