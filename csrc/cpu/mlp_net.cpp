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
// Each thread takes a contiguous run of rows in blocks of kBlock and keeps padded per-thread sums, reduced in
// thread order (the result depends on the thread count only by rounding).
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/common.h"
#include "cpu/mlp.h"
#include "cpu/ops.h"
#include "cpu/runtime.h"

namespace fastsamp {
namespace cpu {
namespace {

using mlp::ABuf;
using mlp::kBlock;

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

// f(c0, c1, tid) on each thread's contiguous run of rows [c0, c1) (at least 16 rows per thread), nt threads.
template <typename F>
void for_row_runs(int64_t B, int nt, F&& f) {
  parallel(nt, [&](int tid, int n) {
    const int64_t c0 = B * tid / n, c1 = B * (tid + 1) / n;
    if (c0 < c1) f(c0, c1, tid);
  });
}

template <typename T>
void forward_impl(const mlp::Net<T>& n, const T* x, int64_t B, T* out) {
  for_row_runs(B, threads_for(B, 16), [&](int64_t c0, int64_t c1, int) {
    mlp::Work<T> w(n, false, false);
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      mlp::net_forward<T, false>(n, w, x + b0 * n.Din, nb, 0);
      for (int l = 0; l < nb; ++l)
        std::memcpy(out + (b0 + l) * n.D, w.DR.p + static_cast<size_t>(l) * n.Dq, sizeof(T) * n.D);
    }
  });
}

// One thread's padded gradient sums (mlp::LayerGrads' layouts).
template <typename T>
struct ThreadGrads {
  ABuf<T> dw, db, dwo, dbo, dwsT, db0;
  explicit ThreadGrads(const mlp::Net<T>& n)
      : dw(static_cast<size_t>(std::max(n.L, 1)) * n.Hp * n.Hp), db(static_cast<size_t>(std::max(n.L, 1)) * n.Hp),
        dwo(static_cast<size_t>(n.D) * n.Hp), dbo(n.Dq), dwsT(static_cast<size_t>(n.Din) * n.Hp), db0(n.Hp) {}
  mlp::LayerGrads<T> sums() { return {dw.p, db.p, dwo.p, dbo.p, dwsT.p, db0.p}; }
};

// out[r * cols + c] = Σ_t (per[t] + at)[r * ld + c] (threads in order, a thread without rows skipped); transposed:
// out[c * rows + r].
template <typename T>
void reduce(const std::vector<std::unique_ptr<ThreadGrads<T>>>& per, ABuf<T> ThreadGrads<T>::*arr, size_t at,
            int rows, int cols, int64_t ld, bool transposed, T* out) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      T s = 0;
      for (const auto& g : per)
        if (g) s += ((*g).*arr).p[at + static_cast<size_t>(r) * ld + c];
      out[transposed ? static_cast<size_t>(c) * rows + r : static_cast<size_t>(r) * cols + c] = s;
    }
}

// The forward with activations and the backward of every block: cotangent(b0, nb, w) writes the block's output
// cotangent into w.GO ([nb][Dq]; its padding columns stay 0) from its raw output w.OUT; then the parameters'
// gradients into g_params (shaped as params) and, when g_x is not null, the input's.
template <typename T, typename Cotangent>
void backward_impl(const mlp::Net<T>& n, const T* x, int64_t B, Cotangent&& cotangent, T* g_x,
                   const std::vector<uintptr_t>& g_params) {
  const int nt = threads_for(B, 16);
  std::vector<std::unique_ptr<ThreadGrads<T>>> per(nt);
  for_row_runs(B, nt, [&](int64_t c0, int64_t c1, int tid) {
    per[tid].reset(new ThreadGrads<T>(n));
    const mlp::LayerGrads<T> sums = per[tid]->sums();
    mlp::Work<T> w(n, true, false);
    for (int64_t b0 = c0; b0 < c1; b0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, c1 - b0));
      const T* xb = x + b0 * n.Din;
      mlp::net_forward<T, true>(n, w, xb, nb, 0);
      cotangent(b0, nb, w);
      const T* gz0 = mlp::layer_grads(n, w, xb, nb, sums);
      if (g_x) mlp::input_layer_vjp<T, false>(n, gz0, nb, g_x + b0 * n.Din, n.Din);
    }
  });
  const int H = n.H, Hp = n.Hp;
  reduce(per, &ThreadGrads<T>::dwsT, 0, n.Din, H, Hp, true, ptr<T>(g_params[0]));  // W_in (H, Din)
  reduce(per, &ThreadGrads<T>::db0, 0, 1, H, Hp, false, ptr<T>(g_params[1]));
  reduce(per, &ThreadGrads<T>::dwo, 0, n.D, H, Hp, false, ptr<T>(g_params[2]));  // W_out (O, H)
  reduce(per, &ThreadGrads<T>::dbo, 0, 1, n.D, n.Dq, false, ptr<T>(g_params[3]));
  for (int k = 0; k < n.L; ++k) {
    reduce(per, &ThreadGrads<T>::dw, static_cast<size_t>(k) * Hp * Hp, H, H, Hp, false, ptr<T>(g_params[4 + 2 * k]));
    reduce(per, &ThreadGrads<T>::db, static_cast<size_t>(k) * Hp, 1, H, Hp, false, ptr<T>(g_params[5 + 2 * k]));
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
