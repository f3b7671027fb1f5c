// Sums of network factors on the fused MLP engine of cpu/mlp.h, the model of the score-network ops of
// score_mlp.cpp: ScoreMLP score networks, EnergyMLP energy networks (fastsamp.models) and optionally one
// analytic Gaussian mixture (cpu/gmm.h), the composition p ∝ Π_i p_i of fastsamp.models.Product.
//
// One network at time t (α, σ² its schedule's marginal, m, σ_d² its data mean and variance):
//
//   f(x) = W_o act(... act(W_0 [x, sin(t ω), cos(t ω)] + b_0) ...) + b_o   (act = SiLU or GELU),
//   a = α m,  v = α² σ_d² + σ²;
//   score network:  s(x) = (a − x)/v + f(x)/√v;
//   energy network: E(x) = |r|²/(2v),  r = x − a − √v f(x),  log p = −E, and, with J_f = ∂f/∂x,
//                   ∇_x E = (I − √v J_f)ᵀ r / v,  so  s(x) = −∇_x E = −r/v + J_f(x)ᵀ r / √v.
//
// An energy network's J_fᵀ r is one backward through the layers (mlp::net_input_vjp) after a forward
// that keeps every activation: its energy and score come from one pass, about twice a score network's
// cost. The time columns of W_0 meet the same emb(t) in every row: W_0[:, D:] emb(t) is computed once per
// call (in double) and enters the engine as its additive per-call input temb.
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/common.h"
#include "cpu/gmm.h"
#include "cpu/mlp.h"

