// Per-thread sums of the engine's layer gradients (mlp::LayerGrads' padded layouts) and their fixed-order
// reduction over the threads: used by the policy kernels (cpu/policy_grads.h) and mlp_net (cpu/mlp_net.cpp).
#pragma once
#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "cpu/common.h"
#include "cpu/mlp.h"

namespace fastsamp {
namespace cpu {
namespace mlp {

// One thread's sums of the layer gradients over its (block[, step]) partials, in two levels: `stage` collects
// kFlush partials, then is added to `total` and cleared, so that no float32 running sum takes more than
// ~kFlush + n / kFlush roundings at its own scale (a single running sum over the 300 partials of a typical
// policy call was ~8x less accurate than PyTorch's blocked GEMM / pairwise sums). `sums` points into `stage`.
constexpr int kFlush = 16;
template <typename T>
struct StagedGrads {
  size_t n_stage;
  ABuf<T> stage, total;
  LayerGrads<T> sums;
  int pending = 0;
  explicit StagedGrads(const Net<T>& n) {
    const size_t L = static_cast<size_t>(std::max(n.L, 1)), Hp = n.Hp;
    const size_t sz[6] = {L * Hp * Hp, L * Hp, static_cast<size_t>(n.D) * Hp, static_cast<size_t>(n.Dq),
                          static_cast<size_t>(n.Din) * Hp, Hp};
    size_t off[6], o = 0;
    for (int k = 0; k < 6; ++k) {
      off[k] = o;
      o += round_up(sz[k], kW<T>);
    }
    n_stage = o;
    stage = ABuf<T>(o);
    total = ABuf<T>(o);
    T* s = stage.p;
    sums = {s + off[0], s + off[1], s + off[2], s + off[3], s + off[4], s + off[5]};
  }
  // the total of a staged array (same offset in `total`)
  const T* tot(const T* staged) const { return total.p + (staged - stage.p); }
  // one partial added to `sums`; the last one (last = true) flushes what is staged
  void step_done(bool last) {
    if (++pending < kFlush && !last) return;
    for (size_t i = 0; i < n_stage; i += kW<T>) {
      storea<T>(total.p + i, loada<T>(total.p + i) + loada<T>(stage.p + i));
      storea<T>(stage.p + i, Vec<T>{});
    }
    pending = 0;
  }
};

// Σ over the threads, in thread order, of element e of the per-thread array that part(thread's sums) points to.
template <typename T, typename G, typename Part>
T thread_sum(const std::vector<std::unique_ptr<G>>& per, Part&& part, size_t e) {
  T s = 0;
  for (const auto& p : per) s += part(*p)[e];
  return s;
}

}  // namespace mlp
}  // namespace cpu
}  // namespace fastsamp
