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
#include "cpu/mlp.h"

namespace fastsamp {
namespace cpu {
namespace policy {

using namespace mlp;

// Per-thread gradient sums, padded layouts. The sums over (block, step) of the weight and bias
// gradients go in two levels: `stage` collects kFlush (block, step) partials, then is added to
// `total` and cleared, so that no float32 running sum takes more than ~kFlush + n / kFlush
// roundings at its own scale (a single running sum over the 300 partials of a typical call was
// ~8x less accurate than PyTorch's blocked GEMM / pairwise sums). dtemb rows only sum over blocks.
constexpr int kFlush = 16;
template <typename T>
struct Grads {
  size_t n_stage;
  ABuf<T> stage, total, dtemb, dlgv;
  T *dw, *db, *dwo, *dbo, *dwsT;
  int pending = 0, lgv_width;
  Grads(const Net<T>& n, int lgv_width_) : lgv_width(lgv_width_) {
    const size_t L = static_cast<size_t>(std::max(n.L, 1)), Hp = n.Hp, D = n.D;
    const size_t sz[5] = {L * Hp * Hp, L * Hp, D * Hp, static_cast<size_t>(n.Dq), D * Hp};
    size_t off[5], o = 0;
    for (int k = 0; k < 5; ++k) {
      off[k] = o;
      o += round_up(sz[k], kW<T>);
    }
    n_stage = o;
    stage = ABuf<T>(o);
    total = ABuf<T>(o);
    dw = stage.p + off[0];
    db = stage.p + off[1];
    dwo = stage.p + off[2];
    dbo = stage.p + off[3];
    dwsT = stage.p + off[4];
    dtemb = ABuf<T>(static_cast<size_t>(n.Tn) * n.Hp);
    dlgv = ABuf<T>(static_cast<size_t>(n.Tn) * lgv_width);
  }
  // the total of a staged array (same offset in `total`)
  const T* tot(const T* staged) const { return total.p + (staged - stage.p); }
  void step_done(bool last) {
    if (++pending < kFlush && !last) return;
    for (size_t i = 0; i < n_stage; i += kW<T>) {
      st<T>(total.p + i, ld<T>(total.p + i) + ld<T>(stage.p + i));
      st<T>(stage.p + i, Vec<T>{});
    }
    pending = 0;
  }
};

// Backward through the network of one (block, step i) whose forward (BACKWARD) is in w, from the
// gradient w.GO [nb][Dq] of its (pre-clamp, masked) output (mlp::backprop_layers): the weight / bias /
// temb[i] gradients into gr; with gx, gx[l][d] += (W_s^T g z_0)[l][d], the gradient w.r.t. the input X.
template <typename T>
void net_backward(const Net<T>& n, Work<T>& w, Grads<T>& gr, const T* X, int nb, int i, T* __restrict gx) {
  const int D = n.D, Dq = n.Dq, Hp = n.Hp, H = n.H, L = n.L;
  colsum<T>(nb, w.GO.p, Dq, n.NJo, gr.dbo);
  // output layer: dWo[d] += Σ_l go[l][d] u_L[l]
  with_nv(n.NJ, [&](auto nv) { wgrad<T, decltype(nv)::value>(D, nb, w.GO.p, Dq, w.u(L), Hp, n.NJ, gr.dwo, Hp); });
  const T* gz0 = backprop_layers(n, w, nb, [&](int k, const T* gz, auto nv) {
    constexpr int NV = decltype(nv)::value;
    if (k > 0) {  // layer k−1 → k: dW += Σ_l δz_k[l] u_{k−1}[l]ᵀ, db += Σ_l δz_k[l]
      wgrad<T, NV>(H, nb, gz, Hp, w.u(k - 1), Hp, n.NJ, gr.dw + static_cast<size_t>(k - 1) * Hp * Hp, Hp);
      colsum<T>(nb, gz, Hp, n.NJ, gr.db + static_cast<size_t>(k - 1) * Hp);
    } else {  // the input layer: temb[i] and W_s
      colsum<T>(nb, gz, Hp, n.NJ, gr.dtemb.p + static_cast<size_t>(i) * Hp);
      wgrad<T, NV>(D, nb, X, D, gz, Hp, n.NJ, gr.dwsT, Hp);
    }
  });
  if (gx) input_layer_vjp<T, true>(n, gz0, nb, gx, D);
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

// Σ over the threads, in thread order, of element e of the per-thread array that part(thread's Grads) points to.
template <typename T, typename Part>
T thread_sum(const std::vector<std::unique_ptr<Grads<T>>>& per, Part&& part, size_t e) {
  T s = 0;
  for (const auto& p : per) s += part(*p)[e];
  return s;
}

// The per-thread sums, reduced in a fixed order into the outputs.
template <typename T>
void reduce_grads(const Net<T>& n, std::vector<std::unique_ptr<Grads<T>>>& per, const GradOut<T>& g) {
  const int D = n.D, Tn = n.Tn, Hp = n.Hp, H = n.H, L = n.L;
  for (auto& p : per) p->step_done(true);
  const auto dtemb = [](const Grads<T>& p) { return p.dtemb.p; };
  const auto dwsT = [](const Grads<T>& p) { return p.tot(p.dwsT); };
  const auto db = [](const Grads<T>& p) { return p.tot(p.db); };
  const auto dw = [](const Grads<T>& p) { return p.tot(p.dw); };
  const auto dbo = [](const Grads<T>& p) { return p.tot(p.dbo); };
  const auto dwo = [](const Grads<T>& p) { return p.tot(p.dwo); };
  const auto dlgv = [](const Grads<T>& p) { return p.dlgv.p; };
  for (int i = 0; i < Tn; ++i)
    for (int j = 0; j < H; ++j)
      g.temb[static_cast<size_t>(i) * H + j] = thread_sum(per, dtemb, static_cast<size_t>(i) * Hp + j);
  for (int j = 0; j < H; ++j) {
    T s = 0;
    for (int i = 0; i < Tn; ++i) s += g.temb[static_cast<size_t>(i) * H + j];
    g.bs[j] = s;
    for (int d = 0; d < D; ++d) g.ws[j * D + d] = thread_sum(per, dwsT, static_cast<size_t>(d) * Hp + j);
  }
  for (int k = 0; k < L; ++k) {
    T* gw = ptr<T>(g.hw[k]);
    T* gb = ptr<T>(g.hb[k]);
    for (int j = 0; j < H; ++j) {
      const size_t row = static_cast<size_t>(k) * Hp + j;
      gb[j] = thread_sum(per, db, row);
      for (int m = 0; m < H; ++m) gw[static_cast<size_t>(j) * H + m] = thread_sum(per, dw, row * Hp + m);
    }
  }
  for (int d = 0; d < 2 * D; ++d) {  // the unused log-variance half (d >= D) gets zeros
    g.bo[d] = d < D ? thread_sum(per, dbo, d) : T(0);
    for (int j = 0; j < H; ++j)
      g.wo[static_cast<size_t>(d) * H + j] = d < D ? thread_sum(per, dwo, static_cast<size_t>(d) * Hp + j) : T(0);
  }
  if (g.lgv)
    for (size_t e = 0, m = static_cast<size_t>(Tn) * per[0]->lgv_width; e < m; ++e)
      g.lgv[e] = thread_sum(per, dlgv, e);
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
