// Score networks (fastsamp.models.ScoreMLP) on the fused MLP engine of cpu/mlp.h: the score op
// mlp_score and the whole-move kernel mlp_mala, for a sum of several networks and optionally an
// analytic Gaussian mixture (cpu/gmm.h): the composition p ∝ Π_i p_i of fastsamp.models.Product.
//
// One network at time t (α, σ² its schedule's marginal, m, σ_d² its data mean and variance):
//
//   s(x) = (α m − x)/v + f([x, sin(t ω), cos(t ω)])/√v,   v = α² σ_d² + σ²,
//   f = W_o act(... act(W_1 act(W_0 [x, emb] + b_0) + b_1) ...) + b_o   (act = SiLU or GELU).
//
// The time columns of W_0 meet the same emb(t) in every row: W_0[:, D:] emb(t) is computed once per
// call (in double) and enters the engine as its additive per-call input temb.
//
// mlp_hmc (op 8 likewise): HMC / U-HMC, one batch of the block's rows per leapfrog step.
// mlp_mala (contract: gmm_mala, op 7, mh 0 / 2): chains row-major in blocks of <= kBlock, each
// thread a contiguous run of chains. Per move the block's proposal and the n − 1 interior trapezoid
// points go through every network in batches of up to kPointsPerBatch points (kPointsPerBatch·nb rows:
// weights reused over them, memory bounded for any n_trapezoid). The normals are the contract's draw
// (seed, offset + m) by rows_normals (the bits of mala_propose / sde_step), the uniforms
// block_log_uniform (counter 0xFFFFFFFF). Chains never mix: a NaN chain stays in its row.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/common.h"
#include "cpu/gmm.h"
#include "cpu/mlp.h"
#include "cpu/ops.h"

namespace fastsamp {
namespace cpu {
namespace {

using mlp::ABuf;
using mlp::kBlock;

// One network's arguments from the flat lists of the ABI (see ops.h).
struct NetArgs {
  uintptr_t freq, mean, w_in, b_in, w_out, b_out;
  std::vector<uintptr_t> hw, hb;
  int F, H, act;
  double t, alpha, sigma2, data_var;
};

std::vector<NetArgs> parse_nets(const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims,
                                const std::vector<double>& scalars) {
  if (dims.size() % 4 != 0 || scalars.size() != dims.size())
    throw std::invalid_argument("fastsamp._C: mlp dims and scalars must hold 4 values per network");
  std::vector<NetArgs> nets;
  size_t p = 0;
  for (size_t i = 0; i < dims.size(); i += 4) {
    NetArgs a;
    a.F = checked_dim(dims[i], "n_freq");
    a.H = checked_dim(dims[i + 1], "hidden");
    const int L = checked_dim(dims[i + 2], "n_hidden");
    a.act = static_cast<int>(dims[i + 3]);
    if (a.H < 1) throw std::invalid_argument("fastsamp._C: mlp hidden width must be >= 1");
    if (a.act != mlp::kGelu && a.act != mlp::kSilu) throw std::invalid_argument("fastsamp._C: unknown activation");
    if (ptrs.size() < p + 6 + 2 * static_cast<size_t>(L))
      throw std::invalid_argument("fastsamp._C: too few mlp parameter pointers");
    a.freq = ptrs[p];
    a.mean = ptrs[p + 1];
    a.w_in = ptrs[p + 2];
    a.b_in = ptrs[p + 3];
    a.w_out = ptrs[p + 4];
    a.b_out = ptrs[p + 5];
    for (int k = 0; k < L; ++k) {
      a.hw.push_back(ptrs[p + 6 + 2 * k]);
      a.hb.push_back(ptrs[p + 7 + 2 * k]);
    }
    p += 6 + 2 * static_cast<size_t>(L);
    a.t = scalars[i];
    a.alpha = scalars[i + 1];
    a.sigma2 = scalars[i + 2];
    a.data_var = scalars[i + 3];
    nets.push_back(std::move(a));
  }
  if (p != ptrs.size()) throw std::invalid_argument("fastsamp._C: too many mlp parameter pointers");
  return nets;
}

// W_0[:, D:] emb(t), emb = [sin(t ω_f)]_f ++ [cos(t ω_f)]_f with t ω_f rounded to T (as the
// reference computes it in x's dtype); summed in double.
template <typename T>
std::vector<T> time_input(const NetArgs& a, int D) {
  const T* w = ptr<T>(a.w_in);
  const T* freq = ptr<T>(a.freq);
  const int F = a.F, ld = D + 2 * F;
  const T tt = static_cast<T>(a.t);
  std::vector<double> emb(2 * static_cast<size_t>(F));
  for (int f = 0; f < F; ++f) {
    const T arg = tt * freq[f];
    emb[f] = static_cast<double>(static_cast<T>(std::sin(static_cast<double>(arg))));
    emb[F + f] = static_cast<double>(static_cast<T>(std::cos(static_cast<double>(arg))));
  }
  std::vector<T> out(a.H);
  for (int j = 0; j < a.H; ++j) {
    double s = 0.0;
    for (int e = 0; e < 2 * F; ++e) s += static_cast<double>(w[static_cast<int64_t>(j) * ld + D + e]) * emb[e];
    out[j] = static_cast<T>(s);
  }
  return out;
}

// One network at its time t: the engine's padded weights, α m and the scales v, √v.
template <typename T>
struct ScoreNet {
  std::vector<T> temb;  // W_0[:, D:] emb(t) (H,)
  mlp::Net<T> net;
  std::vector<T> am;  // α m (D,)
  T v, sv;

