// Gaussian-mixture kernels: gmm_score (op 1) and the fused whole-move kernels
// gmm_mala (op 7) and gmm_hmc (op 8). See docs/backend-contract.md for the math.
//
// Both work on blocks of W chains (SIMD lanes) whose state is transposed into
// [D][W] buffers; the score is an online (chunked) log-sum-exp over the K
// components, so nothing of size (B, K, D) exists. D is a compile-time
// constant for D in {1, 2, 4, 8, 16} (DC > 0), a runtime value otherwise.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/common.h"
#include "cpu/ops.h"

namespace fastsamp {
namespace cpu {
namespace {

constexpr int kChunkK = 64;  // components per online-LSE chunk
// Score-term evaluations (chain x component x dimension) per thread below which a call stays on
// one thread (about 50-100 us of work: more than waking a sleeping pool thread costs).
constexpr int64_t kMixtureGrain = int64_t(1) << 18;

template <typename T>
struct Mixture {
  int K = 0, D = 0;
  std::vector<T> amu;  // (K, D): alpha * mu_k
  std::vector<T> c;    // lw_k - (D/2) log(2 pi s_k)
  std::vector<T> h;    // 1 / (2 s_k)
  std::vector<T> r;    // 1 / s_k

  Mixture(const T* means, const T* log_weights, const T* variances, int64_t K_, int64_t D_, double alpha,
          double sigma2)
      : K(checked_dim(K_, "K")), D(checked_dim(D_, "D")), amu(static_cast<size_t>(K) * D), c(K), h(K), r(K) {
    // lw = log_weights - logsumexp(log_weights)
    double mx = -std::numeric_limits<double>::infinity();
    for (int k = 0; k < K; ++k) mx = std::max(mx, static_cast<double>(log_weights[k]));
    double se = 0.0;
    for (int k = 0; k < K; ++k) se += std::exp(static_cast<double>(log_weights[k]) - mx);
    const T lse = static_cast<T>(mx + std::log(se));
    const T a = static_cast<T>(alpha), a2 = static_cast<T>(alpha * alpha), s2 = static_cast<T>(sigma2);
    const T halfD = static_cast<T>(0.5 * D);
    for (int k = 0; k < K; ++k) {
      const T s = a2 * variances[k] + s2;
      c[k] = (log_weights[k] - lse) - halfD * std::log(static_cast<T>(kTwoPi) * s);
      h[k] = T(0.5) / s;
      r[k] = T(1) / s;
      for (int d = 0; d < D; ++d) amu[static_cast<size_t>(k) * D + d] = a * means[static_cast<size_t>(k) * D + d];
    }
  }
};

// ---- register-resident path for compile-time D (GCC vector extensions) ----
// One W-lane vector per dimension; the K loop is a single-pass online
// log-sum-exp: with t = exp(-|l_k - m|), either the running sums are rescaled
// by t (new maximum) or the new term has weight t; one exp per component.
template <typename T>
struct VecT {
  typedef T V __attribute__((vector_size(64)));
  typedef typename vm::Bits<T>::I I_;
  typedef I_ VI __attribute__((vector_size(64)));
};

template <typename V, typename VI, typename T>
FASTSAMP_VINLINE V vexp(V x) {
  using C = vm::ExpC<T>;
  x = x < C::lo ? V{} + C::lo : x;  // NaN passes both selects
  x = x > C::hi ? V{} + C::hi : x;
  const V t = x * C::log2e + C::shifter;
  const V n = t - C::shifter;
  const VI ni = reinterpret_cast<const VI&>(t) - vm::as_int<T>(C::shifter);
  V r = x - n * C::ln2_hi;
  r = r - n * C::ln2_lo;
  V p;
  if constexpr (sizeof(T) == 4) {
    p = V{} + T(1.9875691500e-4);
    p = p * r + T(1.3981999507e-3);
    p = p * r + T(8.3334519073e-3);
    p = p * r + T(4.1665795894e-2);
    p = p * r + T(1.6666665459e-1);
    p = p * r + T(5.0000001201e-1);
    p = (p * (r * r) + r) + T(1);
  } else {
    p = V{} + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  }
  const VI n1 = ni >> 1;
  const VI n2 = ni - n1;
  const VI e1 = (n1 + vm::Bits<T>::kBias) << vm::Bits<T>::kMant;
  const VI e2 = (n2 + vm::Bits<T>::kBias) << vm::Bits<T>::kMant;
  return p * reinterpret_cast<const V&>(e1) * reinterpret_cast<const V&>(e2);
}

template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_score_reg(const Mixture<T>& mx, const T* __restrict x, T* __restrict sc,
                                      T* __restrict logp) {
  static_assert(W * sizeof(T) == 64, "one 64-byte vector per dimension");
  using V = typename VecT<T>::V;
  using VI = typename VecT<T>::VI;
  const int K = mx.K;
  const T* __restrict amu = mx.amu.data();
  const T* __restrict cc = mx.c.data();
  const T* __restrict hh = mx.h.data();
  const T* __restrict rr = mx.r.data();
  const T ninf = -std::numeric_limits<T>::infinity();
  V xv[DC], acc[DC];
#pragma GCC unroll 16
  for (int d = 0; d < DC; ++d) {
    std::memcpy(&xv[d], x + d * W, sizeof(V));
    acc[d] = V{};
  }
  V m = V{} + ninf, sum = V{};
  for (int k = 0; k < K; ++k) {
    const T* __restrict mu = amu + static_cast<size_t>(k) * DC;
    V df[DC];
    V dist = V{};
#pragma GCC unroll 16
    for (int d = 0; d < DC; ++d) {
      df[d] = mu[d] - xv[d];
      dist = df[d] * df[d] + dist;
    }
    const V e = cc[k] - dist * hh[k];
    const V dlt = e - m;
    const V ad = dlt < T(0) ? -dlt : dlt;  // |e - m| (NaN stays NaN)
    V t = vexp<V, VI, T>(-ad);
    t = e == ninf ? V{} : t;  // a -inf term has weight 0 (also when m = -inf)
    const VI up = e > m;
    const V scl = up ? t : V{} + T(1);
    const V w = up ? V{} + T(1) : t;
    m = up ? e : m;
    sum = sum * scl + w;
    const V wr = w * rr[k];
#pragma GCC unroll 16
    for (int d = 0; d < DC; ++d) acc[d] = acc[d] * scl + wr * df[d];
  }
  alignas(64) T sm[W], mm[W];
  std::memcpy(sm, &sum, sizeof(V));
  std::memcpy(mm, &m, sizeof(V));
#pragma omp simd
  for (int l = 0; l < W; ++l) logp[l] = mm[l] + vm::log<T>(sm[l]);
  const V inv = T(1) / sum;
#pragma GCC unroll 16
  for (int d = 0; d < DC; ++d) {
    const V o = acc[d] * inv;
    std::memcpy(sc + d * W, &o, sizeof(V));
  }
}

// Score sc[D][W] and log-density logp[W] of the mixture at x[D][W].
// ell: scratch of kChunkK * W values.
template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_score(const Mixture<T>& mx, int Drt, const T* __restrict x,
                                  T* __restrict sc, T* __restrict logp, T* __restrict ell) {
  if constexpr (DC > 0 && W * sizeof(T) == 64) {
    block_score_reg<T, W, DC>(mx, x, sc, logp);
    return;
  }
  const int D = DC > 0 ? DC : Drt;
  const int K = mx.K;
  const T* __restrict amu = mx.amu.data();
  const T* __restrict cc = mx.c.data();
  const T* __restrict hh = mx.h.data();
  const T* __restrict rr = mx.r.data();
  alignas(64) T m[W], sum[W], cm[W], dist[W], wk[W];
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    m[l] = -std::numeric_limits<T>::infinity();
    sum[l] = T(0);
  }
  for (int d = 0; d < D; ++d) {
#pragma omp simd
    for (int l = 0; l < W; ++l) sc[d * W + l] = T(0);
  }
  for (int k0 = 0; k0 < K; k0 += kChunkK) {
    const int kn = std::min(kChunkK, K - k0);
    // pass 1: ell_k and the chunk maximum
#pragma omp simd
    for (int l = 0; l < W; ++l) cm[l] = m[l];
    for (int kk = 0; kk < kn; ++kk) {
      const int k = k0 + kk;
      const T* __restrict mu = amu + static_cast<size_t>(k) * D;
#pragma omp simd
      for (int l = 0; l < W; ++l) dist[l] = T(0);
      for (int d = 0; d < D; ++d) {
        const T md = mu[d];
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          const T df = md - x[d * W + l];
          dist[l] = vm::fma_(df, df, dist[l]);
        }
      }
      const T ck = cc[k], hk = hh[k];
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        const T e = ck - dist[l] * hk;
        ell[kk * W + l] = e;
        cm[l] = vm::max_nan(cm[l], e);
      }
    }
    // rescale the running sums to the new maximum
    if (k0 > 0) {
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        const T scale = (cm[l] == m[l]) ? T(1) : vm::exp<T>(m[l] - cm[l]);
        wk[l] = scale;
        sum[l] *= scale;
      }
      for (int d = 0; d < D; ++d) {
#pragma omp simd
        for (int l = 0; l < W; ++l) sc[d * W + l] *= wk[l];
      }
    }
#pragma omp simd
    for (int l = 0; l < W; ++l) m[l] = cm[l];
    // pass 2: weights and the weighted sum of (alpha mu_k - x) / s_k
    for (int kk = 0; kk < kn; ++kk) {
      const int k = k0 + kk;
      const T* __restrict mu = amu + static_cast<size_t>(k) * D;
      const T rk = rr[k];
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        const T e = ell[kk * W + l];  // a -inf term has weight 0 (also when m = -inf: x infinite)
        const T w = vm::blend<T>(e == -std::numeric_limits<T>::infinity(), T(0), vm::exp<T>(e - m[l]));
        sum[l] += w;
        wk[l] = w * rk;
      }
      for (int d = 0; d < D; ++d) {
        const T md = mu[d];
#pragma omp simd
        for (int l = 0; l < W; ++l) sc[d * W + l] = vm::fma_(wk[l], md - x[d * W + l], sc[d * W + l]);
      }
    }
  }
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    logp[l] = m[l] + vm::log<T>(sum[l]);
    wk[l] = T(1) / sum[l];
  }
  for (int d = 0; d < D; ++d) {
#pragma omp simd
    for (int l = 0; l < W; ++l) sc[d * W + l] *= wk[l];
  }
}

