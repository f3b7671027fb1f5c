// Gaussian-mixture kernels: gmm_score (op 1) and the fused whole-move kernels
// gmm_mala (op 7) and gmm_hmc (op 8), on blocks of W chains with the mixture math of
// cpu/gmm.h. See docs/backend-contract.md for the math.
#include <cmath>
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

// Threads for B chains of `evals` mixture evaluations each (at least one block of W per thread).
template <int W, typename M>
int mixture_threads(const M& m, int64_t B, int64_t evals) {
  const int64_t per_chain = std::max<int64_t>(1, static_cast<int64_t>(m.K) * m.D) * std::max<int64_t>(1, evals);
  const int64_t chains = kMixtureGrain / per_chain + 1;
  return threads_for(B, std::max<int64_t>(W, chains));
}

template <typename T, int DC>
void gmm_score_impl(const T* x, const Mixture<T>& mx, int64_t B, int Drt, T* score, T* logp) {
  constexpr int W = kRowLanes<T>;
  const int D = DC > 0 ? DC : Drt;
  const int64_t nblk = (B + W - 1) / W;
  parallel_for(mixture_threads<W>(mx, B, 1), nblk, [&](int64_t blk0, int64_t blk1) {
    Buf<T> ws(score_rows_scratch<T, W>(D));
    score_rows<T, W, DC>(mx, D, x, blk0 * W, std::min(B, blk1 * W), ws.p,
                         [&](int64_t b0, int nb, const T* sc, const T* lp) {
      store_block<T, W, DC>(sc, b0, nb, D, score);
      for (int l = 0; l < nb; ++l) logp[b0 + l] = lp[l];
    });
  });
}

// sum_d a[d][l] b[d][l]
template <typename T, int W, int DC>
FASTSAMP_VINLINE Row<T> block_dot(int Drt, const T* a, const T* b) {
  const int D = DC > 0 ? DC : Drt;
  Row<T> s{};
  for (int d = 0; d < D; ++d) s = loadu(a + d * W) * loadu(b + d * W) + s;
  return s;
}

// dst[d][l] = take[l] ? src[d][l] : dst[d][l]
template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_select(int Drt, const RowMask<T>& take, T* __restrict dst, const T* __restrict src) {
  const int D = DC > 0 ? DC : Drt;  // compile-time D unrolls the loop
  for (int d = 0; d < D; ++d) storeu(dst + d * W, take ? loadu(src + d * W) : loadu(dst + d * W));
}

template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_copy(int Drt, T* __restrict dst, const T* __restrict src) {
  const int D = DC > 0 ? DC : Drt;
  for (int d = 0; d < D; ++d) storeu(dst + d * W, loadu(src + d * W));
}

// Accept the proposals of the lanes with take[l] (else keep the current state): count them in
// nacc and take their log-density, state and score into (lp, x, s).
template <typename T, int W, int DC>
FASTSAMP_VINLINE void accept_block(int D, const RowMask<T>& take, Row<T>& nacc, T* __restrict lp,
                                   const T* __restrict lp_prop, T* __restrict x, const T* __restrict x_prop,
                                   T* __restrict s, const T* __restrict s_prop) {
  nacc += take ? Row<T>{} + T(1) : Row<T>{};
  storeu(lp, take ? loadu(lp_prop) : loadu(lp));
  block_select<T, W, DC>(D, take, x, x_prop);
  block_select<T, W, DC>(D, take, s, s_prop);
}

