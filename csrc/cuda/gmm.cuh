// Gaussian-mixture score / log-density evaluator of the gmm kernels (gmm.cu: gmm_score and
// the whole-move gmm_mala; contract op 1).
//
// Work layout: a chain is owned by a group of G consecutive lanes of one warp.
// Lane `lane` of the group owns the element quads q = lane + G*i, i < NQ, i.e.
// the elements d = 4q + r (r = 0..3), held in registers as T v[NQ][4]. Elements
// d >= D ("pads") are kept at exactly 0, which makes them contribute nothing to
// distances and dot products. The components are staged in shared memory in
// chunks of KC components: alpha*mu_k (rows padded to Dp = 4*ceil(D/4) with
// zeros) and the per-component constants
//     c_k = (log_weights_k - lse) - (D/2) log(2 pi s_k),  2 s_k,  1/s_k,
// with s_k = alpha^2 v_k + sigma2. If all K components fit (KC == K) they are
// staged once per block ("resident"); otherwise every evaluation streams the
// chunks through shared memory (block-wide __syncthreads, so every thread of
// the block must make the same sequence of evaluations).
//
// Evaluation of one point p: online log-sum-exp over k of
//     l_k = c_k - |p - alpha mu_k|^2 / (2 s_k)
// with running max m, sum S = sum_k e^{l_k - m} and the D-vector accumulator
// A = sum_k e^{l_k - m} (alpha mu_k - p) / s_k; at the end logp = m + log S,
// score = A / S. Never materialises (B, K, D).
#pragma once

#include "cuda/common.cuh"