// x (B, D) rows b0 .. b0+nb-1 -> xt[D][W] (lanes >= nb get `fill`).
template <typename T, int W>
FASTSAMP_VINLINE void load_block(const T* __restrict x, int64_t b0, int nb, int D, T* __restrict xt, T fill) {
  for (int l = 0; l < W; ++l) {
    if (l < nb) {
      const T* __restrict row = x + (b0 + l) * D;
      for (int d = 0; d < D; ++d) xt[d * W + l] = row[d];
    } else {
      for (int d = 0; d < D; ++d) xt[d * W + l] = fill;
    }
  }
}
template <typename T, int W>
FASTSAMP_VINLINE void store_block(const T* __restrict xt, int64_t b0, int nb, int D, T* __restrict x) {
  for (int l = 0; l < nb; ++l) {
    T* __restrict row = x + (b0 + l) * D;
    for (int d = 0; d < D; ++d) row[d] = xt[d * W + l];
  }
}

// Threads for B chains of `evals` mixture evaluations each (at least one block of W per thread).
template <int W, typename M>
int mixture_threads(const M& m, int64_t B, int64_t evals) {
  const int64_t per_chain = std::max<int64_t>(1, static_cast<int64_t>(m.K) * m.D) * std::max<int64_t>(1, evals);
  const int64_t chains = kMixtureGrain / per_chain + 1;
  return threads_for(B, std::max<int64_t>(W, chains));
}

