// The score-network ops on sums of network factors (cpu/mlp_sum.h: ScoreMLP score networks, EnergyMLP
// energy networks, optionally one Gaussian mixture): mlp_score (the score of score networks),
// mlp_energy (score and log-density of energy networks), and the whole-move kernels mlp_mala /
// mlp_energy_mala (contract: gmm_mala, op 7) and mlp_hmc / mlp_energy_hmc (op 8). The mlp_* ops take score
// networks and MH by the score trapezoid (mh 0) or none (2); the mlp_energy_* ops any mix of both kinds,
// and mh 1 too, the exact energy test, when every factor has an energy.
//
// mlp_mala: chains row-major in blocks of <= kBlock, each thread a contiguous run of chains. Per move the
// block's proposal and the n − 1 interior trapezoid points go through every network in batches of up to
// kPointsPerBatch points (kPointsPerBatch·nb rows: weights reused over them, memory bounded for any
// n_trapezoid); the energy test needs the proposal alone, its log-density carried with the state. The
// normals are the contract's draw (seed, offset + m) by rows_normals (the bits of mala_propose / sde_step),
// the uniforms block_log_uniform (counter 0xFFFFFFFF). Chains never mix: a NaN chain stays in its row.
// mlp_hmc: HMC / U-HMC, one batch of the block's rows per leapfrog step.
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/gmm.h"
#include "cpu/mlp.h"
#include "cpu/mlp_sum.h"
#include "cpu/ops.h"

namespace fastsamp {
namespace cpu {
namespace {

using mlp::ABuf;
using mlp::kBlock;
using mlp_sum::for_chain_runs;
using mlp_sum::NetSum;
using mlp_sum::SumWork;
using mlp_sum::sum_rows;

// The score (and, with logp, the log-density) of the sum at the chains of x.
template <typename T>
void score_impl(const NetSum<T>& m, const T* x, int64_t B, T* score, T* logp) {
  const int D = m.D;
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, kBlock);
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      sum_rows<T>(m, w, x + b0 * D, nb, score + b0 * D, logp ? logp + b0 : nullptr);
    }
  });
}

// Trapezoid points (proposal and interior) of a block evaluated per network call: the weights are
// reused over up to kPointsPerBatch * kBlock rows, and the activations stay a few hundred KB.
constexpr int kPointsPerBatch = 4;

