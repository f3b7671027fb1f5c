// Op 5: score_mh_accept -- MH test of a MALA proposal with the trapezoid
// (path-integral) estimate of logp(x') - logp(x) from scores.
//
// A group of G lanes of one warp reduces one chain over D (lane-strided, so
// the group's loads are coalesced), xor-butterfly sums (all lanes agree on the
// decision), then the group copies the selected (x, score) row.
#include <string>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kMhThreads = 256;

template <typename T, int G>
__global__ void __launch_bounds__(kMhThreads)
    score_mh_accept_kernel(const T* __restrict__ x, const T* __restrict__ x_prop,
                           const T* __restrict__ score, const T* __restrict__ score_prop,
                           const T* __restrict__ step_size, const T* __restrict__ u,
                           const T* __restrict__ interior, const int64_t m,
                           T* __restrict__ x_new, T* __restrict__ score_new,
                           bool* __restrict__ accepted, T* __restrict__ log_alpha,
                           const int64_t B, const int64_t D) {
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool active = b < B;
  const int64_t bc = active ? b : B - 1;  // inactive groups shadow the last chain, write nothing
  const int64_t row = bc * D;
  const int64_t plane = B * D;
  const T eps = step_size[bc];
  const T half = static_cast<T>(0.5);

  // Same grouping as the reference: dlogP = (½ (s·d + s'·d) + Σ_i s_i·d) / n,
  // log q(x|x') - log q(x'|x) = (|d - ε s|² - |d + ε s'|²) / (4ε).
  T a_s = 0, a_sp = 0, a_int = 0, sf = 0, sb = 0;
  for (int64_t d = lane; d < D; d += G) {
    const T xv = x[row + d];
    const T xpv = x_prop[row + d];
    const T sv = score[row + d];
    const T spv = score_prop[row + d];
    const T dd = xpv - xv;
    a_s = fma(sv, dd, a_s);
    a_sp = fma(spv, dd, a_sp);
    for (int64_t i = 0; i < m; ++i) a_int = fma(interior[i * plane + row + d], dd, a_int);
    const T e1 = dd - eps * sv;
    const T e2 = dd + eps * spv;
    sf = fma(e1, e1, sf);
    sb = fma(e2, e2, sb);
  }
  a_s = group_sum<G>(a_s);
  a_sp = group_sum<G>(a_sp);
  a_int = group_sum<G>(a_int);
  sf = group_sum<G>(sf);
  sb = group_sum<G>(sb);

  const T dlogp = (half * (a_s + a_sp) + a_int) / static_cast<T>(m + 1);
  const T la = dlogp + (sf - sb) / (static_cast<T>(4) * eps);
  const bool ok = log(u[bc]) < la;  // NaN -> rejected

  if (active) {
    if (lane == 0) {
      accepted[b] = ok;
      log_alpha[b] = la;
    }
    const T* xs = ok ? x_prop : x;
    const T* ss = ok ? score_prop : score;
    for (int64_t d = lane; d < D; d += G) {
      x_new[row + d] = xs[row + d];
      score_new[row + d] = ss[row + d];
    }
  }
}

template <typename T, int G>
void run_cfg(const void* x, const void* xp, const void* s, const void* sp, const void* eps,
             const void* u, const void* interior, int64_t m, void* x_new, void* s_new, void* acc,
             void* la, int64_t B, int64_t D, cudaStream_t stream) {
  static_assert(kMhThreads % G == 0, "G must divide the block");
  const int64_t per_block = kMhThreads / G;
  const int64_t blocks = (B + per_block - 1) / per_block;
  if (blocks > 2147483647LL)
    throw std::invalid_argument("fastsamp cuda score_mh_accept: B too large");
  score_mh_accept_kernel<T, G><<<static_cast<unsigned>(blocks), kMhThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(xp), static_cast<const T*>(s),
      static_cast<const T*>(sp), static_cast<const T*>(eps), static_cast<const T*>(u),
      static_cast<const T*>(interior), m, static_cast<T*>(x_new), static_cast<T*>(s_new),
      static_cast<bool*>(acc), static_cast<T*>(la), B, D);
  check_launch("score_mh_accept");
}

template <typename T>
void run(const void* x, const void* xp, const void* s, const void* sp, const void* eps,
         const void* u, const void* interior, int64_t m, void* x_new, void* s_new, void* acc,
         void* la, int64_t B, int64_t D, cudaStream_t st) {
  // About 4 elements per lane.
  if (D <= 4) return run_cfg<T, 1>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
  if (D <= 8) return run_cfg<T, 2>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
  if (D <= 16) return run_cfg<T, 4>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
  if (D <= 32) return run_cfg<T, 8>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
  if (D <= 64) return run_cfg<T, 16>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
  return run_cfg<T, 32>(x, xp, s, sp, eps, u, interior, m, x_new, s_new, acc, la, B, D, st);
}

}  // namespace

void launch_score_mh_accept(int dtype, const void* x, const void* x_prop, const void* score,
                            const void* score_prop, const void* step_size, const void* u,
                            const void* interior, int64_t m, void* x_new, void* score_new,
                            void* accepted, void* log_alpha, int64_t B, int64_t D, void* stream) {
  check_dtype(dtype, "score_mh_accept");
  if (B < 0 || D < 0 || m < 0)
    throw std::invalid_argument("fastsamp cuda score_mh_accept: bad sizes");
  if (interior == nullptr) m = 0;
  if (B == 0) return;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run<float>(x, x_prop, score, score_prop, step_size, u, interior, m, x_new, score_new, accepted,
               log_alpha, B, D, st);
  else
    run<double>(x, x_prop, score, score_prop, step_size, u, interior, m, x_new, score_new,
                accepted, log_alpha, B, D, st);
}

}  // namespace cuda
}  // namespace fastsamp
