// The gradient side of the whole-trajectory policy kernels (trajectory_policy.cpp): per-thread
// gradient sums of the DriftNet's weights, biases, time embedding and Langevin scale, the backward
// through the network of one (block of chains, step) whose activations are in a Work, and the
// fixed-order reduction of the per-thread sums into the outputs.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/common.h"
#include "cpu/grad_sums.h"
#include "cpu/mlp.h"

namespace fastsamp {
namespace cpu {
namespace policy {

using namespace mlp;

// Per-thread gradient sums: the layer gradients (mlp::StagedGrads, staged per kFlush (block, step) partials;
// its input-layer bias sum is unused: that gradient goes to the time-embedding rows) and, summed over blocks
// only, dtemb (T, Hp) and the Langevin scale's dlgv (T, width).
template <typename T>
struct Grads : StagedGrads<T> {
  ABuf<T> dtemb, dlgv;
  int lgv_width;
  Grads(const Net<T>& n, int lgv_width_)
      : StagedGrads<T>(n), dtemb(static_cast<size_t>(n.Tn) * n.Hp),
        dlgv(static_cast<size_t>(n.Tn) * lgv_width_), lgv_width(lgv_width_) {}
};

// Backward through the network of one (block, step i) whose forward (BACKWARD) is in w, from the
// gradient w.GO [nb][Dq] of its (pre-clamp, masked) output (mlp::layer_grads): the weight / bias /
// temb[i] gradients (temb[i] takes the input layer's bias gradient) into gr; with gx,
// gx[l][d] += (W_s^T g z_0)[l][d], the gradient w.r.t. the input X.
template <typename T>
void net_backward(const Net<T>& n, Work<T>& w, Grads<T>& gr, const T* X, int nb, int i, T* __restrict gx) {
  LayerGrads<T> g = gr.sums;
  g.db0 = gr.dtemb.p + static_cast<size_t>(i) * n.Hp;
  const T* gz0 = layer_grads(n, w, X, nb, g);
  if (gx) input_layer_vjp<T, true>(n, gz0, nb, gx, n.D);
  gr.step_done(false);
}

// The gradient outputs (row-major, unpadded): temb (T, H), ws (H, D), bs (H), the L hidden (H, H)
// weights and (H,) biases, wo (2D, H), bo (2D) (the unused log-variance half gets zeros).
template <typename T>
struct GradOut {
  T *temb, *ws, *bs, *wo, *bo;
  const std::vector<uintptr_t>&hw, &hb;
  T* lgv;  // (T, width) with the Langevin term
};

// The per-thread sums, reduced in a fixed order into the outputs.
template <typename T>
void reduce_grads(const Net<T>& n, std::vector<std::unique_ptr<Grads<T>>>& per, const GradOut<T>& g) {
  const int D = n.D, Tn = n.Tn, Hp = n.Hp, H = n.H, L = n.L;
  for (auto& p : per) p->step_done(true);
  const auto dtemb = [](const Grads<T>& p) { return p.dtemb.p; };
  const auto dwsT = [](const Grads<T>& p) { return p.tot(p.sums.dwsT); };
  const auto db = [](const Grads<T>& p) { return p.tot(p.sums.db); };
  const auto dw = [](const Grads<T>& p) { return p.tot(p.sums.dw); };
  const auto dbo = [](const Grads<T>& p) { return p.tot(p.sums.dbo); };
  const auto dwo = [](const Grads<T>& p) { return p.tot(p.sums.dwo); };
  const auto dlgv = [](const Grads<T>& p) { return p.dlgv.p; };
  for (int i = 0; i < Tn; ++i)
    for (int j = 0; j < H; ++j)
      g.temb[static_cast<size_t>(i) * H + j] = thread_sum<T>(per, dtemb, static_cast<size_t>(i) * Hp + j);
  for (int j = 0; j < H; ++j) {
    T s = 0;
    for (int i = 0; i < Tn; ++i) s += g.temb[static_cast<size_t>(i) * H + j];
    g.bs[j] = s;
    for (int d = 0; d < D; ++d) g.ws[j * D + d] = thread_sum<T>(per, dwsT, static_cast<size_t>(d) * Hp + j);
  }
  for (int k = 0; k < L; ++k) {
    T* gw = ptr<T>(g.hw[k]);
    T* gb = ptr<T>(g.hb[k]);
    for (int j = 0; j < H; ++j) {
      const size_t row = static_cast<size_t>(k) * Hp + j;
      gb[j] = thread_sum<T>(per, db, row);
      for (int m = 0; m < H; ++m) gw[static_cast<size_t>(j) * H + m] = thread_sum<T>(per, dw, row * Hp + m);
    }
  }
  for (int d = 0; d < 2 * D; ++d) {  // the unused log-variance half (d >= D) gets zeros
    g.bo[d] = d < D ? thread_sum<T>(per, dbo, d) : T(0);
    for (int j = 0; j < H; ++j)
      g.wo[static_cast<size_t>(d) * H + j] = d < D ? thread_sum<T>(per, dwo, static_cast<size_t>(d) * Hp + j) : T(0);
  }
  if (g.lgv)
    for (size_t e = 0, m = static_cast<size_t>(Tn) * per[0]->lgv_width; e < m; ++e)
      g.lgv[e] = thread_sum<T>(per, dlgv, e);
}

template <typename T>
std::vector<std::unique_ptr<Grads<T>>> thread_grads(const Net<T>& n, int lgv_width, int nt) {
  std::vector<std::unique_ptr<Grads<T>>> per(nt);
  for (auto& g : per) g.reset(new Grads<T>(n, lgv_width));
  return per;
}

}  // namespace policy
}  // namespace cpu
}  // namespace fastsamp
