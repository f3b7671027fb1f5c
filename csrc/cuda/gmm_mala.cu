// Op 7: gmm_mala -- n_steps whole MALA moves on a Gaussian-mixture target in
// one launch. A group of G lanes owns one chain for all moves; the state x,
// its score s and logp, the proposal x' and its score live in registers
// (layout of mixture.cuh). Per move m (draw offset + m):
//   xi = normal(seed, offset + m), x' = x + eps s + sqrt(2 eps) xi,
//   mh 0: n_trapezoid - 1 interior scores + score(x'), trapezoid dlogP;
//   mh 1: dlogP = logp(x') - logp(x);   mh 2: always accept (ULA);
//   log_alpha = dlogP + log q(x|x') - log q(x'|x), u = uniform(seed, offset + m),
//   accept iff log u < log_alpha (NaN -> reject).
// Every thread of a block makes the same sequence of mixture evaluations
// (independent of the data), as required by the block-wide staging.
#include <string>

#include "cuda/launch.h"
#include "cuda/mixture.cuh"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kMalaMaxThreads = 128;
constexpr size_t kMalaSmemBudget = 32 * 1024;

template <typename T, int G, int NQ, int MH>
__global__ void __launch_bounds__(kMalaMaxThreads, 1)
    gmm_mala_kernel(const T* __restrict__ x_in, const T* __restrict__ step_size,
                    const MixArgs<T> a, T* __restrict__ x_out, T* __restrict__ accept_rate,
                    const int64_t B, const int64_t n_steps, const int64_t n_trap, const uint64_t seed,
                    const uint64_t offset, const uint64_t chain0) {
  static_assert(MH >= 0 && MH <= 2, "mh mode");
  extern __shared__ __align__(16) unsigned char smem[];
  const MixSmem<T> sm = mix_prologue(a, smem);

  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool active = b < B;
  const int64_t bc = active ? b : B - 1;  // inactive groups shadow the last chain, write nothing
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
      // Same grouping as the reference (see score_mh_accept.cu).
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

  if (active) {
    store_row<T, G, NQ>(x_out + b * D, D, lane, x);
    if (lane == 0)
      accept_rate[b] =
          n_steps > 0 ? static_cast<T>(count) / static_cast<T>(n_steps) : static_cast<T>(0);
  }
}

struct MalaRun {
  const void* x;
  const void* step;
  void* x_out;
  void* rate;
  int64_t B;
  int64_t n_steps;
  int64_t n_trap;
  uint64_t seed;
  uint64_t offset;
  uint64_t chain0;
  int mh;
  cudaStream_t stream;
};

template <typename T, int G, int NQ, int MH>
void run_mh(const MixArgs<T>& a, const MalaRun& r) {
  static_assert(kMalaMaxThreads % G == 0, "G must divide the block");
  const int sms = current_sm_count("gmm_mala");
  int threads = kMalaMaxThreads;
  auto nblocks = [&](int t) { return (r.B + (t / G) - 1) / (t / G); };
  while (threads > 32 && nblocks(threads) < 2 * static_cast<int64_t>(sms)) threads /= 2;
  const int64_t blocks = nblocks(threads);
  if (blocks > 2147483647LL) throw std::invalid_argument("fastsamp cuda gmm_mala: B too large");
  const size_t smem = mix_smem_bytes(a.KC, a.Dp, sizeof(T));
  gmm_mala_kernel<T, G, NQ, MH><<<static_cast<unsigned>(blocks), threads, smem, r.stream>>>(
      static_cast<const T*>(r.x), static_cast<const T*>(r.step), a, static_cast<T*>(r.x_out),
      static_cast<T*>(r.rate), r.B, r.n_steps, r.n_trap, r.seed, r.offset, r.chain0);
  check_launch("gmm_mala");
}

template <typename T, int G, int NQ>
void run_cfg(const MixArgs<T>& a, const MalaRun& r) {
  if (r.mh == 0) return run_mh<T, G, NQ, 0>(a, r);
  if (r.mh == 1) return run_mh<T, G, NQ, 1>(a, r);
  return run_mh<T, G, NQ, 2>(a, r);
}

