// The mh family on CUDA: op 5, score_mh_accept -- MH test of a MALA proposal with the trapezoid
// (path-integral) estimate of logp(x') - logp(x) from scores; u read, or drawn in-kernel. (mala_propose and line_points
// have no CUDA kernel: the dispatcher runs them on Triton.)
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
                           const T* __restrict__ step_size, const T* __restrict__ u, const U64Arg seed_a,
                           const U64Arg offset_a, const U64Arg chain_a, const T* __restrict__ interior,
                           const int64_t m,
                           T* __restrict__ x_new, T* __restrict__ score_new,
                           bool* __restrict__ accepted, T* __restrict__ log_alpha,
                           const int64_t B, const int64_t D) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  static_assert(kMhThreads % G == 0, "G must divide the block");
  const GroupChain ch = group_chain<G>(B);
  const int lane = ch.lane;
  const int64_t b = ch.b, bc = ch.bc;
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
  // u given, or the MH uniform of chain chain0 + bc in draw (seed, offset) (ops.uniform's bits)
  const T ub = u ? u[bc] : mh_uniform<T>(seed, offset, static_cast<uint32_t>(chain0 + bc));
  const bool ok = log(ub) < la;  // NaN -> rejected

  if (ch.active) {
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

}  // namespace

void score_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                     uintptr_t step_size, uintptr_t u, uint64_t seed, uintptr_t seed_t, uint64_t offset,
                     uintptr_t offset_t, uint64_t chain_offset, uintptr_t chain_offset_t,
                     uintptr_t interior, int64_t m, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                     uintptr_t accepted, uintptr_t log_alpha, uintptr_t stream) {
  const char* op = "score_mh_accept";
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    check_chain_sizes(op, B, D);
    if (m < 0) throw std::invalid_argument(op_error(op, "bad interior count m=" + std::to_string(m)));
    // interior 0: the m sets follow score_prop's first B rows (score_prop (m + 1) B rows, one batch's scores)
    if (interior == 0) interior = score_prop + static_cast<uintptr_t>(B * D) * sizeof(T);
    if (B == 0) return;
    // About 4 elements per lane.
    with_group((D + 3) / 4, [&](auto g) {
      constexpr int G = decltype(g)::value;
      score_mh_accept_kernel<T, G><<<group_blocks(B, G, kMhThreads, op), kMhThreads, 0, as_stream(stream)>>>(
          in<T>(x), in<T>(x_prop), in<T>(score), in<T>(score_prop), in<T>(step_size), in<T>(u), u64_arg(seed, seed_t),
          u64_arg(offset, offset_t),
          u64_arg(chain_offset, chain_offset_t), in<T>(interior), m, out<T>(x_new), out<T>(score_new),
          out<bool>(accepted), out<T>(log_alpha), B, D);
      check_launch(op);
    });
  });
}

}  // namespace cuda
}  // namespace fastsamp