template <typename T, int DC>
void gmm_score_impl(const T* x, const Mixture<T>& mx, int64_t B, int Drt, T* score, T* logp) {
  constexpr int W = Lanes<T>::W;
  const int D = DC > 0 ? DC : Drt;
  const int64_t DW = static_cast<int64_t>(D) * W;
  const int64_t nblk = (B + W - 1) / W;
  parallel_for(mixture_threads<W>(mx, B, 1), nblk, [&](int64_t blk0, int64_t blk1) {
    Buf<T> ws(static_cast<size_t>(2 * DW + (1 + kChunkK) * W));
    T* xt = ws.p;
    T* st = xt + DW;
    T* lp = st + DW;
    T* ell = lp + W;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t b0 = blk * W;
      const int nb = static_cast<int>(std::min<int64_t>(W, B - b0));
      load_block<T, W>(x, b0, nb, D, xt, T(0));
      block_score<T, W, DC>(mx, D, xt, st, lp, ell);
      store_block<T, W>(st, b0, nb, D, score);
      for (int l = 0; l < nb; ++l) logp[b0 + l] = lp[l];
    }
  });
}

template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_dot(int Drt, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
#pragma omp simd
  for (int l = 0; l < W; ++l) out[l] = T(0);
  for (int d = 0; d < D; ++d) {
#pragma omp simd
    for (int l = 0; l < W; ++l) out[l] = vm::fma_(a[d * W + l], b[d * W + l], out[l]);
  }
}