// Register budget: 5 arrays of 4*NQ elements per lane. float: up to 32
// elements per lane (thread-per-chain for D <= 32); double: up to 16 (thread-
// per-chain for D <= 16). double with 512 < D <= 1024 spills to local memory.
template <typename T>
void run_dispatch(const MixArgs<T>& a, const MalaRun& r) {
  const int D = a.D;
  if (D <= 4) return run_cfg<T, 1, 1>(a, r);
  if (D <= 8) return run_cfg<T, 1, 2>(a, r);
  if (D <= 16) return run_cfg<T, 1, 4>(a, r);
  if constexpr (sizeof(T) == 4) {
    if (D <= 32) return run_cfg<T, 1, 8>(a, r);
    if (D <= 64) return run_cfg<T, 2, 8>(a, r);
    if (D <= 128) return run_cfg<T, 4, 8>(a, r);
    if (D <= 256) return run_cfg<T, 8, 8>(a, r);
    if (D <= 512) return run_cfg<T, 16, 8>(a, r);
    return run_cfg<T, 32, 8>(a, r);
  } else {
    if (D <= 32) return run_cfg<T, 2, 4>(a, r);
    if (D <= 64) return run_cfg<T, 4, 4>(a, r);
    if (D <= 128) return run_cfg<T, 8, 4>(a, r);
    if (D <= 256) return run_cfg<T, 16, 4>(a, r);
    if (D <= 512) return run_cfg<T, 32, 4>(a, r);
    return run_cfg<T, 32, 8>(a, r);
  }
}

template <typename T>
void run(const void* means, const void* lw, const void* var, int64_t D, int64_t K, double alpha,
         double sigma2, const MalaRun& r) {
  MixArgs<T> a;
  a.means = static_cast<const T*>(means);
  a.log_weights = static_cast<const T*>(lw);
  a.variances = static_cast<const T*>(var);
  a.K = static_cast<int>(K);
  a.D = static_cast<int>(D);
  a.Dp = static_cast<int>((D + 3) / 4 * 4);
  a.KC = mix_chunk(a.K, a.Dp, sizeof(T), kMalaSmemBudget);
  a.alpha = static_cast<T>(alpha);
  a.alpha2 = static_cast<T>(alpha * alpha);
  a.sigma2 = static_cast<T>(sigma2);
  run_dispatch<T>(a, r);
}

}  // namespace

void launch_gmm_mala(int dtype, const void* x, const void* means, const void* log_weights,
                     const void* variances, const void* step_size, void* x_out, void* accept_rate,
                     int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
                     double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int mh,
                     void* stream) {
  check_dtype(dtype, "gmm_mala");
  if (D < 0 || D > kGmmMalaMaxD)
    throw std::invalid_argument("fastsamp cuda gmm_mala: D must be <= " +
                                std::to_string(kGmmMalaMaxD) + ", got " + std::to_string(D));
  if (K < 1 || K > (1 << 30))
    throw std::invalid_argument("fastsamp cuda gmm_mala: need 1 <= K, got " + std::to_string(K));
  if (mh < 0 || mh > 2)
    throw std::invalid_argument("fastsamp cuda gmm_mala: mh must be 0, 1 or 2, got " +
                                std::to_string(mh));
  if (n_steps < 0)
    throw std::invalid_argument("fastsamp cuda gmm_mala: bad n_steps " + std::to_string(n_steps));
  if (mh == 0 && n_trapezoid < 1)
    throw std::invalid_argument("fastsamp cuda gmm_mala: n_trapezoid must be >= 1, got " +
                                std::to_string(n_trapezoid));
  if (B <= 0) return;
  MalaRun r;
  r.x = x;
  r.step = step_size;
  r.x_out = x_out;
  r.rate = accept_rate;
  r.B = B;
  r.n_steps = n_steps;
  r.n_trap = mh == 0 ? n_trapezoid : 1;
  r.seed = seed;
  r.offset = offset;
  r.chain0 = chain_offset;
  r.mh = mh;
  r.stream = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run<float>(means, log_weights, variances, D, K, alpha, sigma2, r);
  else
    run<double>(means, log_weights, variances, D, K, alpha, sigma2, r);
}

}  // namespace cuda
}  // namespace fastsamp