namespace fastsamp {
namespace cuda {

template <typename T>
struct MixArgs {
  const T* means;        // (K, D)
  const T* log_weights;  // (K,)
  const T* variances;    // (K,)
  int K;
  int D;
  int Dp;  // 4 * ceil(D / 4)
  int KC;  // components per shared-memory chunk (KC == K: resident)
  T alpha;
  T alpha2;  // alpha^2, rounded once from double
  T sigma2;
};

// Shared memory: [KC * Dp] alpha*mu, [KC * 4] constants, [4] scratch.
inline size_t mix_smem_bytes(int KC, int Dp, size_t elem) {
  return (static_cast<size_t>(KC) * static_cast<size_t>(Dp) + 4 * static_cast<size_t>(KC) + 4) *
         elem;
}

// KC for a given budget of shared memory (always >= 1, <= K).
inline int mix_chunk(int K, int Dp, size_t elem, size_t budget_bytes) {
  const size_t per = (static_cast<size_t>(Dp) + 4) * elem;
  size_t kc = budget_bytes / per;
  if (kc < 1) kc = 1;
  if (kc > static_cast<size_t>(K)) kc = static_cast<size_t>(K);
  return static_cast<int>(kc);
}

// The mixture arguments of a launch; the components are staged KC at a time, KC as large as
// smem_budget bytes of shared memory allow.
template <typename T>
MixArgs<T> mix_args(uintptr_t means, uintptr_t log_weights, uintptr_t variances, int64_t K, int64_t D,
                    double alpha, double sigma2, size_t smem_budget) {
  MixArgs<T> a;
  a.means = in<T>(means);
  a.log_weights = in<T>(log_weights);
  a.variances = in<T>(variances);
  a.K = static_cast<int>(K);
  a.D = static_cast<int>(D);
  a.Dp = static_cast<int>((D + 3) / 4 * 4);
  a.KC = mix_chunk(a.K, a.Dp, sizeof(T), smem_budget);
  a.alpha = static_cast<T>(alpha);
  a.alpha2 = static_cast<T>(alpha * alpha);
  a.sigma2 = static_cast<T>(sigma2);
  return a;
}

// Checks shared by the mixture launchers: 0 <= D <= max_d, 1 <= K <= 2^30.
inline void check_mixture_sizes(const char* op, int64_t D, int64_t max_d, int64_t K) {
  if (D < 0 || D > max_d)
    throw std::invalid_argument(
        op_error(op, "D must be <= " + std::to_string(max_d) + ", got " + std::to_string(D)));
  if (K < 1 || K > (1 << 30))
    throw std::invalid_argument(op_error(op, "need 1 <= K, got " + std::to_string(K)));
}

// Launch of a group-per-chain mixture kernel: up to max_threads threads a block (fewer for small
// batches, see spread_threads) and the mixture's shared memory.
struct MixGrid {
  unsigned blocks;
  int threads;
  size_t smem;
};

template <typename T>
MixGrid mix_grid(const MixArgs<T>& a, int64_t B, int G, int max_threads, const char* op) {
  MixGrid g;
  g.threads = spread_threads(B, G, max_threads, op);
  g.blocks = group_blocks(B, G, g.threads, op);
  g.smem = mix_smem_bytes(a.KC, a.Dp, sizeof(T));
  return g;
}

// Online (max, sum) pair combine; m == -inf means "empty so far".
template <typename T>
__device__ __forceinline__ void lse_combine(T& m, T& s, T m2, T s2) {
  const T mn = fmax(m, m2);
  if (mn == -Num<T>::inf()) {
    s = s + s2;
  } else {
    s = s * exp(m - mn) + s2 * exp(m2 - mn);
  }
  m = mn;
}

// logsumexp(log_weights), computed by warp 0 and broadcast through `scratch`.
// Block-wide: every thread must call it. NaN in log_weights -> NaN.
template <typename T>
__device__ T block_lse_weights(const MixArgs<T>& a, T* scratch) {
  if (threadIdx.x < 32) {
    T m = -Num<T>::inf(), s = 0;
    bool bad = false;
    for (int k = threadIdx.x; k < a.K; k += 32) {
      const T v = a.log_weights[k];
      bad |= (v != v);
      lse_combine(m, s, v, static_cast<T>(1));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const T m2 = __shfl_xor_sync(0xffffffffu, m, o);
      const T s2 = __shfl_xor_sync(0xffffffffu, s, o);
      bad |= (__shfl_xor_sync(0xffffffffu, static_cast<int>(bad), o) != 0);
      lse_combine(m, s, m2, s2);
    }
    if (threadIdx.x == 0) {
      T r = m + log(s);
      if (bad) r = Num<T>::nan();
      scratch[0] = r;
    }
  }
  __syncthreads();
  const T r = scratch[0];
  return r;
}

// Stage components [k0, k0 + kc) into shared memory (block-wide, no syncs).
template <typename T>
__device__ void mix_stage(const MixArgs<T>& a, T* s_mu, T* s_cst, T lse, int k0, int kc) {
  const int n = kc * a.Dp;
  for (int idx = threadIdx.x; idx < n; idx += blockDim.x) {
    const int k = idx / a.Dp;
    const int d = idx - k * a.Dp;
    s_mu[idx] = d < a.D ? a.alpha * a.means[static_cast<size_t>(k0 + k) * a.D + d]
                        : static_cast<T>(0);
  }
  const T half_d = static_cast<T>(0.5) * static_cast<T>(a.D);
  for (int j = threadIdx.x; j < kc; j += blockDim.x) {
    const T s = a.alpha2 * a.variances[k0 + j] + a.sigma2;
    const T lw = a.log_weights[k0 + j] - lse;
    s_cst[4 * j + 0] = lw - half_d * log(static_cast<T>(6.283185307179586476925286766559) * s);
    s_cst[4 * j + 1] = static_cast<T>(2) * s;
    s_cst[4 * j + 2] = static_cast<T>(1) / s;
    s_cst[4 * j + 3] = 0;
  }
}

// Shared-memory view of the mixture inside a kernel.
template <typename T>
struct MixSmem {
  T* mu;
  T* cst;
  T lse;
  bool resident;
};

// Block-wide prologue: lse of the weights, and the resident staging.
template <typename T>
__device__ MixSmem<T> mix_prologue(const MixArgs<T>& a, unsigned char* smem_raw) {
  MixSmem<T> sm;
  T* base = reinterpret_cast<T*>(smem_raw);
  sm.mu = base;
  sm.cst = base + static_cast<size_t>(a.KC) * a.Dp;
  T* scratch = sm.cst + 4 * static_cast<size_t>(a.KC);
  sm.lse = block_lse_weights(a, scratch);
  sm.resident = (a.KC >= a.K);
  if (sm.resident) {
    mix_stage(a, sm.mu, sm.cst, sm.lse, 0, a.K);
    __syncthreads();
  }
  return sm;
}

// Quad i of this lane (q = lane + G i) of the staged component row mu: false for a quad past
// the padded row (q >= Qp), else true with its 4 elements in mv.
template <int G, typename T>
__device__ __forceinline__ bool mu_quad(const T* mu, int Qp, int lane, int i, T mv[4]) {
  const int q = lane + G * i;
  if (q >= Qp) return false;
  load4_aligned(mu + 4 * q, mv);
  return true;
}

// score(p) -> A (pads exactly 0), logp(p) -> logp. Block-wide when the
// mixture is not resident (all threads of the block must call it together).
template <typename T, int G, int NQ>
__device__ __forceinline__ void mix_eval(const T (&p)[NQ][4], T (&A)[NQ][4], T& logp,
                                         const MixArgs<T>& a, const MixSmem<T>& sm, int lane) {
  const T inf = Num<T>::inf();
  const int Qp = a.Dp >> 2;
#pragma unroll
  for (int i = 0; i < NQ; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) A[i][r] = 0;
  T m = -inf, S = 0;

  for (int k0 = 0; k0 < a.K; k0 += a.KC) {
    const int kc = min(a.KC, a.K - k0);
    if (!sm.resident) {
      __syncthreads();  // previous chunk fully consumed
      mix_stage(a, sm.mu, sm.cst, sm.lse, k0, kc);
      __syncthreads();
    }
    for (int j = 0; j < kc; ++j) {
      const T* mu = sm.mu + static_cast<size_t>(j) * a.Dp;
      const T c = sm.cst[4 * j + 0];
      const T two_s = sm.cst[4 * j + 1];
      const T inv_s = sm.cst[4 * j + 2];

      T dist = 0;
#pragma unroll
      for (int i = 0; i < NQ; ++i) {
        T mv[4];
        if (!mu_quad<G>(mu, Qp, lane, i, mv)) continue;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const T df = p[i][r] - mv[r];
          dist = fma(df, df, dist);
        }
      }
      dist = group_sum<G>(dist);
      const T l = c - dist / two_s;

      // Online log-sum-exp step with one exp. l == -inf contributes nothing;
      // l NaN makes w (hence S and A) NaN; m is never NaN.
      T scale = 1, w = 0;
      if (l != -inf) {
        const T dl = l - m;
        const T e = exp(-fabs(dl));
        if (dl > 0) {
          scale = e;
          w = 1;
          m = l;
        } else {
          w = e;
        }
      }
      S = fma(S, scale, w);
      const T wi = w * inv_s;
#pragma unroll
      for (int i = 0; i < NQ; ++i) {
        T mv[4];
        if (!mu_quad<G>(mu, Qp, lane, i, mv)) continue;
#pragma unroll
        for (int r = 0; r < 4; ++r) A[i][r] = fma(A[i][r], scale, wi * (mv[r] - p[i][r]));
      }
    }
  }
  logp = m + log(S);
#pragma unroll
  for (int i = 0; i < NQ; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int d = 4 * (lane + G * i) + r;
      A[i][r] = d < a.D ? A[i][r] / S : static_cast<T>(0);
    }
  }
}

// Load row b of a (B, D) tensor into the group layout (pads = 0).
template <typename T, int G, int NQ>
__device__ __forceinline__ void load_row(const T* __restrict__ row, int D, int lane,
                                         T (&v)[NQ][4]) {
#pragma unroll
  for (int i = 0; i < NQ; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int d = 4 * (lane + G * i) + r;
      v[i][r] = d < D ? row[d] : static_cast<T>(0);
    }
}

template <typename T, int G, int NQ>
__device__ __forceinline__ void store_row(T* __restrict__ row, int D, int lane,
                                          const T (&v)[NQ][4]) {
#pragma unroll
  for (int i = 0; i < NQ; ++i)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int d = 4 * (lane + G * i) + r;
      if (d < D) row[d] = v[i][r];
    }
}

}  // namespace cuda
}  // namespace fastsamp