  ScoreNet(const NetArgs& a, int D)
      : temb(time_input<T>(a, D)),
        net(mlp::Ptrs{reinterpret_cast<uintptr_t>(temb.data()), a.w_in, a.b_in, a.w_out, a.b_out, a.hw, a.hb,
                      D + 2 * a.F, a.act},
            D, a.H, 1, std::numeric_limits<double>::infinity(), false),
        am(D) {
    const T alpha = static_cast<T>(a.alpha);
    const T* mean = ptr<T>(a.mean);
    for (int d = 0; d < D; ++d) am[d] = alpha * mean[d];
    v = alpha * alpha * static_cast<T>(a.data_var) + static_cast<T>(a.sigma2);
    sv = std::sqrt(v);
  }
};

// Σ_i s_i (+ the mixture's score): the networks and the optional mixture of one call.
template <typename T>
struct ScoreSum {
  int D;
  std::vector<std::unique_ptr<ScoreNet<T>>> nets;
  std::unique_ptr<Mixture<T>> mix;
};

// Per-thread buffers of a ScoreSum for batches of up to `rows` rows.
template <typename T>
struct SumWork {
  static constexpr int W = Lanes<T>::W;
  std::vector<std::unique_ptr<mlp::Work<T>>> work;
  Buf<T> xt, st, lp, ell;
  SumWork(const ScoreSum<T>& m, int rows)
      : xt(static_cast<size_t>(m.D) * W), st(static_cast<size_t>(m.D) * W), lp(W), ell(kChunkK * W) {
    for (const auto& n : m.nets) work.emplace_back(new mlp::Work<T>(n->net, false, false, rows));
  }
};

// S[r] = Σ_i s_i(X[r]) for rows r < nr (row-major, D per row), nr <= the SumWork's rows: factors
// in order (networks, then the mixture).
template <typename T>
void score_rows(const ScoreSum<T>& m, SumWork<T>& w, const T* __restrict X, int nr, T* __restrict S) {
  const int D = m.D;
  for (size_t i = 0; i < m.nets.size(); ++i) {
    const ScoreNet<T>& sn = *m.nets[i];
    mlp::Work<T>& wk = *w.work[i];
    mlp::net_forward<T, false>(sn.net, wk, X, nr, 0);
    const T v = sn.v, sv = sn.sv;
    const int Dq = sn.net.Dq;
    for (int r = 0; r < nr; ++r) {
      const T* __restrict xr = X + static_cast<int64_t>(r) * D;
      const T* __restrict o = wk.DR.p + static_cast<int64_t>(r) * Dq;
      T* __restrict sr = S + static_cast<int64_t>(r) * D;
      for (int d = 0; d < D; ++d) {
        const T s = (sn.am[d] - xr[d]) / v + o[d] / sv;
        sr[d] = i == 0 ? s : sr[d] + s;
      }
    }
  }
  if (!m.mix) return;
  constexpr int W = SumWork<T>::W;
  for (int r0 = 0; r0 < nr; r0 += W) {
    const int nl = std::min(W, nr - r0);
    for (int l = 0; l < W; ++l)
      for (int d = 0; d < D; ++d) w.xt.p[d * W + l] = l < nl ? X[static_cast<int64_t>(r0 + l) * D + d] : T(0);
    block_score<T, W, 0>(*m.mix, D, w.xt.p, w.st.p, w.lp.p, w.ell.p);
    for (int l = 0; l < nl; ++l)
      for (int d = 0; d < D; ++d) {
        T& sr = S[static_cast<int64_t>(r0 + l) * D + d];
        sr = m.nets.empty() ? w.st.p[d * W + l] : sr + w.st.p[d * W + l];
      }
  }
}

// f(c0, c1) on each thread's contiguous run of chains [c0, c1) (at least 16 chains per thread).
template <typename F>
void for_chain_runs(int64_t B, F&& f) {
  parallel(threads_for(B, 16), [&](int tid, int nt) {
    const int64_t c0 = B * tid / nt, c1 = B * (tid + 1) / nt;
    if (c0 < c1) f(c0, c1);
  });
}

template <typename T>
void score_impl(const ScoreSum<T>& m, const T* x, int64_t B, T* score) {
  const int D = m.D;
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, kBlock);
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      score_rows<T>(m, w, x + b0 * D, nb, score + b0 * D);
    }
  });
}