// n_steps MALA moves (mh 0: trapezoid with n sub-intervals, 1: exact energy, 2: none) of the chains of x.
template <typename T>
void mala_impl(const NetSum<T>& m, const T* x_in, const T* step, int64_t B, int64_t n_steps, int n_trap,
               uint64_t seed, uint64_t offset, uint64_t chain0, int mh, T* x_out, T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = m.D;
  const int n = mh == 0 ? n_trap : 1;  // score evaluations per move: x' and the n − 1 interior points
  const T tn = static_cast<T>(n_trap);
  const int per_call = std::min(n, kPointsPerBatch);  // points per network call
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, per_call * kBlock);
    const size_t bd = static_cast<size_t>(kBlock) * D;
    // state, score; proposal, its score, d = x' - x; a batch of points and their scores
    ABuf<T> X(bd), S(bd), XP(bd), SPp(bd), DD(bd), PB(bd * per_call), SB(bd * per_call);
    ABuf<T> LP(kBlock), LPp(kBlock);  // energy test: log p at the state and at the proposal
    T* const lp = mh == 1 ? LP.p : nullptr;
    T* const lpp = mh == 1 ? LPp.p : nullptr;
    ABuf<T> XI(normals_capacity(kBlock, D));
    ABuf<T> eps(kBlock), sq2e(kBlock), nacc(kBlock), inner(kBlock), logu(kBlock + W);
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      const int64_t nbd = static_cast<int64_t>(nb) * D;
      std::memcpy(X.p, x_in + b0 * D, sizeof(T) * nbd);
      for (int l = 0; l < nb; ++l) {
        eps.p[l] = step[b0 + l];
        sq2e.p[l] = std::sqrt(T(2) * eps.p[l]);
        nacc.p[l] = T(0);
      }
      sum_rows<T>(m, w, X.p, nb, S.p, lp);
      const uint64_t g0 = chain0 + static_cast<uint64_t>(b0);
      for (int64_t mv = 0; mv < n_steps; ++mv) {
        const uint64_t off = offset + static_cast<uint64_t>(mv);
        draw_rows_normals<T>(seed, off, g0, nb, D, XI.p);
        // proposal x' = x + eps s + sqrt(2 eps) xi, d = x' - x
        for (int l = 0; l < nb; ++l)
          for (int d = 0; d < D; ++d) {
            const int64_t i = static_cast<int64_t>(l) * D + d;
            const T xp = (X.p[i] + eps.p[l] * S.p[i]) + sq2e.p[l] * XI.p[i];
            XP.p[i] = xp;
            DD.p[i] = xp - X.p[i];
          }
        // point k = 0 is x', k = 1 .. n-1 the interior points x + (k/n) d; per_call points per network call;
        // inner = Σ_{k >= 1} s(x + (k/n) d) . d
        for (int l = 0; l < nb; ++l) inner.p[l] = T(0);
        for (int k0 = 0; k0 < n; k0 += per_call) {
          const int kn = std::min(per_call, n - k0);
          for (int j = 0; j < kn; ++j) {
            const int k = k0 + j;
            T* __restrict pk = PB.p + j * nbd;
            if (k == 0) {
              std::memcpy(pk, XP.p, sizeof(T) * nbd);
            } else {
              const T tk = static_cast<T>(k) / tn;
              for (int64_t i = 0; i < nbd; ++i) pk[i] = X.p[i] + tk * DD.p[i];
            }
          }
          sum_rows<T>(m, w, PB.p, kn * nb, SB.p, lpp);  // mh 1: kn = 1 (the proposal alone)
          for (int j = 0; j < kn; ++j) {
            const T* __restrict sk = SB.p + j * nbd;
            if (k0 + j == 0) {
              std::memcpy(SPp.p, sk, sizeof(T) * nbd);
              continue;
            }
            for (int l = 0; l < nb; ++l) {
              T dot = 0;
              for (int d = 0; d < D; ++d) dot += sk[l * D + d] * DD.p[l * D + d];
              inner.p[l] += dot;
            }
          }
        }
        if (mh == 2) {
          std::memcpy(X.p, XP.p, sizeof(T) * nbd);
          std::memcpy(S.p, SPp.p, sizeof(T) * nbd);
          for (int l = 0; l < nb; ++l) nacc.p[l] += T(1);
          continue;
        }
        for (int c = 0; c < nb; c += W) block_log_uniform<T, W>(seed, off, g0 + static_cast<uint64_t>(c), logu.p + c);
        for (int l = 0; l < nb; ++l) {
          const int64_t r = static_cast<int64_t>(l) * D;
          T sd = 0, spd = 0, ff = 0, bb = 0;
          for (int d = 0; d < D; ++d) {
            const T dd = DD.p[r + d], s = S.p[r + d], sp = SPp.p[r + d];
            const T fwd = dd - eps.p[l] * s, bwd = dd + eps.p[l] * sp;
            sd += s * dd;
            spd += sp * dd;
            ff += fwd * fwd;
            bb += bwd * bwd;
          }
          const T delta = mh == 1 ? LPp.p[l] - LP.p[l] : (T(0.5) * (sd + spd) + inner.p[l]) / tn;
          const T log_alpha = delta + (ff - bb) / (T(4) * eps.p[l]);
          if (logu.p[l] < log_alpha) {
            std::memcpy(X.p + r, XP.p + r, sizeof(T) * D);
            std::memcpy(S.p + r, SPp.p + r, sizeof(T) * D);
            if (mh == 1) LP.p[l] = LPp.p[l];
            nacc.p[l] += T(1);
          }
        }
      }
      std::memcpy(x_out + b0 * D, X.p, sizeof(T) * nbd);
      const T ns = static_cast<T>(n_steps);
      for (int l = 0; l < nb; ++l) rate[b0 + l] = nacc.p[l] / ns;
    }
  });
}