// Consecutive Row-aligned pieces of a block's scratch: rows(n) is the next [n][W] array
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
// parallel (nt threads), each with its state xc[D][W] (padding lanes 0), step sizes eps (a row;
// padding 1) and accepted-move counts nacc (a row, zeroed); body(b0, xc, eps, nacc, scratch) runs
// the moves, with `scratch_per_lane * W` values of Row-aligned scratch. Stores the state and
// the acceptance rate nacc / n_steps. DC: D at compile time (0: run time), for the block loads and stores.
template <typename T, int W, int DC, typename Body>
void for_each_chain_block(int nt, const T* x_in, const T* step, int64_t B, int D, int64_t n_steps,
                          size_t scratch_per_lane, T* x_out, T* rate, Body body) {
  const int64_t nblk = (B + W - 1) / W;
  parallel_for(nt, nblk, [&](int64_t blk0, int64_t blk1) {
    Buf<T> ws((static_cast<size_t>(D) + scratch_per_lane) * W);
    T* __restrict xc = ws.p;
    T* __restrict scratch = xc + static_cast<int64_t>(D) * W;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t b0 = blk * W;
      const int nb = static_cast<int>(std::min<int64_t>(W, B - b0));
      load_block<T, W, DC>(x_in, b0, nb, D, xc);
      alignas(64) T lane[W];
      for (int l = 0; l < W; ++l) lane[l] = l < nb ? step[b0 + l] : T(1);
      const Row<T> eps = loadu(lane);
      Row<T> nacc{};
      body(b0, xc, eps, nacc, scratch);
      store_block<T, W, DC>(xc, b0, nb, D, x_out);
      storeu(lane, nacc / static_cast<T>(n_steps));
      for (int l = 0; l < nb; ++l) rate[b0 + l] = lane[l];
    }
  });
}

template <typename T, int DC>
void gmm_mala_impl(const T* x_in, const Mixture<T>& mx, const T* step, int64_t B, int Drt, int64_t n_steps,
                   int64_t n_trap, uint64_t seed, uint64_t offset, uint64_t chain0, int mh, T* x_out, T* rate) {
  constexpr int W = kRowLanes<T>;
  using R = Row<T>;
  const int D = DC > 0 ? DC : Drt;
  const int Dp = 4 * ((D + 3) / 4);  // noise rows, padded to whole Philox draws
  const int64_t n = n_trap;
  const T tn = static_cast<T>(n);
  const size_t scratch = static_cast<size_t>(6 * D + Dp + 4 + kChunkK);  // the rows taken below
  const int nt = mixture_threads<W>(mx, B, n_steps * (mh == 0 ? n : 1) + 1);
  const LanePhilox<T, W> draws(seed);
  for_each_chain_block<T, W, DC>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                                 [&](int64_t b0, T* __restrict xc, const R& eps, R& nacc, T* __restrict ws) {
    Carve<T, W> cv{ws};
    // [D][W]: score at the current state, proposal, score at the proposal, x' - x, interior point and its
    // score; noise (Dp rows); log-densities and MH log-uniforms; the log-sum-exp scratch
    T *__restrict sc = cv.rows(D), *__restrict xp = cv.rows(D), *__restrict sp = cv.rows(D);
    T *__restrict dd = cv.rows(D), *__restrict pt = cv.rows(D), *__restrict si = cv.rows(D);
    T* __restrict xi = cv.rows(Dp);
    T *__restrict lpc = cv.rows(1), *__restrict lpp = cv.rows(1), *__restrict lpi = cv.rows(1);
    T* __restrict logu = cv.rows(1);
    T* __restrict ell = cv.rows(kChunkK);
    const R sq2e = vm::vsqrt(T(2) * eps);
    const R four_eps = T(4) * eps;
    block_score<T, W, DC>(mx, D, xc, sc, lpc, ell);
    for (int64_t mv = 0; mv < n_steps; ++mv) {
      const uint64_t off = offset + static_cast<uint64_t>(mv);
      draws.draw(off, chain0 + static_cast<uint64_t>(b0), D, xi, mh == 2 ? nullptr : logu);
      // proposal x' = x + eps s + sqrt(2 eps) xi, d = x' - x
      for (int d = 0; d < D; ++d) {
        const R x = loadu(xc + d * W);
        const R p = (x + eps * loadu(sc + d * W)) + sq2e * loadu(xi + d * W);
        storeu(xp + d * W, p);
        storeu(dd + d * W, p - x);
      }
      R acc{};  // interior points of the trapezoid: sum_i s(x + t_i d) . d
      if (mh == 0 && n > 1) {
        for (int64_t i = 1; i < n; ++i) {
          const T t = static_cast<T>(i) / static_cast<T>(n);
          for (int d = 0; d < D; ++d) storeu(pt + d * W, loadu(xc + d * W) + t * loadu(dd + d * W));
          block_score<T, W, DC>(mx, D, pt, si, lpi, ell);
          acc += block_dot<T, W, DC>(D, si, dd);
        }
      }
      block_score<T, W, DC>(mx, D, xp, sp, lpp, ell);
      if (mh == 2) {  // no test: take every proposal
        block_copy<T, W, DC>(D, xc, xp);
        block_copy<T, W, DC>(D, sc, sp);
        storeu(lpc, loadu(lpp));
        nacc += T(1);
        continue;
      }
      // log q(x|x') - log q(x'|x) = (|d - eps s|^2 - |d + eps s'|^2) / (4 eps); sd = s.d, spd = s'.d
      R sd{}, spd{}, fwd2{}, bwd2{};
      for (int d = 0; d < D; ++d) {
        const R dv = loadu(dd + d * W), s = loadu(sc + d * W), sn = loadu(sp + d * W);
        const R fwd = dv - eps * s;
        const R bwd = dv + eps * sn;
        sd = s * dv + sd;
        spd = sn * dv + spd;
        fwd2 = fwd * fwd + fwd2;
        bwd2 = bwd * bwd + bwd2;
      }
      R delta;
      if (mh == 1) {
        delta = loadu(lpp) - loadu(lpc);
      } else {
        R total = T(0.5) * (sd + spd);
        if (n > 1) total += acc;
        delta = total / tn;
      }
      const R log_alpha = delta + (fwd2 - bwd2) / four_eps;
      const RowMask<T> take = loadu(logu) < log_alpha;
      accept_block<T, W, DC>(D, take, nacc, lpc, lpp, xc, xp, sc, sp);
    }
  });
}

