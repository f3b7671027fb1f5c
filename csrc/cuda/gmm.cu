// The gmm family: score, log-density and whole-move MALA of an isotropic Gaussian mixture.
//
// Op 1, gmm_score: score and log-density at x (the evaluator, its layout and the online
// log-sum-exp are in gmm.cuh).
//
// Op 7, gmm_mala: n_steps whole MALA moves in one launch. A group of G lanes owns one chain
// for all moves; the state x, its score s and logp, the proposal x' and its score live in
// registers (layout of gmm.cuh). Per move m (draw offset + m):
//   xi = normal(seed, offset + m), x' = x + eps s + sqrt(2 eps) xi,
//   mh 0: n_trapezoid - 1 interior scores + score(x'), trapezoid dlogP;
//   mh 1: dlogP = logp(x') - logp(x);   mh 2: always accept (ULA);
//   log_alpha = dlogP + log q(x|x') - log q(x'|x), u = uniform(seed, offset + m),
//   accept iff log u < log_alpha (NaN -> reject).
// Every thread of a block makes the same sequence of mixture evaluations
// (independent of the data), as required by the block-wide staging.
#include <string>
#include <type_traits>

#include "cuda/gmm.cuh"
#include "cuda/launch.h"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kScoreMaxThreads = 128;
constexpr size_t kScoreSmemBudget = 32 * 1024;
constexpr int kMalaMaxThreads = 128;
constexpr size_t kMalaSmemBudget = 32 * 1024;

// gmm_score: about 8 elements per lane, thread-per-chain for D <= 8, a full warp from D > 128
// (D > 1024 spills to local memory).
struct ScoreLayouts {
  static constexpr Layout kLayouts[] = {{4, 1, 1},     {8, 1, 2},      {16, 2, 2},    {32, 4, 2},
                                        {64, 8, 2},    {128, 16, 2},   {256, 32, 2},  {512, 32, 4},
                                        {1024, 32, 8}, {2048, 32, 16}, {kGmmScoreMaxD, 32, 32}};
};

// gmm_mala register budget: 5 arrays of 4*NQ elements per lane. float: up to 32 elements per
// lane (thread-per-chain for D <= 32); double: up to 16 (thread-per-chain for D <= 16). double
// with 512 < D <= 1024 spills to local memory.
struct MalaLayoutsF32 {
  static constexpr Layout kLayouts[] = {{4, 1, 1},    {8, 1, 2},    {16, 1, 4},    {32, 1, 8},  {64, 2, 8},
                                        {128, 4, 8},  {256, 8, 8},  {512, 16, 8},  {kGmmMalaMaxD, 32, 8}};
};
struct MalaLayoutsF64 {
  static constexpr Layout kLayouts[] = {{4, 1, 1},    {8, 1, 2},    {16, 1, 4},    {32, 2, 4},  {64, 4, 4},
                                        {128, 8, 4},  {256, 16, 4}, {512, 32, 4},  {kGmmMalaMaxD, 32, 8}};
};

template <typename T, int G, int NQ>
__global__ void __launch_bounds__(kScoreMaxThreads, 1)
    gmm_score_kernel(const T* __restrict__ x, const MixArgs<T> a, T* __restrict__ score,
                     T* __restrict__ logp, const int64_t B) {
  static_assert(kScoreMaxThreads % G == 0, "G must divide the block");
  extern __shared__ __align__(16) unsigned char smem[];
  const MixSmem<T> sm = mix_prologue(a, smem);

  const GroupChain ch = group_chain<G>(B);
  T p[NQ][4], A[NQ][4];
  T lp;
  load_row<T, G, NQ>(x + ch.bc * a.D, a.D, ch.lane, p);
  mix_eval<T, G, NQ>(p, A, lp, a, sm, ch.lane);
  if (ch.active) {
    store_row<T, G, NQ>(score + ch.b * a.D, a.D, ch.lane, A);
    if (ch.lane == 0) logp[ch.b] = lp;
  }
}