// n_steps HMC moves (op 8 with mh 0 / 1 / 2): p starts at 0 and is carried across moves; move m refreshes
// p0 = damping p + sqrt(1 − damping²) ξ, runs n_lf leapfrog steps (one batch of nb rows through every
// network per step) with ΔlogP the trapezoid along the path (mh 0) or the exact log p(end) − log p(start)
// (mh 1), and flips p ← −p0 on rejection.
template <typename T>
void hmc_impl(const NetSum<T>& m, const T* x_in, const T* step, int64_t B, int64_t n_steps, int n_lf,
              uint64_t seed, uint64_t offset, uint64_t chain0, int mh, double damping, T* x_out, T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = m.D;
  const T damp = static_cast<T>(damping);
  const T c_n = static_cast<T>(std::sqrt(1.0 - damping * damping));
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, kBlock);
    const size_t bd = static_cast<size_t>(kBlock) * D;
    // current state, score, momentum; the refreshed momentum p0; the trajectory's state, score, momentum
    ABuf<T> X(bd), S(bd), PC(bd), P0(bd), XA(bd), SA(bd), XB(bd), SB(bd), PL(bd);
    ABuf<T> XI(normals_capacity(kBlock, D));
    ABuf<T> eps(kBlock), heps(kBlock), dlp(kBlock), nacc(kBlock), logu(kBlock + W);
    ABuf<T> LP(kBlock), LA(kBlock), LB(kBlock);  // energy test: log p at the state and along the trajectory
    const bool energy = mh == 1;
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      const int64_t nbd = static_cast<int64_t>(nb) * D;
      std::memcpy(X.p, x_in + b0 * D, sizeof(T) * nbd);
      std::memset(PC.p, 0, sizeof(T) * nbd);
      for (int l = 0; l < nb; ++l) {
        eps.p[l] = step[b0 + l];
        heps.p[l] = T(0.5) * eps.p[l];
        nacc.p[l] = T(0);
      }
      sum_rows<T>(m, w, X.p, nb, S.p, energy ? LP.p : nullptr);
      const uint64_t g0 = chain0 + static_cast<uint64_t>(b0);
      for (int64_t mv = 0; mv < n_steps; ++mv) {
        const uint64_t off = offset + static_cast<uint64_t>(mv);
        draw_rows_normals<T>(seed, off, g0, nb, D, XI.p);
        for (int64_t i = 0; i < nbd; ++i) {
          const T p = damp * PC.p[i] + c_n * XI.p[i];
          P0.p[i] = p;
          PL.p[i] = p;
        }
        std::memcpy(XA.p, X.p, sizeof(T) * nbd);
        std::memcpy(SA.p, S.p, sizeof(T) * nbd);
        for (int l = 0; l < nb; ++l) dlp.p[l] = T(0);
        T *xa = XA.p, *sa = SA.p, *xb = XB.p, *sb = SB.p, *la = LA.p, *lb = LB.p;
        for (int j = 0; j < n_lf; ++j) {
          // p_half = p + (eps/2) s, x' = x + eps p_half; s' = s(x'); p = p_half + (eps/2) s'
          for (int l = 0; l < nb; ++l)
            for (int d = 0; d < D; ++d) {
              const int64_t i = static_cast<int64_t>(l) * D + d;
              const T ph = PL.p[i] + heps.p[l] * sa[i];
              PL.p[i] = ph;
              xb[i] = xa[i] + eps.p[l] * ph;
            }
          sum_rows<T>(m, w, xb, nb, sb, energy ? lb : nullptr);
          for (int l = 0; l < nb; ++l) {
            T seg = 0;  // (s + s').(x' - x)
            for (int d = 0; d < D; ++d) {
              const int64_t i = static_cast<int64_t>(l) * D + d;
              PL.p[i] = PL.p[i] + heps.p[l] * sb[i];
              seg += (sa[i] + sb[i]) * (xb[i] - xa[i]);
            }
            dlp.p[l] += T(0.5) * seg;
          }
          std::swap(xa, xb);
          std::swap(sa, sb);
          std::swap(la, lb);
        }
        if (mh != 2)
          for (int c = 0; c < nb; c += W) block_log_uniform<T, W>(seed, off, g0 + static_cast<uint64_t>(c), logu.p + c);
        for (int l = 0; l < nb; ++l) {
          const int64_t r = static_cast<int64_t>(l) * D;
          bool acc = true;
          if (mh != 2) {
            T kin = 0, kin0 = 0;
            for (int d = 0; d < D; ++d) {
              kin += PL.p[r + d] * PL.p[r + d];
              kin0 += P0.p[r + d] * P0.p[r + d];
            }
            const T delta = energy ? la[l] - LP.p[l] : dlp.p[l];
            acc = logu.p[l] < (delta - T(0.5) * kin) + T(0.5) * kin0;
          }
          if (acc) {
            std::memcpy(X.p + r, xa + r, sizeof(T) * D);
            std::memcpy(S.p + r, sa + r, sizeof(T) * D);
            std::memcpy(PC.p + r, PL.p + r, sizeof(T) * D);
            if (energy) LP.p[l] = la[l];
            nacc.p[l] += T(1);
          } else {
            for (int d = 0; d < D; ++d) PC.p[r + d] = -P0.p[r + d];  // flip: keeps partial refresh exact
          }
        }
      }
      std::memcpy(x_out + b0 * D, X.p, sizeof(T) * nbd);
      const T ns = static_cast<T>(n_steps);
      for (int l = 0; l < nb; ++l) rate[b0 + l] = nacc.p[l] / ns;
    }
  });
}