// HMC (op 8): per move, p0 = damping p + c_n xi, n_lf leapfrog steps from (x, p0, s),
// trapezoid (mh 0) / energy (mh 1) / no (mh 2) test; p carried across moves.
template <typename T, int DC>
void gmm_hmc_impl(const T* x_in, const Mixture<T>& mx, const T* step, int64_t B, int Drt, int64_t n_steps,
                  int64_t n_lf, uint64_t seed, uint64_t offset, uint64_t chain0, int mh, double damping, T* x_out,
                  T* rate) {
  constexpr int W = kRowLanes<T>;
  using R = Row<T>;
  const int D = DC > 0 ? DC : Drt;
  const int Dp = 4 * ((D + 3) / 4);
  const T damp = static_cast<T>(damping);
  const T c_n = static_cast<T>(std::sqrt(1.0 - damping * damping));
  const size_t scratch = static_cast<size_t>(8 * D + Dp + 3 + kChunkK);  // the rows taken below
  const int nt = mixture_threads<W>(mx, B, n_steps * n_lf + 1);
  const LanePhilox<T, W> draws(seed);
  for_each_chain_block<T, W, DC>(nt, x_in, step, B, D, n_steps, scratch, x_out, rate,
                                 [&](int64_t b0, T* __restrict xc, const R& eps, R& nacc, T* __restrict ws) {
    Carve<T, W> cv{ws};
    // [D][W]: score at the current state, carried momentum, refreshed momentum of this move, momentum
    // along the trajectory; trajectory state and score, two buffers each (swapped: not restrict);
    // noise (Dp rows); log-densities and MH log-uniforms; the log-sum-exp scratch
    T *__restrict sc = cv.rows(D), *__restrict pc = cv.rows(D), *__restrict p0 = cv.rows(D);
    T* __restrict pl = cv.rows(D);
    T *xa = cv.rows(D), *xb = cv.rows(D), *sa = cv.rows(D), *sb = cv.rows(D);
    T* __restrict xi = cv.rows(Dp);
    T *__restrict lpc = cv.rows(1), *__restrict lpl = cv.rows(1), *__restrict logu = cv.rows(1);
    T* __restrict ell = cv.rows(kChunkK);
    const R heps = T(0.5) * eps;
    for (int d = 0; d < D; ++d) storeu(pc + d * W, R{});
    block_score<T, W, DC>(mx, D, xc, sc, lpc, ell);
    for (int64_t mv = 0; mv < n_steps; ++mv) {
      const uint64_t off = offset + static_cast<uint64_t>(mv);
      draws.draw(off, chain0 + static_cast<uint64_t>(b0), D, xi, mh == 2 ? nullptr : logu);
      // p0 = damping p + c_n xi (the rows d < D of xi)
      for (int d = 0; d < D; ++d) {
        const R p = damp * loadu(pc + d * W) + c_n * loadu(xi + d * W);
        storeu(p0 + d * W, p);
        storeu(pl + d * W, p);
      }
      block_copy<T, W, DC>(D, xa, xc);
      block_copy<T, W, DC>(D, sa, sc);
      storeu(lpl, loadu(lpc));
      R dlp{};
      for (int64_t j = 0; j < n_lf; ++j) {
        // p_half = p + (eps/2) s, x' = x + eps p_half
        for (int d = 0; d < D; ++d) {
          const R ph = loadu(pl + d * W) + heps * loadu(sa + d * W);
          storeu(pl + d * W, ph);
          storeu(xb + d * W, loadu(xa + d * W) + eps * ph);
        }
        block_score<T, W, DC>(mx, D, xb, sb, lpl, ell);
        // p = p_half + (eps/2) s', dlogp += 1/2 (s + s').(x' - x)
        R seg{};
        for (int d = 0; d < D; ++d) {
          const R s1 = loadu(sb + d * W);
          storeu(pl + d * W, loadu(pl + d * W) + heps * s1);
          seg = (loadu(sa + d * W) + s1) * (loadu(xb + d * W) - loadu(xa + d * W)) + seg;
        }
        dlp += T(0.5) * seg;
        std::swap(xa, xb);
        std::swap(sa, sb);
      }
      RowMask<T> take = RowMask<T>{} - 1;  // mh = none: every lane
      if (mh != 2) {
        const R kin = block_dot<T, W, DC>(D, pl, pl);
        const R kin0 = block_dot<T, W, DC>(D, p0, p0);
          const R delta = mh == 1 ? loadu(lpl) - loadu(lpc) : dlp;
        const R log_alpha = (delta - T(0.5) * kin) + T(0.5) * kin0;
        take = loadu(logu) < log_alpha;
      }
      accept_block<T, W, DC>(D, take, nacc, lpc, lpl, xc, xa, sc, sa);
      // rejected: flip the momentum (p ← −p0), which keeps partial refresh exact
      for (int d = 0; d < D; ++d) storeu(pc + d * W, take ? loadu(pl + d * W) : -loadu(p0 + d * W));
    }
  });
}

}  // namespace

void gmm_score(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
               int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
               uintptr_t logp) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    const Mixture<T> mx(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, alpha, sigma2);
    gmm_score_impl<T, decltype(dc)::value>(ptr<T>(x), mx, B, static_cast<int>(D), ptr<T>(score), ptr<T>(logp));
  });
}

namespace {
// Shared entry of the whole-move kernels: builds the mixture, handles n_steps <= 0 (copy the
// state, rate 0), then calls run(tag T, dc D-constant, mixture).
template <typename Run>
void whole_move_entry(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                      int64_t B, int64_t D, int64_t K, int64_t n_steps, double alpha, double sigma2,
                      uintptr_t x_out, uintptr_t accept_rate, Run run) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    const Mixture<T> mx(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, alpha, sigma2);
    if (n_steps <= 0) {  // nothing to do: copy the state, rate 0
      const T* xi = ptr<T>(x);
      T* xo = ptr<T>(x_out);
      for (int64_t i = 0; i < B * D; ++i) xo[i] = xi[i];
      for (int64_t b = 0; b < B; ++b) ptr<T>(accept_rate)[b] = T(0);
      return;
    }
    run(tag, dc, mx);
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