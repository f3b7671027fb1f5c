// One MLP on the fused engine of cpu/mlp.h, for training (fastsamp.ops.mlp_net, its backward mlp_net_backward, and
// mlp_net_lsq, a least-squares loss of it with its gradient in one pass):
//
//   u_0 = act(W_in x + b_in),  u_k = act(W_k u_{k−1} + b_k) (k = 1..L),  out = W_out u_L + b_out,
//
// x the network's input rows (B, Din), out (B, O), act SiLU or exact GELU; the layers packed as every fused
// network is (fastsamp/ops/_layers.py): params = [W_in (H, Din), b_in, W_out (O, H), b_out, W_1, b_1, ..., W_L,
// b_L]. mlp_net_lsq: the rows' losses |r_b|², r_b = c_b + k_b out_b, and the gradients of their mean (the denoising
// score-matching loss of a ScoreMLP is one: fastsamp.models.dsm_loss). The backward recomputes the block's
// forward (keeping its activations; mlp_net_lsq runs it once), then mlp::layer_grads
// (mlp::backprop_layers' δz chain) gives every weight and bias gradient, and mlp::input_layer_vjp the input's.
// Each thread takes a contiguous run of rows in blocks of kBlock (mlp::for_blocks) and keeps padded per-thread
// sums staged per kFlush blocks (mlp::StagedGrads, as the policy kernels), reduced in thread order (the result
// depends on the thread count only by rounding).
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/grad_sums.h"
#include "cpu/mlp.h"
#include "cpu/ops.h"
#include "cpu/runtime.h"

namespace fastsamp {
namespace cpu {
namespace {


// The engine's Net of params (the packing above): O outputs, Din inputs, no time input, no clamp.
template <typename T>
mlp::Net<T> make_net(int64_t Din, int64_t H, int64_t O, const std::vector<uintptr_t>& params, int64_t act,
                     bool backward) {
  if (params.size() < 4 || params.size() % 2 != 0)
    throw std::invalid_argument("fastsamp._C: mlp_net params must be [W_in, b_in, W_out, b_out, W_1, b_1, ...]");
  if (act != mlp::kGelu && act != mlp::kSilu) throw std::invalid_argument("fastsamp._C: unknown activation");
  if (checked_dim(H, "hidden") < 1) throw std::invalid_argument("fastsamp._C: mlp_net hidden width must be >= 1");
  checked_dim(Din, "input width");
  checked_dim(O, "output width");
  std::vector<uintptr_t> hw, hb;
  for (size_t k = 4; k < params.size(); k += 2) {
    hw.push_back(params[k]);
    hb.push_back(params[k + 1]);
  }
  return mlp::Net<T>(mlp::Ptrs{0, params[0], params[1], params[2], params[3], hw, hb, -1, static_cast<int>(act)}, O,
                     H, 0, std::numeric_limits<double>::infinity(), backward, Din);
}

template <typename T>
void forward_impl(const mlp::Net<T>& n, const T* x, int64_t B, T* out) {
  parallel(threads_for(B, 16), [&](int tid, int nt) {
    mlp::Work<T> w(n, false, false);
    mlp::for_blocks(B, tid, nt, [&](int64_t b0, int nb) {
      mlp::net_forward<T, false>(n, w, x + b0 * n.Din, nb, 0);
      for (int l = 0; l < nb; ++l)
        std::memcpy(out + (b0 + l) * n.D, w.DR.p + static_cast<size_t>(l) * n.Dq, sizeof(T) * n.D);
    });
  });
}

// out[r * cols + c] = Σ_t total_t[r * ld + c] (threads in order) of the array that part(thread's sums) points to;
// transposed: out[c * rows + r].
template <typename T, typename Part>
void reduce(const std::vector<std::unique_ptr<mlp::StagedGrads<T>>>& per, Part&& part, int rows, int cols, int64_t ld,
            bool transposed, T* out) {
  const auto total = [&](const mlp::StagedGrads<T>& g) { return g.tot(part(g.sums)); };
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      out[transposed ? static_cast<size_t>(c) * rows + r : static_cast<size_t>(r) * cols + c] =
          mlp::thread_sum<T>(per, total, static_cast<size_t>(r) * ld + c);
}

// The forward with activations and the backward of every block: cotangent(b0, nb, w) writes the block's output
// cotangent into w.GO ([nb][Dq]; its padding columns stay 0) from its raw output w.OUT; then the parameters'
// gradients into g_params (shaped as params) and, when g_x is not null, the input's.
template <typename T, typename Cotangent>
void backward_impl(const mlp::Net<T>& n, const T* x, int64_t B, Cotangent&& cotangent, T* g_x,
                   const std::vector<uintptr_t>& g_params) {
  const int nt = threads_for(B, 16);
  std::vector<std::unique_ptr<mlp::StagedGrads<T>>> per(nt);
  parallel(nt, [&](int tid, int nth) {
    mlp::StagedGrads<T>& sums = *(per[tid] = std::make_unique<mlp::StagedGrads<T>>(n));
    mlp::Work<T> w(n, true, false);
    mlp::for_blocks(B, tid, nth, [&](int64_t b0, int nb) {
      const T* xb = x + b0 * n.Din;
      mlp::net_forward<T, true>(n, w, xb, nb, 0);
      cotangent(b0, nb, w);
      const T* gz0 = mlp::layer_grads(n, w, xb, nb, sums.sums);
      if (g_x) mlp::input_layer_vjp<T, false>(n, gz0, nb, g_x + b0 * n.Din, n.Din);
      sums.step_done(false);
    });
  });
  for (auto& p : per) p->step_done(true);
  using LG = mlp::LayerGrads<T>;
  const int H = n.H, Hp = n.Hp;
  reduce(per, [](const LG& g) { return g.dwsT; }, n.Din, H, Hp, true, ptr<T>(g_params[0]));  // W_in (H, Din)
  reduce(per, [](const LG& g) { return g.db0; }, 1, H, Hp, false, ptr<T>(g_params[1]));
  reduce(per, [](const LG& g) { return g.dwo; }, n.D, H, Hp, false, ptr<T>(g_params[2]));  // W_out (O, H)
  reduce(per, [](const LG& g) { return g.dbo; }, 1, n.D, n.Dq, false, ptr<T>(g_params[3]));
  for (int k = 0; k < n.L; ++k) {
    const size_t wk = static_cast<size_t>(k) * Hp * Hp, bk = static_cast<size_t>(k) * Hp;
    reduce(per, [wk](const LG& g) { return g.dw + wk; }, H, H, Hp, false, ptr<T>(g_params[4 + 2 * k]));
    reduce(per, [bk](const LG& g) { return g.db + bk; }, 1, H, Hp, false, ptr<T>(g_params[5 + 2 * k]));
  }
}

}  // namespace

void mlp_net(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O, const std::vector<uintptr_t>& params,
             int64_t act, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const mlp::Net<T> n = make_net<T>(Din, H, O, params, act, false);
    forward_impl<T>(n, ptr<T>(x), B, ptr<T>(out));
  });
}