// mh of a move op: 0 (score) or 2 (none); the energy ops take 1 (exact energy) too.
void check_mh(const char* op, int64_t mh, bool energy_op) {
  if (mh == 0 || mh == 2 || (energy_op && mh == 1)) return;
  throw std::invalid_argument(std::string(op) + (energy_op ? ": mh must be 0 (score), 1 (energy) or 2 (none)"
                                                           : ": mh must be 0 (score) or 2 (none)"));
}

// A log-density (mlp_energy's output, the energy test) needs every factor's: refuse a score network.
template <typename T>
void need_energy(const NetSum<T>& m, const char* op) {
  const int i = m.first_score_net();
  if (i >= 0)
    throw std::invalid_argument(std::string(op) + ": the log-density needs every factor's energy, network " +
                                std::to_string(i) + " is a score network");
}

void mala_op(const char* op, bool energy_op, int dtype, uintptr_t x, int64_t B, int64_t D,
             const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims, const std::vector<double>& scalars,
             const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances, int64_t K,
             double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps, int64_t n_trapezoid,
             uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh, uintptr_t x_out,
             uintptr_t accept_rate) {
  if (n_trapezoid < 1 || n_trapezoid > 4096)
    throw std::invalid_argument(std::string(op) + ": n_trapezoid must be in [1, 4096]");
  check_mh(op, mh, energy_op);
  if (n_steps < 1) throw std::invalid_argument(std::string(op) + ": n_steps must be >= 1");
  mlp_sum::with_net_sum(dtype, D, ptrs, dims, scalars, energy, means, log_weights, variances, K, mix_alpha,
                        mix_sigma2, [&](auto tag, const auto& m) {
    using T = decltype(tag);
    if (mh == 1) need_energy(m, op);
    mala_impl<T>(m, ptr<T>(x), ptr<T>(step_size), B, n_steps, static_cast<int>(n_trapezoid), seed, offset,
                 chain_offset, static_cast<int>(mh), ptr<T>(x_out), ptr<T>(accept_rate));
  });
}