// dst[d][l] = accepted[l] ? src[d][l] : dst[d][l]
template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_select(int Drt, const T* __restrict acc_f, T* __restrict dst,
                                   const T* __restrict src) {
  const int D = DC > 0 ? DC : Drt;  // compile-time D unrolls the loop
  for (int d = 0; d < D; ++d) {
#pragma omp simd
    for (int l = 0; l < W; ++l) dst[d * W + l] = acc_f[l] != T(0) ? src[d * W + l] : dst[d * W + l];
  }
}

template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_copy(int Drt, T* __restrict dst, const T* __restrict src) {
  const int n = (DC > 0 ? DC : Drt) * W;
#pragma omp simd
  for (int i = 0; i < n; ++i) dst[i] = src[i];
}

// The chain-block driver shared by the whole-move kernels: blocks of W chains in
// parallel (nt threads), each with its state xc[D][W] (padding lanes 0), step sizes eps[W]
// (padding 1) and accepted-move counts nacc[W] (zeroed); body(b0, xc, eps, nacc,
// scratch) runs the moves, with `scratch_per_lane * W` values of 64-byte-aligned
// scratch. Stores the state and the acceptance rate nacc / n_steps.
template <typename T, int W, typename Body>
void for_each_chain_block(int nt, const T* x_in, const T* step, int64_t B, int D, int64_t n_steps,
                          size_t scratch_per_lane, T* x_out, T* rate, Body body) {
  const int64_t nblk = (B + W - 1) / W;
  parallel_for(nt, nblk, [&](int64_t blk0, int64_t blk1) {
    Buf<T> ws((static_cast<size_t>(D) + 2 + scratch_per_lane) * W);
    T* __restrict xc = ws.p;
    T* __restrict eps = xc + static_cast<int64_t>(D) * W;
    T* __restrict nacc = eps + W;
    T* __restrict scratch = nacc + W;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t b0 = blk * W;
      const int nb = static_cast<int>(std::min<int64_t>(W, B - b0));
      load_block<T, W>(x_in, b0, nb, D, xc, T(0));
      for (int l = 0; l < W; ++l) {
        eps[l] = l < nb ? step[b0 + l] : T(1);
        nacc[l] = T(0);
      }
      body(b0, xc, eps, nacc, scratch);
      store_block<T, W>(xc, b0, nb, D, x_out);
      const T ns = static_cast<T>(n_steps);
      for (int l = 0; l < nb; ++l) rate[b0 + l] = nacc[l] / ns;
    }
  });
}