template <typename T, int G, int NQ, int MH>
__global__ void __launch_bounds__(kMalaMaxThreads, 1)
    gmm_mala_kernel(const T* __restrict__ x_in, const T* __restrict__ step_size,
                    const MixArgs<T> a, T* __restrict__ x_out, T* __restrict__ accept_rate,
                    const int64_t B, const int64_t n_steps, const int64_t n_trap, const U64Arg seed_a,
                    const U64Arg offset_a, const U64Arg chain_a) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  static_assert(MH >= 0 && MH <= 2, "mh mode");
  static_assert(kMalaMaxThreads % G == 0, "G must divide the block");
  extern __shared__ __align__(16) unsigned char smem[];
  const MixSmem<T> sm = mix_prologue(a, smem);

  const GroupChain ch = group_chain<G>(B);
  const int lane = ch.lane;
  const int64_t b = ch.b, bc = ch.bc;
  const uint32_t bu = static_cast<uint32_t>(chain0 + b);  // the chain's Philox word
  const int D = a.D;

  T x[NQ][4], s[NQ][4], xp[NQ][4], sp[NQ][4];
  T lp, lp_p;
  load_row<T, G, NQ>(x_in + bc * D, D, lane, x);
  mix_eval<T, G, NQ>(x, s, lp, a, sm, lane);

  const T eps = step_size[bc];
  const T sq = sqrt(static_cast<T>(2) * eps);
  const T four_eps = static_cast<T>(4) * eps;
  int64_t count = 0;

  for (int64_t mv = 0; mv < n_steps; ++mv) {
    const uint64_t off = offset + static_cast<uint64_t>(mv);  // wraps mod 2^64

    // Proposal x' = x + eps s + sqrt(2 eps) xi (pads stay 0).
#pragma unroll
    for (int i = 0; i < NQ; ++i) {
      const int q = lane + G * i;
      T xi[4] = {0, 0, 0, 0};
      if (4 * q < D) normal4<T>(seed, off, bu, static_cast<uint32_t>(q), xi);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int d = 4 * q + r;
        xp[i][r] = d < D ? x[i][r] + eps * s[i][r] + sq * xi[r] : static_cast<T>(0);
      }
    }

    T a_int = 0;  // this lane's share of sum_i score(x_i).d (mh 0)
    if constexpr (MH == 0) {
      for (int64_t it = 1; it < n_trap; ++it) {
        const T t = static_cast<T>(it) / static_cast<T>(n_trap);
        T pt[NQ][4];
#pragma unroll
        for (int i = 0; i < NQ; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) pt[i][r] = x[i][r] + t * (xp[i][r] - x[i][r]);
        T lp_unused;
        mix_eval<T, G, NQ>(pt, sp, lp_unused, a, sm, lane);  // sp used as scratch
#pragma unroll
        for (int i = 0; i < NQ; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) a_int = fma(sp[i][r], xp[i][r] - x[i][r], a_int);
      }
    }
    mix_eval<T, G, NQ>(xp, sp, lp_p, a, sm, lane);

    bool acc = true;
    if constexpr (MH != 2) {
      // Same grouping as the reference (see mh.cu).
      T fw = 0, bw = 0, a_s = 0, a_sp = 0;
#pragma unroll
      for (int i = 0; i < NQ; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const T dd = xp[i][r] - x[i][r];
          const T e1 = dd - eps * s[i][r];
          const T e2 = dd + eps * sp[i][r];
          fw = fma(e1, e1, fw);
          bw = fma(e2, e2, bw);
          if constexpr (MH == 0) {
            a_s = fma(s[i][r], dd, a_s);
            a_sp = fma(sp[i][r], dd, a_sp);
          }
        }
      fw = group_sum<G>(fw);
      bw = group_sum<G>(bw);
      T dlogp;
      if constexpr (MH == 0) {
        a_s = group_sum<G>(a_s);
        a_sp = group_sum<G>(a_sp);
        a_int = group_sum<G>(a_int);
        dlogp = (static_cast<T>(0.5) * (a_s + a_sp) + a_int) / static_cast<T>(n_trap);
      } else {
        dlogp = lp_p - lp;
      }
      const T log_alpha = dlogp + (fw - bw) / four_eps;
      const T u = mh_uniform<T>(seed, off, bu);
      acc = log(u) < log_alpha;  // NaN -> false
    }
    if (acc) {
#pragma unroll
      for (int i = 0; i < NQ; ++i)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          x[i][r] = xp[i][r];
          s[i][r] = sp[i][r];
        }
      lp = lp_p;
      ++count;
    }
  }

  if (ch.active) {
    store_row<T, G, NQ>(x_out + b * D, D, lane, x);
    if (lane == 0)
      accept_rate[b] =
          n_steps > 0 ? static_cast<T>(count) / static_cast<T>(n_steps) : static_cast<T>(0);
  }
}

}  // namespace