void hmc_op(const char* op, bool energy_op, int dtype, uintptr_t x, int64_t B, int64_t D,
            const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims, const std::vector<double>& scalars,
            const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances, int64_t K,
            double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps, int64_t n_leapfrog,
            uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh, double damping, uintptr_t x_out,
            uintptr_t accept_rate) {
  if (n_leapfrog < 1 || n_leapfrog > (int64_t(1) << 30))
    throw std::invalid_argument(std::string(op) + ": n_leapfrog must be >= 1");
  check_mh(op, mh, energy_op);
  if (n_steps < 1) throw std::invalid_argument(std::string(op) + ": n_steps must be >= 1");
  if (!(damping >= 0.0 && damping < 1.0)) throw std::invalid_argument(std::string(op) + ": damping must be in [0, 1)");
  mlp_sum::with_net_sum(dtype, D, ptrs, dims, scalars, energy, means, log_weights, variances, K, mix_alpha,
                        mix_sigma2, [&](auto tag, const auto& m) {
    using T = decltype(tag);
    if (mh == 1) need_energy(m, op);
    hmc_impl<T>(m, ptr<T>(x), ptr<T>(step_size), B, n_steps, static_cast<int>(n_leapfrog), seed, offset,
                chain_offset, static_cast<int>(mh), damping, ptr<T>(x_out), ptr<T>(accept_rate));
  });
}

}  // namespace

void mlp_score(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
               const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
               uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
               uintptr_t score) {
  mlp_sum::with_net_sum(dtype, D, ptrs, dims, scalars, {}, means, log_weights, variances, K, mix_alpha, mix_sigma2,
                        [&](auto tag, const auto& m) {
    using T = decltype(tag);
    score_impl<T>(m, ptr<T>(x), B, ptr<T>(score), nullptr);
  });
}

void mlp_energy(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                int64_t K, double mix_alpha, double mix_sigma2, uintptr_t score, uintptr_t logp) {
  mlp_sum::with_net_sum(dtype, D, ptrs, dims, scalars, energy, means, log_weights, variances, K, mix_alpha,
                        mix_sigma2, [&](auto tag, const auto& m) {
    using T = decltype(tag);
    need_energy(m, "mlp_energy");
    score_impl<T>(m, ptr<T>(x), B, ptr<T>(score), ptr<T>(logp));
  });
}

void mlp_mala(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
              const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
              uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
              uintptr_t step_size, int64_t n_steps, int64_t n_trapezoid, uint64_t seed, uint64_t offset,
              uint64_t chain_offset, int64_t mh, uintptr_t x_out, uintptr_t accept_rate) {
  mala_op("mlp_mala", false, dtype, x, B, D, ptrs, dims, scalars, {}, means, log_weights, variances, K, mix_alpha,
          mix_sigma2, step_size, n_steps, n_trapezoid, seed, offset, chain_offset, mh, x_out, accept_rate);
}

void mlp_energy_mala(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                     const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                     const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                     int64_t K, double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps,
                     int64_t n_trapezoid, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
                     uintptr_t x_out, uintptr_t accept_rate) {
  mala_op("mlp_energy_mala", true, dtype, x, B, D, ptrs, dims, scalars, energy, means, log_weights, variances, K,
          mix_alpha, mix_sigma2, step_size, n_steps, n_trapezoid, seed, offset, chain_offset, mh, x_out, accept_rate);
}

void mlp_hmc(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
             const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
             uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
             uintptr_t step_size, int64_t n_steps, int64_t n_leapfrog, uint64_t seed, uint64_t offset,
             uint64_t chain_offset, int64_t mh, double damping, uintptr_t x_out, uintptr_t accept_rate) {
  hmc_op("mlp_hmc", false, dtype, x, B, D, ptrs, dims, scalars, {}, means, log_weights, variances, K, mix_alpha,
         mix_sigma2, step_size, n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping, x_out, accept_rate);
}

void mlp_energy_hmc(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                    const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                    const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                    int64_t K, double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps,
                    int64_t n_leapfrog, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
                    double damping, uintptr_t x_out, uintptr_t accept_rate) {
  hmc_op("mlp_energy_hmc", true, dtype, x, B, D, ptrs, dims, scalars, energy, means, log_weights, variances, K,
         mix_alpha, mix_sigma2, step_size, n_steps, n_leapfrog, seed, offset, chain_offset, mh, damping, x_out,
         accept_rate);
}

}  // namespace cpu
}  // namespace fastsamp