template <typename T, int DC>
void gmm_mala_impl(const T* x_in, const Mixture<T>& mx, const T* step, int64_t B, int Drt, int64_t n_steps,
                   int64_t n_trap, uint64_t seed, uint64_t offset, uint64_t chain0, int mh, T* x_out, T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = DC > 0 ? DC : Drt;
  const int Dp = 4 * ((D + 3) / 4);  // noise rows, padded to whole Philox draws
  const int64_t n = n_trap;
  const T tn = static_cast<T>(n);
  const size_t scratch = static_cast<size_t>(6 * D + Dp + 16 + kChunkK);
  const int nt = mixture_threads<W>(mx, B, n_steps * (mh == 0 ? n : 1) + 1);
  for_each_chain_block<T, W>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                             [&](int64_t b0, T* __restrict xc, const T* __restrict eps, T* __restrict nacc,
                                 T* __restrict ws) {
    T* __restrict sc = ws;          // score at the current state
    T* __restrict xp = sc + D * W;  // proposal
    T* __restrict sp = xp + D * W;  // score at the proposal
    T* __restrict dd = sp + D * W;  // x' - x
    T* __restrict pt = dd + D * W;  // interior point
    T* __restrict si = pt + D * W;  // score at the interior point
    T* __restrict xi = si + D * W;  // noise, Dp rows
    T* __restrict v = xi + Dp * W;  // per-lane vectors
    T* __restrict lpc = v;
    T* __restrict lpp = v + W;
    T* __restrict sq2e = v + 3 * W;
    T* __restrict acc = v + 4 * W;
    T* __restrict tmp = v + 5 * W;
    T* __restrict tmp2 = v + 6 * W;
    T* __restrict logu = v + 7 * W;
    T* __restrict lpi = v + 9 * W;
    T* __restrict ffv = v + 10 * W;
    T* __restrict bbv = v + 11 * W;
    T* __restrict acc_f = v + 12 * W;
    T* __restrict ell = v + 16 * W;
#pragma omp simd
    for (int l = 0; l < W; ++l) sq2e[l] = std::sqrt(T(2) * eps[l]);
    block_score<T, W, DC>(mx, D, xc, sc, lpc, ell);
    for (int64_t mv = 0; mv < n_steps; ++mv) {
      const uint64_t off = offset + static_cast<uint64_t>(mv);
      block_normals<T, W>(seed, off, chain0 + static_cast<uint64_t>(b0), D, xi);
      // proposal x' = x + eps s + sqrt(2 eps) xi, d = x' - x
      for (int d = 0; d < D; ++d) {
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          const int i = d * W + l;
          const T p = (xc[i] + eps[l] * sc[i]) + sq2e[l] * xi[i];
          xp[i] = p;
          dd[i] = p - xc[i];
        }
      }
      if (mh == 0 && n > 1) {
        // interior points of the trapezoid: sum_i s(x + t_i d) . d
#pragma omp simd
        for (int l = 0; l < W; ++l) acc[l] = T(0);
        for (int64_t i = 1; i < n; ++i) {
          const T t = static_cast<T>(i) / static_cast<T>(n);
          for (int d = 0; d < D; ++d) {
#pragma omp simd
            for (int l = 0; l < W; ++l) pt[d * W + l] = xc[d * W + l] + t * dd[d * W + l];
          }
          block_score<T, W, DC>(mx, D, pt, si, lpi, ell);
          block_dot<T, W, DC>(D, si, dd, tmp);
#pragma omp simd
          for (int l = 0; l < W; ++l) acc[l] += tmp[l];
        }
      }
      block_score<T, W, DC>(mx, D, xp, sp, lpp, ell);
      if (mh == 2) {
        block_copy<T, W, DC>(D, xc, xp);
        block_copy<T, W, DC>(D, sc, sp);
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          lpc[l] = lpp[l];
          nacc[l] += T(1);
        }
        continue;
      }
      // log q(x|x') - log q(x'|x) = (|d - eps s|^2 - |d + eps s'|^2) / (4 eps); tmp = s.d, tmp2 = s'.d
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        tmp[l] = T(0);
        tmp2[l] = T(0);
        ffv[l] = T(0);  // |d - eps s|^2
        bbv[l] = T(0);  // |d + eps s'|^2
      }
      for (int d = 0; d < D; ++d) {
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          const int i = d * W + l;
          const T fwd = dd[i] - eps[l] * sc[i];
          const T bwd = dd[i] + eps[l] * sp[i];
          tmp[l] = vm::fma_(sc[i], dd[i], tmp[l]);
          tmp2[l] = vm::fma_(sp[i], dd[i], tmp2[l]);
          ffv[l] = vm::fma_(fwd, fwd, ffv[l]);
          bbv[l] = vm::fma_(bwd, bwd, bbv[l]);
        }
      }
      block_log_uniform<T, W>(seed, off, chain0 + static_cast<uint64_t>(b0), logu);
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        T delta;
        if (mh == 1) {
          delta = lpp[l] - lpc[l];
        } else {
          T total = T(0.5) * (tmp[l] + tmp2[l]);
          if (n > 1) total += acc[l];
          delta = total / tn;
        }
        const T log_alpha = delta + (ffv[l] - bbv[l]) / (T(4) * eps[l]);
        const bool a = logu[l] < log_alpha;
        acc_f[l] = a ? T(1) : T(0);
        nacc[l] += acc_f[l];
        lpc[l] = a ? lpp[l] : lpc[l];
      }
      block_select<T, W, DC>(D, acc_f, xc, xp);
      block_select<T, W, DC>(D, acc_f, sc, sp);
    }
  });
}

