// Op 1: gmm_score -- score and log-density of an isotropic Gaussian mixture
// (see mixture.cuh for the layout and the online log-sum-exp).
#include <string>

#include "cuda/launch.h"
#include "cuda/mixture.cuh"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kScoreMaxThreads = 128;
constexpr size_t kScoreSmemBudget = 32 * 1024;

template <typename T, int G, int NQ>
__global__ void __launch_bounds__(kScoreMaxThreads, 1)
    gmm_score_kernel(const T* __restrict__ x, const MixArgs<T> a, T* __restrict__ score,
                     T* __restrict__ logp, const int64_t B) {
  extern __shared__ __align__(16) unsigned char smem[];
  const MixSmem<T> sm = mix_prologue(a, smem);

  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  const bool active = b < B;
  const int64_t bc = active ? b : B - 1;  // inactive groups shadow the last chain, write nothing

  T p[NQ][4], A[NQ][4];
  T lp;
  load_row<T, G, NQ>(x + bc * a.D, a.D, lane, p);
  mix_eval<T, G, NQ>(p, A, lp, a, sm, lane);
  if (active) {
    store_row<T, G, NQ>(score + b * a.D, a.D, lane, A);
    if (lane == 0) logp[b] = lp;
  }
}

template <typename T, int G, int NQ>
void run_cfg(const T* x, const MixArgs<T>& a, T* score, T* logp, int64_t B, cudaStream_t stream) {
  static_assert(kScoreMaxThreads % G == 0, "G must divide the block");
  const int sms = current_sm_count("gmm_score");
  int threads = kScoreMaxThreads;
  auto nblocks = [&](int t) { return (B + (t / G) - 1) / (t / G); };
  while (threads > 32 && nblocks(threads) < 2 * static_cast<int64_t>(sms)) threads /= 2;
  const int64_t blocks = nblocks(threads);
  if (blocks > 2147483647LL) throw std::invalid_argument("fastsamp cuda gmm_score: B too large");
  const size_t smem = mix_smem_bytes(a.KC, a.Dp, sizeof(T));
  gmm_score_kernel<T, G, NQ><<<static_cast<unsigned>(blocks), threads, smem, stream>>>(
      x, a, score, logp, B);
  check_launch("gmm_score");
}

template <typename T>
void run(const void* x, const void* means, const void* lw, const void* var, void* score,
         void* logp, int64_t B, int64_t D, int64_t K, double alpha, double sigma2,
         cudaStream_t stream) {
  MixArgs<T> a;
  a.means = static_cast<const T*>(means);
  a.log_weights = static_cast<const T*>(lw);
  a.variances = static_cast<const T*>(var);
  a.K = static_cast<int>(K);
  a.D = static_cast<int>(D);
  a.Dp = static_cast<int>((D + 3) / 4 * 4);
  a.KC = mix_chunk(a.K, a.Dp, sizeof(T), kScoreSmemBudget);
  a.alpha = static_cast<T>(alpha);
  a.alpha2 = static_cast<T>(alpha * alpha);
  a.sigma2 = static_cast<T>(sigma2);
  const T* xx = static_cast<const T*>(x);
  T* s = static_cast<T*>(score);
  T* l = static_cast<T*>(logp);
  // About 8 elements per lane: thread-per-chain for D <= 8, a full warp from D > 128.
  if (D <= 4) return run_cfg<T, 1, 1>(xx, a, s, l, B, stream);
  if (D <= 8) return run_cfg<T, 1, 2>(xx, a, s, l, B, stream);
  if (D <= 16) return run_cfg<T, 2, 2>(xx, a, s, l, B, stream);
  if (D <= 32) return run_cfg<T, 4, 2>(xx, a, s, l, B, stream);
  if (D <= 64) return run_cfg<T, 8, 2>(xx, a, s, l, B, stream);
  if (D <= 128) return run_cfg<T, 16, 2>(xx, a, s, l, B, stream);
  if (D <= 256) return run_cfg<T, 32, 2>(xx, a, s, l, B, stream);
  if (D <= 512) return run_cfg<T, 32, 4>(xx, a, s, l, B, stream);
  if (D <= 1024) return run_cfg<T, 32, 8>(xx, a, s, l, B, stream);
  if (D <= 2048) return run_cfg<T, 32, 16>(xx, a, s, l, B, stream);  // local-memory spills
  return run_cfg<T, 32, 32>(xx, a, s, l, B, stream);                 // local-memory spills
}

}  // namespace

void launch_gmm_score(int dtype, const void* x, const void* means, const void* log_weights,
                      const void* variances, void* score, void* logp, int64_t B, int64_t D,
                      int64_t K, double alpha, double sigma2, void* stream) {
  check_dtype(dtype, "gmm_score");
  if (D < 0 || D > kGmmScoreMaxD)
    throw std::invalid_argument("fastsamp cuda gmm_score: D must be <= " +
                                std::to_string(kGmmScoreMaxD) + ", got " + std::to_string(D));
  if (K < 1 || K > (1 << 30))
    throw std::invalid_argument("fastsamp cuda gmm_score: need 1 <= K, got " + std::to_string(K));
  if (B <= 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run<float>(x, means, log_weights, variances, score, logp, B, D, K, alpha, sigma2, s);
  else
    run<double>(x, means, log_weights, variances, score, logp, B, D, K, alpha, sigma2, s);
}

}  // namespace cuda
}  // namespace fastsamp