void mlp_net_backward(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                      const std::vector<uintptr_t>& params, int64_t act, uintptr_t g_out, uintptr_t g_x,
                      const std::vector<uintptr_t>& g_params) {
  if (g_params.size() != params.size())
    throw std::invalid_argument("fastsamp._C: mlp_net_backward needs one gradient per parameter");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const mlp::Net<T> n = make_net<T>(Din, H, O, params, act, true);
    const T* go = ptr<T>(g_out);
    auto given = [&](int64_t b0, int nb, mlp::Work<T>& w) {
      for (int l = 0; l < nb; ++l)
        std::memcpy(w.GO.p + static_cast<size_t>(l) * n.Dq, go + (b0 + l) * n.D, sizeof(T) * n.D);
    };
    backward_impl<T>(n, ptr<T>(x), B, given, g_x ? ptr<T>(g_x) : nullptr, g_params);
  });
}

void mlp_net_lsq(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                 const std::vector<uintptr_t>& params, int64_t act, uintptr_t c, uintptr_t k, uintptr_t loss,
                 const std::vector<uintptr_t>& g_params) {
  if (g_params.size() != params.size())
    throw std::invalid_argument("fastsamp._C: mlp_net_lsq needs one gradient per parameter");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const mlp::Net<T> n = make_net<T>(Din, H, O, params, act, true);
    const T *cc = ptr<T>(c), *kk = ptr<T>(k);
    T* lo = ptr<T>(loss);
    const T scale = T(2) / static_cast<T>(B);  // d(mean_b |r_b|²)/dr_b = 2 r_b / B
    // r = c + k out: the row's loss |r|² and the cotangent (2/B) k r
    auto residual = [&](int64_t b0, int nb, mlp::Work<T>& w) {
      for (int l = 0; l < nb; ++l) {
        const int64_t b = b0 + l;
        const T* __restrict o = w.OUT.p + static_cast<size_t>(l) * n.Dq;
        T* __restrict go = w.GO.p + static_cast<size_t>(l) * n.Dq;
        T sum = 0;
        for (int d = 0; d < n.D; ++d) {
          const T r = cc[b * n.D + d] + kk[b] * o[d];
          sum += r * r;
          go[d] = scale * kk[b] * r;
        }
        lo[b] = sum;
      }
    };
    backward_impl<T>(n, ptr<T>(x), B, residual, nullptr, g_params);
  });
}

}  // namespace cpu
}  // namespace fastsamp