// HMC (op 8): per move, p0 = damping p + c_n xi, n_lf leapfrog steps from (x, p0, s),
// trapezoid (mh 0) / energy (mh 1) / no (mh 2) test; p carried across moves.
template <typename T, int DC>
void gmm_hmc_impl(const T* x_in, const Mixture<T>& mx, const T* step, int64_t B, int Drt, int64_t n_steps,
                  int64_t n_lf, uint64_t seed, uint64_t offset, uint64_t chain0, int mh, double damping, T* x_out,
                  T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = DC > 0 ? DC : Drt;
  const int Dp = 4 * ((D + 3) / 4);
  const T damp = static_cast<T>(damping);
  const T c_n = static_cast<T>(std::sqrt(1.0 - damping * damping));
  const size_t scratch = static_cast<size_t>(8 * D + Dp + 16 + kChunkK);
  const int nt = mixture_threads<W>(mx, B, n_steps * n_lf + 1);
  for_each_chain_block<T, W>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                             [&](int64_t b0, T* __restrict xc, const T* __restrict eps, T* __restrict nacc,
                                 T* __restrict ws) {
    T* __restrict sc = ws;           // score at the current state
    T* __restrict pc = sc + D * W;   // carried momentum
    T* __restrict p0 = pc + D * W;   // refreshed momentum of this move
    T* __restrict pl = p0 + D * W;   // momentum along the trajectory
    T* xa = pl + D * W;              // trajectory state / score, two buffers each
    T* xb = xa + D * W;
    T* sa = xb + D * W;
    T* sb = sa + D * W;
    T* __restrict xi = sb + D * W;   // noise, Dp rows
    T* __restrict v = xi + Dp * W;   // per-lane vectors
    T* __restrict lpc = v;
    T* __restrict lpl = v + W;
    T* __restrict heps = v + 2 * W;
    T* __restrict dlp = v + 3 * W;
    T* __restrict tmp = v + 4 * W;
    T* __restrict kin = v + 5 * W;
    T* __restrict kin0 = v + 6 * W;
    T* __restrict logu = v + 7 * W;
    T* __restrict acc_f = v + 8 * W;
    T* __restrict ell = v + 16 * W;
#pragma omp simd
    for (int l = 0; l < W; ++l) heps[l] = T(0.5) * eps[l];
    std::memset(pc, 0, sizeof(T) * static_cast<size_t>(D) * W);
    block_score<T, W, DC>(mx, D, xc, sc, lpc, ell);
    for (int64_t mv = 0; mv < n_steps; ++mv) {
      const uint64_t off = offset + static_cast<uint64_t>(mv);
      block_normals<T, W>(seed, off, chain0 + static_cast<uint64_t>(b0), D, xi);
      for (int d = 0; d < D; ++d) {
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          const int i = d * W + l;
          const T p = damp * pc[i] + c_n * xi[i];
          p0[i] = p;
          pl[i] = p;
        }
      }
      block_copy<T, W, DC>(D, xa, xc);
      block_copy<T, W, DC>(D, sa, sc);
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        dlp[l] = T(0);
        lpl[l] = lpc[l];
      }
      for (int64_t j = 0; j < n_lf; ++j) {
        // p_half = p + (eps/2) s, x' = x + eps p_half
        for (int d = 0; d < D; ++d) {
#pragma omp simd
          for (int l = 0; l < W; ++l) {
            const int i = d * W + l;
            const T ph = pl[i] + heps[l] * sa[i];
            pl[i] = ph;
            xb[i] = xa[i] + eps[l] * ph;
          }
        }
        block_score<T, W, DC>(mx, D, xb, sb, lpl, ell);
        // p = p_half + (eps/2) s', dlogp += 1/2 (s + s').(x' - x)
#pragma omp simd
        for (int l = 0; l < W; ++l) tmp[l] = T(0);
        for (int d = 0; d < D; ++d) {
#pragma omp simd
          for (int l = 0; l < W; ++l) {
            const int i = d * W + l;
            pl[i] = pl[i] + heps[l] * sb[i];
            tmp[l] = vm::fma_(sa[i] + sb[i], xb[i] - xa[i], tmp[l]);
          }
        }
#pragma omp simd
        for (int l = 0; l < W; ++l) dlp[l] += T(0.5) * tmp[l];
        std::swap(xa, xb);
        std::swap(sa, sb);
      }
      if (mh == 2) {
#pragma omp simd
        for (int l = 0; l < W; ++l) acc_f[l] = T(1);
      } else {
        block_dot<T, W, DC>(D, pl, pl, kin);
        block_dot<T, W, DC>(D, p0, p0, kin0);
        block_log_uniform<T, W>(seed, off, chain0 + static_cast<uint64_t>(b0), logu);
#pragma omp simd
        for (int l = 0; l < W; ++l) {
          const T delta = mh == 1 ? lpl[l] - lpc[l] : dlp[l];
          const T log_alpha = (delta - T(0.5) * kin[l]) + T(0.5) * kin0[l];
          acc_f[l] = logu[l] < log_alpha ? T(1) : T(0);
        }
      }
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        nacc[l] += acc_f[l];
        lpc[l] = acc_f[l] != T(0) ? lpl[l] : lpc[l];
      }
      block_select<T, W, DC>(D, acc_f, xc, xa);
      block_select<T, W, DC>(D, acc_f, sc, sa);
      // rejected: flip the momentum (p ← −p0), which keeps partial refresh exact