void gmm_score(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
               int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
               uintptr_t logp, uintptr_t stream) {
  const char* op = "gmm_score";
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    check_mixture_sizes(op, D, kGmmScoreMaxD, K);
    if (B <= 0) return;
    const MixArgs<T> a = mix_args<T>(means, log_weights, variances, K, D, alpha, sigma2, kScoreSmemBudget);
    with_layout<ScoreLayouts>(D, [&](auto g, auto nq) {
      constexpr int G = decltype(g)::value, NQ = decltype(nq)::value;
      const MixGrid grid = mix_grid(a, B, G, kScoreMaxThreads, op);
      gmm_score_kernel<T, G, NQ><<<grid.blocks, grid.threads, grid.smem, as_stream(stream)>>>(
          in<T>(x), a, out<T>(score), out<T>(logp), B);
      check_launch(op);
    });
  });
}

void gmm_mala(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
              uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
              double alpha, double sigma2, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t,
              uint64_t chain_offset, uintptr_t chain_offset_t, int mh,
              uintptr_t x_out, uintptr_t accept_rate, uintptr_t stream) {
  const char* op = "gmm_mala";
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    check_mixture_sizes(op, D, kGmmMalaMaxD, K);
    if (mh < 0 || mh > 2)
      throw std::invalid_argument(op_error(op, "mh must be 0, 1 or 2, got " + std::to_string(mh)));
    if (n_steps < 0) throw std::invalid_argument(op_error(op, "bad n_steps " + std::to_string(n_steps)));
    if (mh == 0 && n_trapezoid < 1)
      throw std::invalid_argument(
          op_error(op, "n_trapezoid must be >= 1, got " + std::to_string(n_trapezoid)));
    if (B <= 0) return;
    const int64_t n_trap = mh == 0 ? n_trapezoid : 1;
    const MixArgs<T> a = mix_args<T>(means, log_weights, variances, K, D, alpha, sigma2, kMalaSmemBudget);
    using Layouts = std::conditional_t<sizeof(T) == 4, MalaLayoutsF32, MalaLayoutsF64>;
    with_layout<Layouts>(D, [&](auto g, auto nq) {
      with_const<3>(mh, [&](auto mode) {
        constexpr int G = decltype(g)::value, NQ = decltype(nq)::value, MH = decltype(mode)::value;
        const MixGrid grid = mix_grid(a, B, G, kMalaMaxThreads, op);
        gmm_mala_kernel<T, G, NQ, MH><<<grid.blocks, grid.threads, grid.smem, as_stream(stream)>>>(
            in<T>(x), in<T>(step_size), a, out<T>(x_out), out<T>(accept_rate), B, n_steps, n_trap, u64_arg(seed,
            seed_t),
            u64_arg(offset, offset_t), u64_arg(chain_offset, chain_offset_t));
        check_launch(op);
      });
    });
  });
}

}  // namespace cuda
}  // namespace fastsamp