// Trapezoid points (proposal and interior) of a block evaluated per network call: the weights are
// reused over up to kPointsPerBatch * kBlock rows, and the activations stay a few hundred KB.
constexpr int kPointsPerBatch = 4;

// n_steps MALA moves (mh 0: trapezoid with n sub-intervals, 2: none) of the chains of x.
template <typename T>
void mala_impl(const ScoreSum<T>& m, const T* x_in, const T* step, int64_t B, int64_t n_steps, int n_trap,
               uint64_t seed, uint64_t offset, uint64_t chain0, int mh, T* x_out, T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = m.D;
  const int n = mh == 0 ? n_trap : 1;  // score evaluations per move: x' and the n − 1 interior points
  const int J = (D + 3) / 4;
  const T tn = static_cast<T>(n_trap);
  const int per_call = std::min(n, kPointsPerBatch);  // points per network call
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, per_call * kBlock);
    const size_t bd = static_cast<size_t>(kBlock) * D;
    // state, score; proposal, its score, d = x' - x; a batch of points and their scores
    ABuf<T> X(bd), S(bd), XP(bd), SPp(bd), DD(bd), PB(bd * per_call), SB(bd * per_call);
    ABuf<T> XI(static_cast<size_t>(64) * ((kBlock * J + 15) / 16));
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
      score_rows<T>(m, w, X.p, nb, S.p);
      const uint64_t g0 = chain0 + static_cast<uint64_t>(b0);
      for (int64_t mv = 0; mv < n_steps; ++mv) {
        const uint64_t off = offset + static_cast<uint64_t>(mv);
        GroupNormals<T> gen(seed, off, J, g0 * J);
        typename GroupNormals<T>::State gst;
        gen.prime(gst);
        rows_normals<T>(gen, gst, nb, D, XI.p, NormalsPrefetch{});
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
          score_rows<T>(m, w, PB.p, kn * nb, SB.p);
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
          const T delta = (T(0.5) * (sd + spd) + inner.p[l]) / tn;
          const T log_alpha = delta + (ff - bb) / (T(4) * eps.p[l]);
          if (logu.p[l] < log_alpha) {
            std::memcpy(X.p + r, XP.p + r, sizeof(T) * D);
            std::memcpy(S.p + r, SPp.p + r, sizeof(T) * D);
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

// n_steps HMC moves (op 8 with mh 0 / 2): p starts at 0 and is carried across moves; move m refreshes
// p0 = damping p + sqrt(1 − damping²) ξ, runs n_lf leapfrog steps (one batch of nb rows through every
// network per step) with the trapezoid ΔlogP along the path, and flips p ← −p0 on rejection.
template <typename T>
void hmc_impl(const ScoreSum<T>& m, const T* x_in, const T* step, int64_t B, int64_t n_steps, int n_lf,
              uint64_t seed, uint64_t offset, uint64_t chain0, int mh, double damping, T* x_out, T* rate) {
  constexpr int W = Lanes<T>::W;
  const int D = m.D;
  const int J = (D + 3) / 4;
  const T damp = static_cast<T>(damping);
  const T c_n = static_cast<T>(std::sqrt(1.0 - damping * damping));
  for_chain_runs(B, [&](int64_t c0, int64_t c1) {
    SumWork<T> w(m, kBlock);
    const size_t bd = static_cast<size_t>(kBlock) * D;
    // current state, score, momentum; the refreshed momentum p0; the trajectory's state, score, momentum
    ABuf<T> X(bd), S(bd), PC(bd), P0(bd), XA(bd), SA(bd), XB(bd), SB(bd), PL(bd);
    ABuf<T> XI(static_cast<size_t>(64) * ((kBlock * J + 15) / 16));
    ABuf<T> eps(kBlock), heps(kBlock), dlp(kBlock), nacc(kBlock), logu(kBlock + W);
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
      score_rows<T>(m, w, X.p, nb, S.p);
      const uint64_t g0 = chain0 + static_cast<uint64_t>(b0);
      for (int64_t mv = 0; mv < n_steps; ++mv) {
        const uint64_t off = offset + static_cast<uint64_t>(mv);
        GroupNormals<T> gen(seed, off, J, g0 * J);
        typename GroupNormals<T>::State gst;
        gen.prime(gst);
        rows_normals<T>(gen, gst, nb, D, XI.p, NormalsPrefetch{});
        for (int64_t i = 0; i < nbd; ++i) {
          const T p = damp * PC.p[i] + c_n * XI.p[i];
          P0.p[i] = p;
          PL.p[i] = p;
        }
        std::memcpy(XA.p, X.p, sizeof(T) * nbd);
        std::memcpy(SA.p, S.p, sizeof(T) * nbd);
        for (int l = 0; l < nb; ++l) dlp.p[l] = T(0);
        T *xa = XA.p, *sa = SA.p, *xb = XB.p, *sb = SB.p;
        for (int j = 0; j < n_lf; ++j) {
          // p_half = p + (eps/2) s, x' = x + eps p_half; s' = s(x'); p = p_half + (eps/2) s'
          for (int l = 0; l < nb; ++l)
            for (int d = 0; d < D; ++d) {
              const int64_t i = static_cast<int64_t>(l) * D + d;
              const T ph = PL.p[i] + heps.p[l] * sa[i];
              PL.p[i] = ph;
              xb[i] = xa[i] + eps.p[l] * ph;
            }
          score_rows<T>(m, w, xb, nb, sb);
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
            acc = logu.p[l] < (dlp.p[l] - T(0.5) * kin) + T(0.5) * kin0;
          }
          if (acc) {
            std::memcpy(X.p + r, xa + r, sizeof(T) * D);
            std::memcpy(S.p + r, sa + r, sizeof(T) * D);
            std::memcpy(PC.p + r, PL.p + r, sizeof(T) * D);
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

// run(T(), sum) with the ScoreSum of the given networks and mixture (K = 0: none) in `dtype`.
template <typename Run>
void with_score_sum(int dtype, int64_t D, const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims,
                    const std::vector<double>& scalars, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                    int64_t K, double mix_alpha, double mix_sigma2, Run&& run) {
  const std::vector<NetArgs> args = parse_nets(ptrs, dims, scalars);
  if (args.empty() && K <= 0) throw std::invalid_argument("fastsamp._C: mlp ops need a network or a mixture");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    ScoreSum<T> m;
    m.D = checked_dim(D, "D");
    for (const NetArgs& a : args) m.nets.emplace_back(new ScoreNet<T>(a, m.D));
    if (K > 0)
      m.mix.reset(new Mixture<T>(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, mix_alpha, mix_sigma2));
    run(tag, m);
  });
}

}  // namespace

void mlp_score(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
               const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
               uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
               uintptr_t score) {
  with_score_sum(dtype, D, ptrs, dims, scalars, means, log_weights, variances, K, mix_alpha, mix_sigma2,
                 [&](auto tag, const auto& m) {
    using T = decltype(tag);
    score_impl<T>(m, ptr<T>(x), B, ptr<T>(score));
  });
}

void mlp_mala(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
              const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
              uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
              uintptr_t step_size, int64_t n_steps, int64_t n_trapezoid, uint64_t seed, uint64_t offset,
              uint64_t chain_offset, int64_t mh, uintptr_t x_out, uintptr_t accept_rate) {
  if (n_trapezoid < 1 || n_trapezoid > 4096) throw std::invalid_argument("mlp_mala: n_trapezoid must be in [1, 4096]");
  if (mh != 0 && mh != 2) throw std::invalid_argument("mlp_mala: mh must be 0 (score) or 2 (none)");
  if (n_steps < 1) throw std::invalid_argument("mlp_mala: n_steps must be >= 1");
  with_score_sum(dtype, D, ptrs, dims, scalars, means, log_weights, variances, K, mix_alpha, mix_sigma2,
                 [&](auto tag, const auto& m) {
    using T = decltype(tag);
    mala_impl<T>(m, ptr<T>(x), ptr<T>(step_size), B, n_steps, static_cast<int>(n_trapezoid), seed, offset,
                 chain_offset, static_cast<int>(mh), ptr<T>(x_out), ptr<T>(accept_rate));
  });
}

void mlp_hmc(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
             const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
             uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
             uintptr_t step_size, int64_t n_steps, int64_t n_leapfrog, uint64_t seed, uint64_t offset,
             uint64_t chain_offset, int64_t mh, double damping, uintptr_t x_out, uintptr_t accept_rate) {
  if (n_leapfrog < 1 || n_leapfrog > (int64_t(1) << 30)) throw std::invalid_argument("mlp_hmc: n_leapfrog must be >= 1");
  if (mh != 0 && mh != 2) throw std::invalid_argument("mlp_hmc: mh must be 0 (score) or 2 (none)");
  if (n_steps < 1) throw std::invalid_argument("mlp_hmc: n_steps must be >= 1");
  if (!(damping >= 0.0 && damping < 1.0)) throw std::invalid_argument("mlp_hmc: damping must be in [0, 1)");
  with_score_sum(dtype, D, ptrs, dims, scalars, means, log_weights, variances, K, mix_alpha, mix_sigma2,
                 [&](auto tag, const auto& m) {
    using T = decltype(tag);
    hmc_impl<T>(m, ptr<T>(x), ptr<T>(step_size), B, n_steps, static_cast<int>(n_leapfrog), seed, offset,
                chain_offset, static_cast<int>(mh), damping, ptr<T>(x_out), ptr<T>(accept_rate));
  });
}

}  // namespace cpu
}  // namespace fastsamp