#pragma omp simd
      for (int64_t i = 0; i < D * W; ++i) pc[i] = -p0[i];
      block_select<T, W, DC>(D, acc_f, pc, pl);
    }
  });
}

}  // namespace

void gmm_score(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
               int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
               uintptr_t logp) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const Mixture<T> mx(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, alpha, sigma2);
    dispatch_d(D, [&](auto dc) {
      gmm_score_impl<T, decltype(dc)::value>(ptr<T>(x), mx, B, static_cast<int>(D), ptr<T>(score),
                                             ptr<T>(logp));
    });
  });
}

namespace {
// Shared entry of the whole-move kernels: builds the mixture, handles n_steps <= 0 (copy the
// state, rate 0), then calls run(tag T, dc D-constant, mixture).
template <typename Run>
void whole_move_entry(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                      int64_t B, int64_t D, int64_t K, int64_t n_steps, double alpha, double sigma2,
                      uintptr_t x_out, uintptr_t accept_rate, Run run) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const Mixture<T> mx(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, alpha, sigma2);
    if (n_steps <= 0) {  // nothing to do: copy the state, rate 0
      const T* xi = ptr<T>(x);
      T* xo = ptr<T>(x_out);
      for (int64_t i = 0; i < B * D; ++i) xo[i] = xi[i];
      for (int64_t b = 0; b < B; ++b) ptr<T>(accept_rate)[b] = T(0);
      return;
    }
    dispatch_d(D, [&](auto dc) { run(tag, dc, mx); });
  });
}
}  // namespace

void gmm_mala(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
              uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
              double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
              uintptr_t x_out,
              uintptr_t accept_rate) {
  if (n_trapezoid < 1) throw std::invalid_argument("gmm_mala: n_trapezoid must be >= 1");
  if (mh < 0 || mh > 2) throw std::invalid_argument("gmm_mala: mh must be 0, 1 or 2");
  whole_move_entry(dtype, x, means, log_weights, variances, B, D, K, n_steps, alpha, sigma2, x_out,
                   accept_rate, [&](auto tag, auto dc, const auto& mx) {
    using T = decltype(tag);
    gmm_mala_impl<T, decltype(dc)::value>(ptr<T>(x), mx, ptr<T>(step_size), B, static_cast<int>(D), n_steps,
                                          n_trapezoid, seed, offset, chain_offset, static_cast<int>(mh), ptr<T>(x_out),
                                          ptr<T>(accept_rate));
  });
}

void gmm_hmc(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
             uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_leapfrog,
             double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh, double damping,
             uintptr_t x_out, uintptr_t accept_rate) {
  if (n_leapfrog < 1) throw std::invalid_argument("gmm_hmc: n_leapfrog must be >= 1");
  if (mh < 0 || mh > 2) throw std::invalid_argument("gmm_hmc: mh must be 0, 1 or 2");
  if (!(damping >= 0.0 && damping < 1.0)) throw std::invalid_argument("gmm_hmc: damping must be in [0, 1)");
  whole_move_entry(dtype, x, means, log_weights, variances, B, D, K, n_steps, alpha, sigma2, x_out,
                   accept_rate, [&](auto tag, auto dc, const auto& mx) {
    using T = decltype(tag);
    gmm_hmc_impl<T, decltype(dc)::value>(ptr<T>(x), mx, ptr<T>(step_size), B, static_cast<int>(D), n_steps,
                                         n_leapfrog, seed, offset, chain_offset, static_cast<int>(mh), damping,
                                         ptr<T>(x_out), ptr<T>(accept_rate));
  });
}

}  // namespace cpu
}  // namespace fastsamp
