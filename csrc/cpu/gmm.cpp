// Gaussian-mixture kernels: gmm_score (op 1) and the fused whole-move kernels
// gmm_mala (op 7) and gmm_hmc (op 8), on blocks of W chains with the mixture math of
// cpu/gmm.h. See docs/backend-contract.md for the math.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/common.h"
#include "cpu/gmm.h"
#include "cpu/ops.h"

namespace fastsamp {
namespace cpu {
namespace {

// Score-term evaluations (chain x component x dimension) per thread below which a call stays on
// one thread (about 50-100 us of work: more than waking a sleeping pool thread costs).
constexpr int64_t kMixtureGrain = int64_t(1) << 18;

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

// Accept the proposals of the lanes with acc_f[l] = 1 (else keep the current state): count them in
// nacc and take their log-density, state and score into (lp, x, s).
template <typename T, int W, int DC>
FASTSAMP_VINLINE void accept_block(int D, const T* __restrict acc_f, T* __restrict nacc, T* __restrict lp,
                                   const T* __restrict lp_prop, T* __restrict x, const T* __restrict x_prop,
                                   T* __restrict s, const T* __restrict s_prop) {
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    nacc[l] += acc_f[l];
    lp[l] = acc_f[l] != T(0) ? lp_prop[l] : lp[l];
  }
  block_select<T, W, DC>(D, acc_f, x, x_prop);
  block_select<T, W, DC>(D, acc_f, s, s_prop);
}

// Consecutive 64-byte-aligned pieces of a block's scratch: rows(n) is the next [n][W] array
// (a per-lane vector is rows(1)).
template <typename T, int W>
struct Carve {
  T* next;
  T* rows(int64_t n) {
    T* p = next;
    next += n * W;
    return p;
  }
};

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
  const size_t scratch = static_cast<size_t>(6 * D + Dp + 11 + kChunkK);  // the rows taken below
  const int nt = mixture_threads<W>(mx, B, n_steps * (mh == 0 ? n : 1) + 1);
  for_each_chain_block<T, W>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                             [&](int64_t b0, T* __restrict xc, const T* __restrict eps, T* __restrict nacc,
                                 T* __restrict ws) {
    Carve<T, W> cv{ws};
    // [D][W]: score at the current state, proposal, score at the proposal, x' - x, interior point and its
    // score; noise (Dp rows); per-lane vectors; the online-LSE scratch
    T *__restrict sc = cv.rows(D), *__restrict xp = cv.rows(D), *__restrict sp = cv.rows(D);
    T *__restrict dd = cv.rows(D), *__restrict pt = cv.rows(D), *__restrict si = cv.rows(D);
    T* __restrict xi = cv.rows(Dp);
    T *__restrict lpc = cv.rows(1), *__restrict lpp = cv.rows(1), *__restrict lpi = cv.rows(1);
    T *__restrict sq2e = cv.rows(1), *__restrict acc = cv.rows(1), *__restrict tmp = cv.rows(1);
    T *__restrict tmp2 = cv.rows(1), *__restrict ffv = cv.rows(1), *__restrict bbv = cv.rows(1);
    T *__restrict logu = cv.rows(1), *__restrict acc_f = cv.rows(1);
    T* __restrict ell = cv.rows(kChunkK);
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
      if (mh == 2) {  // no test: take every proposal (copies; a select costs ~10% of a mh = none move)
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
        acc_f[l] = logu[l] < log_alpha ? T(1) : T(0);
      }
      accept_block<T, W, DC>(D, acc_f, nacc, lpc, lpp, xc, xp, sc, sp);
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
  const size_t scratch = static_cast<size_t>(8 * D + Dp + 9 + kChunkK);  // the rows taken below
  const int nt = mixture_threads<W>(mx, B, n_steps * n_lf + 1);
  for_each_chain_block<T, W>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                             [&](int64_t b0, T* __restrict xc, const T* __restrict eps, T* __restrict nacc,
                                 T* __restrict ws) {
    Carve<T, W> cv{ws};
    // [D][W]: score at the current state, carried momentum, refreshed momentum of this move, momentum
    // along the trajectory; trajectory state and score, two buffers each (swapped: not restrict);
    // noise (Dp rows); per-lane vectors; the online-LSE scratch
    T *__restrict sc = cv.rows(D), *__restrict pc = cv.rows(D), *__restrict p0 = cv.rows(D);
    T* __restrict pl = cv.rows(D);
    T *xa = cv.rows(D), *xb = cv.rows(D), *sa = cv.rows(D), *sb = cv.rows(D);
    T* __restrict xi = cv.rows(Dp);
    T *__restrict lpc = cv.rows(1), *__restrict lpl = cv.rows(1), *__restrict heps = cv.rows(1);
    T *__restrict dlp = cv.rows(1), *__restrict tmp = cv.rows(1), *__restrict kin = cv.rows(1);
    T *__restrict kin0 = cv.rows(1), *__restrict logu = cv.rows(1), *__restrict acc_f = cv.rows(1);
    T* __restrict ell = cv.rows(kChunkK);
#pragma omp simd
    for (int l = 0; l < W; ++l) heps[l] = T(0.5) * eps[l];
    std::memset(pc, 0, sizeof(T) * static_cast<size_t>(D) * W);
    block_score<T, W, DC>(mx, D, xc, sc, lpc, ell);
    for (int64_t mv = 0; mv < n_steps; ++mv) {
      const uint64_t off = offset + static_cast<uint64_t>(mv);
      block_normals<T, W>(seed, off, chain0 + static_cast<uint64_t>(b0), D, xi);
      // p0 = damping p + c_n xi (the rows d < D of xi)
#pragma omp simd
      for (int i = 0; i < D * W; ++i) {
        const T p = damp * pc[i] + c_n * xi[i];
        p0[i] = p;
        pl[i] = p;
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
      accept_block<T, W, DC>(D, acc_f, nacc, lpc, lpl, xc, xa, sc, sa);
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