namespace fastsamp {
namespace cpu {
namespace mlp_sum {

using mlp::ABuf;
using mlp::kBlock;

// One network's arguments from the flat lists of the ABI (see ops.h).
struct NetArgs {
  uintptr_t freq, mean, w_in, b_in, w_out, b_out;
  std::vector<uintptr_t> hw, hb;
  int F, H, act;
  bool energy;
  double t, alpha, sigma2, data_var;
};

// The networks of the flat lists: 4 dims [n_freq, hidden, n_hidden, activation] and 4 scalars [t, α, σ², σ_d²]
// per network; `energy`: one flag per network (1: an energy network), or empty (every network a score network).
inline std::vector<NetArgs> parse_nets(const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims,
                                       const std::vector<double>& scalars, const std::vector<int64_t>& energy) {
  if (dims.size() % 4 != 0 || scalars.size() != dims.size())
    throw std::invalid_argument("fastsamp._C: mlp dims and scalars must hold 4 values per network");
  if (!energy.empty() && energy.size() * 4 != dims.size())
    throw std::invalid_argument("fastsamp._C: mlp energy flags must hold one value per network");
  std::vector<NetArgs> nets;
  size_t p = 0;
  for (size_t i = 0; i < dims.size(); i += 4) {
    NetArgs a;
    a.F = checked_dim(dims[i], "n_freq");
    a.H = checked_dim(dims[i + 1], "hidden");
    const int L = checked_dim(dims[i + 2], "n_hidden");
    a.act = static_cast<int>(dims[i + 3]);
    a.energy = !energy.empty() && energy[i / 4] != 0;
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

// One network at its time t: the engine's padded weights (an energy network's with the backward's too),
// a = α m and the scales v, √v.
template <typename T>
struct FactorNet {
  bool energy;
  std::vector<T> temb;  // W_0[:, D:] emb(t) (H,)
  mlp::Net<T> net;
  std::vector<T> am;  // α m (D,)
  T v, sv;

  FactorNet(const NetArgs& a, int D)
      : energy(a.energy),
        temb(time_input<T>(a, D)),
        net(mlp::Ptrs{reinterpret_cast<uintptr_t>(temb.data()), a.w_in, a.b_in, a.w_out, a.b_out, a.hw, a.hb,
                      D + 2 * a.F, a.act},
            D, a.H, 1, std::numeric_limits<double>::infinity(), a.energy),
        am(D) {
    const T alpha = static_cast<T>(a.alpha);
    const T* mean = ptr<T>(a.mean);
    for (int d = 0; d < D; ++d) am[d] = alpha * mean[d];
    v = alpha * alpha * static_cast<T>(a.data_var) + static_cast<T>(a.sigma2);
    sv = std::sqrt(v);
  }
};

// Σ_i s_i (+ the mixture's score) and, when every factor has one, Σ_i log p_i: the networks and the
// optional mixture of one call.
template <typename T>
struct NetSum {
  int D;
  std::vector<std::unique_ptr<FactorNet<T>>> nets;
  std::unique_ptr<Mixture<T>> mix;

  // The index of the first score network (no log-density), or -1 when every factor has an energy.
  int first_score_net() const {
    for (size_t i = 0; i < nets.size(); ++i)
      if (!nets[i]->energy) return static_cast<int>(i);
    return -1;
  }
};

// Per-thread buffers of a NetSum for batches of up to `rows` rows.
template <typename T>
struct SumWork {
  static constexpr int W = kRowLanes<T>;
  std::vector<std::unique_ptr<mlp::Work<T>>> work;
  ABuf<T> gx;  // an energy network's J_fᵀ r ([rows][D])
  Buf<T> mixs;  // the mixture's score_rows scratch
  SumWork(const NetSum<T>& m, int rows) : mixs(score_rows_scratch<T, W>(m.D)) {
    bool any_energy = false;
    for (const auto& n : m.nets) {
      work.emplace_back(new mlp::Work<T>(n->net, n->energy, false, rows));
      any_energy = any_energy || n->energy;
    }
    if (any_energy) gx = ABuf<T>(static_cast<size_t>(rows) * m.D);
  }
};

// S[r] = Σ_i s_i(X[r]) and, when LP is given (every factor has an energy), LP[r] = Σ_i log p_i(X[r]) for rows
// r < nr (row-major, D per row), nr <= the SumWork's rows: factors in order (networks, then the mixture).
template <typename T>
void sum_rows(const NetSum<T>& m, SumWork<T>& w, const T* __restrict X, int nr, T* __restrict S,
              T* __restrict LP) {
  const int D = m.D;
  for (size_t i = 0; i < m.nets.size(); ++i) {
    const FactorNet<T>& fn = *m.nets[i];
    mlp::Work<T>& wk = *w.work[i];
    const T v = fn.v, sv = fn.sv;
    const int Dq = fn.net.Dq;
    const bool first = i == 0;
    if (!fn.energy) {
      mlp::net_forward<T, false>(fn.net, wk, X, nr, 0);
      for (int r = 0; r < nr; ++r) {
        const T* __restrict xr = X + static_cast<int64_t>(r) * D;
        const T* __restrict o = wk.DR.p + static_cast<int64_t>(r) * Dq;
        T* __restrict sr = S + static_cast<int64_t>(r) * D;
        for (int d = 0; d < D; ++d) {
          const T s = (fn.am[d] - xr[d]) / v + o[d] / sv;
          sr[d] = first ? s : sr[d] + s;
        }
      }
      continue;
    }
    // energy network: r = x − a − √v f into the output cotangent (w.GO), E = |r|²/(2v), then J_fᵀ r
    mlp::net_forward<T, true>(fn.net, wk, X, nr, 0);
    for (int r = 0; r < nr; ++r) {
      const T* __restrict xr = X + static_cast<int64_t>(r) * D;
      const T* __restrict o = wk.OUT.p + static_cast<int64_t>(r) * Dq;
      T* __restrict res = wk.GO.p + static_cast<int64_t>(r) * Dq;
      T e = 0;
      for (int d = 0; d < D; ++d) {
        const T rd = (xr[d] - fn.am[d]) - sv * o[d];
        res[d] = rd;
        e += rd * rd;
      }
      if (LP) LP[r] = first ? -(e / (T(2) * v)) : LP[r] - e / (T(2) * v);
    }
    mlp::net_input_vjp<T>(fn.net, wk, nr, w.gx.p, D);
    for (int r = 0; r < nr; ++r) {
      const T* __restrict res = wk.GO.p + static_cast<int64_t>(r) * Dq;
      const T* __restrict g = w.gx.p + static_cast<int64_t>(r) * D;
      T* __restrict sr = S + static_cast<int64_t>(r) * D;
      for (int d = 0; d < D; ++d) {
        const T s = g[d] / sv - res[d] / v;
        sr[d] = first ? s : sr[d] + s;
      }
    }
  }
  if (!m.mix) return;
  constexpr int W = SumWork<T>::W;
  const bool alone = m.nets.empty();
  score_rows<T, W, 0>(*m.mix, D, X, 0, nr, w.mixs.p, [&](int64_t r0, int nl, const T* bs, const T* bl) {
    for (int l = 0; l < nl; ++l) {
      for (int d = 0; d < D; ++d) {
        T& sr = S[(r0 + l) * D + d];
        sr = alone ? bs[d * W + l] : sr + bs[d * W + l];
      }
      if (LP) LP[r0 + l] = alone ? bl[l] : LP[r0 + l] + bl[l];
    }
  });
}

// f(c0, c1) on each thread's contiguous run of chains [c0, c1) (mlp::row_run; at least 16 chains per thread).
template <typename F>
void for_chain_runs(int64_t B, F&& f) {
  parallel(threads_for(B, 16), [&](int tid, int nt) {
    const auto [c0, c1] = mlp::row_run(B, tid, nt);
    if (c0 < c1) f(c0, c1);
  });
}

// run(T(), sum) with the NetSum of the given networks and mixture (K = 0: none) in `dtype`.
template <typename Run>
void with_net_sum(int dtype, int64_t D, const std::vector<uintptr_t>& ptrs, const std::vector<int64_t>& dims,
                  const std::vector<double>& scalars, const std::vector<int64_t>& energy, uintptr_t means,
                  uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
                  Run&& run) {
  const std::vector<NetArgs> args = parse_nets(ptrs, dims, scalars, energy);
  if (args.empty() && K <= 0) throw std::invalid_argument("fastsamp._C: mlp ops need a network or a mixture");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    NetSum<T> m;
    m.D = checked_dim(D, "D");
    for (const NetArgs& a : args) m.nets.emplace_back(new FactorNet<T>(a, m.D));
    if (K > 0)
      m.mix.reset(new Mixture<T>(ptr<T>(means), ptr<T>(log_weights), ptr<T>(variances), K, D, mix_alpha, mix_sigma2));
    run(tag, m);
  });
}

}  // namespace mlp_sum
}  // namespace cpu
}  // namespace fastsamp
