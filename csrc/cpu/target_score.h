// The scores ∇log R(x) of the analytic benchmark targets of fastsamp/targets/, for the Langevin
// parametrisation of the whole-trajectory policy kernels (trajectory_policy.cpp), which need the
// target's score at every step of a rollout:
//
//   kIsoMixture  (1/K) Σ_k N(μ_k, v I)  (GMM25, GMM40): (Σ_k r_k μ_k − x) / v,
//                r = softmax_k(−|x − μ_k|² / (2v)), as Σ_k r_k (μ_k − x) / v: the mixture score of
//                cpu/gmm.h (block_score) on blocks of W rows
//   kFunnel      Neal's funnel, σ: ∂_0 = −x_0/σ² − (D−1)/2 + e^{−x_0} Σ_{i≥1} x_i² / 2, ∂_i = −x_i e^{−x_0}
//   kManyWell    pairs (a, b): ∂_a = −4a³ + 12a + 1/2, ∂_b = −b
//
// the formulas of the targets' `_score` methods (the same operations up to float rounding).
#pragma once
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cpu/common.h"
#include "cpu/gmm.h"

namespace fastsamp {
namespace cpu {

enum TargetKind { kNoTarget = 0, kIsoMixture = 1, kFunnel = 2, kManyWell = 3 };

template <typename T>
struct TargetScore {
  static constexpr int W = kRowLanes<T>;
  int kind = kNoTarget, D = 0;
  T param = 0;                            // kIsoMixture: the variance v; kFunnel: σ
  std::shared_ptr<const Mixture<T>> mix;  // kIsoMixture: the mixture of the means (K, D), weights 1/K, variances v

  TargetScore() = default;
  TargetScore(int kind_, int D_, int K, const T* means, T param_) : kind(kind_), D(D_), param(param_) {
    if (kind != kIsoMixture) return;
    const std::vector<T> log_w(K, T(0)), var(K, param);
    mix = std::make_shared<const Mixture<T>>(means, log_w.data(), var.data(), K, D, 1.0, 0.0);
  }
  // Values of scratch that operator() needs.
  size_t scratch_size() const { return kind == kIsoMixture ? score_rows_scratch<T, W>(D) : 1; }

  // sc[l*D + d] = ∇log R at the nb rows x[l*D + d]; scratch: scratch_size() values, 64-byte aligned.
  void operator()(const T* __restrict x, int nb, T* __restrict sc, T* __restrict scratch) const {
    if (kind == kIsoMixture) {
      score_rows<T, W, 0>(*mix, D, x, 0, nb, scratch, [&](int64_t b0, int n, const T* bs, const T*) {
        store_block<T, W>(bs, b0, n, D, sc);
      });
    } else if (kind == kFunnel) {
      const T inv_s2 = T(1) / (param * param);
      for (int l = 0; l < nb; ++l) {
        const T* __restrict xr = x + l * D;
        const T inv_var = std::exp(-xr[0]);
        T sq = 0;
        for (int d = 1; d < D; ++d) sq += xr[d] * xr[d];
        sc[l * D] = -xr[0] * inv_s2 - T(0.5) * static_cast<T>(D - 1) + T(0.5) * inv_var * sq;
        for (int d = 1; d < D; ++d) sc[l * D + d] = -xr[d] * inv_var;
      }
    } else {  // kManyWell (the entry points check the kind)
      for (int e = 0; e < nb * D; e += 2) {
        const T a = x[e];
        sc[e] = T(-4) * a * a * a + T(12) * a + T(0.5);
        sc[e + 1] = -x[e + 1];
      }
    }
  }
};

// The kind code checked against D (ManyWell needs an even D), before any thread starts.
inline void check_target(int kind, int64_t D, int64_t K) {
  if (kind < kIsoMixture || kind > kManyWell) throw std::invalid_argument("fastsamp._C: unknown target kind");
  if ((kind == kManyWell && D % 2) || (kind == kFunnel && D < 2) || (kind == kIsoMixture && K < 1))
    throw std::invalid_argument("fastsamp._C: target parameters do not fit D");
}

}  // namespace cpu
}  // namespace fastsamp
