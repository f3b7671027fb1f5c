// One MLP on the fused engine of cpu/mlp.h, for training (fastsamp.ops.mlp_net, its backward mlp_net_backward, and
// two losses of it with their gradients in one pass, mlp_net_lsq and mlp_net_energy_lsq):
//
//   u_0 = act(W_in x + b_in),  u_k = act(W_k u_{k−1} + b_k) (k = 1..L),  out = W_out u_L + b_out,
//
// x the network's input rows (B, Din), out (B, O), act SiLU or exact GELU; the layers packed as every fused
// network is (fastsamp/ops/_layers.py): params = [W_in (H, Din), b_in, W_out (O, H), b_out, W_1, b_1, ..., W_L,
// b_L]. mlp_net_lsq: the rows' losses |r_b|², r_b = c_b + k_b out_b, and the gradients of their mean (the denoising
// score-matching loss of a ScoreMLP is one: fastsamp.models.dsm_loss). mlp_net_train: out and the hidden activations
// u_k, act'(z_k) of every row (act_hidden (2(L+1), B, H), mlp::Kept), which mlp_net_backward then reads instead of
// recomputing them. Else the backward recomputes the block's forward (keeping its activations in per-thread
// buffers; mlp_net_lsq runs it once). Then mlp::layer_grads
// (mlp::backprop_layers' δz chain) gives every weight and bias gradient, and mlp::input_layer_vjp the input's.
// mlp_net_energy_lsq: the same loss for an energy network's score s = −r/v + J_fᵀ r/√v (r = c − √v out, J_f the
// Jacobian of out in the first O input columns): its weight gradients need the gradient of J_fᵀ r (a double
// backward), done exactly as a reverse pass through the forward and its tangent along the score's cotangent u
// (mlp::net_forward keeping act'', the VJP J_fᵀ r, tangent_forward, energy_reverse below).
// Each thread takes a contiguous run of rows in blocks of kBlock (mlp::for_blocks) and keeps padded per-thread
// sums staged per kFlush blocks (mlp::StagedGrads, as the policy kernels), reduced in thread order (the result
// depends on the thread count only by rounding).
#include <algorithm>
#include <cmath>
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

// out = f(x); with kept.on() also every hidden layer's u_k and act'(z_k) into the kept arrays (mlp_net_train).
template <typename T>
void forward_impl(const mlp::Net<T>& n, const T* x, int64_t B, T* out, const mlp::Kept<T>& kept = mlp::Kept<T>()) {
  parallel(threads_for(B, 16), [&](int tid, int nt) {
    mlp::Work<T> w(n, kept.on(), false);
    mlp::for_blocks(B, tid, nt, [&](int64_t b0, int nb) {
      if (kept.on()) {
        kept.bind(n, w, 0, b0);
        mlp::net_forward<T, true>(n, w, x + b0 * n.Din, nb, 0);
        kept.template copy<false>(n, w, nb, 0, b0);
      } else {
        mlp::net_forward<T, false>(n, w, x + b0 * n.Din, nb, 0);
      }
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

// The per-thread pass of the gradient ops over the rows: each thread makes its work buffers (make_work()) and runs
// block(b0, nb, work, sums) on each of its blocks, which adds the block's parameter gradients to the padded sums
// (mlp::LayerGrads); then the sums of the threads, in thread order, into g_params (shaped as params).
template <typename T, typename MakeWork, typename Block>
void grad_pass(const mlp::Net<T>& n, int64_t B, MakeWork&& make_work, Block&& block,
               const std::vector<uintptr_t>& g_params) {
  const int nt = threads_for(B, 16);
  std::vector<std::unique_ptr<mlp::StagedGrads<T>>> per(nt);
  parallel(nt, [&](int tid, int nth) {
    mlp::StagedGrads<T>& sums = *(per[tid] = std::make_unique<mlp::StagedGrads<T>>(n));
    auto w = make_work();
    mlp::for_blocks(B, tid, nth, [&](int64_t b0, int nb) {
      block(b0, nb, w, sums.sums);
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

// The forward with activations (or, kept.on(), the forward's kept ones: no raw output then) and the backward of
// every block: cotangent(b0, nb, w) writes the block's output cotangent into w.GO ([nb][Dq]; its padding columns stay
// 0) from its raw output w.OUT; then the parameters' gradients into g_params (shaped as params) and, when g_x is not
// null, the input's.
template <typename T, typename Cotangent>
void backward_impl(const mlp::Net<T>& n, const T* x, int64_t B, Cotangent&& cotangent, T* g_x,
                   const std::vector<uintptr_t>& g_params, const mlp::Kept<T>& kept = mlp::Kept<T>()) {
  grad_pass<T>(n, B, [&] { return mlp::Work<T>(n, true, false); },
               [&](int64_t b0, int nb, mlp::Work<T>& w, const mlp::LayerGrads<T>& sums) {
                 const T* xb = x + b0 * n.Din;
                 if (kept.on()) {
                   kept.bind(n, w, 0, b0);
                   kept.template copy<true>(n, w, nb, 0, b0);
                 } else {
                   mlp::net_forward<T, true>(n, w, xb, nb, 0);
                 }
                 cotangent(b0, nb, w);
                 const T* gz0 = mlp::layer_grads(n, w, xb, nb, sums);
                 if (g_x) mlp::input_layer_vjp<T, false>(n, gz0, nb, g_x + b0 * n.Din, n.Din);
               },
               g_params);
}

// ---------------------------------------------------------------- the energy loss's pass (mlp_net_energy_lsq)
// Per block of nb rows, the primal quantities in rows [0, nb) and the tangent ones (along the cotangent u of the
// score, below) in rows [nb, 2 nb) of the same buffers, so that one GEMM of 2 nb rows gives both parts of a weight
// gradient: the engine's Work for 2 kBlock rows (w.U: h_k then ḣ_k; w.G: act'(z_k); w.GO: the output cotangents),
// A2 (laid out as w.U, rows [0, nb): act''(z_k), then act''(z_k) ⊙ ż_k), the tangent output TOUT, the cotangent
// u (UX, [nb][Dq]), the raw W_{k+1}ᵀ ġz_{k+1} rows (GH) and a zero bias (the tangent output layer's).
template <typename T>
struct EnergyWork {
  mlp::Work<T> w;
  mlp::ABuf<T> A2, TOUT, UX, GH, zero;
  explicit EnergyWork(const mlp::Net<T>& n)
      : w(n, true, false, 2 * mlp::kBlock), A2(static_cast<size_t>(n.L + 1) * 2 * mlp::kBlock * n.Hp),
        TOUT(static_cast<size_t>(mlp::kBlock) * n.Dq), UX(static_cast<size_t>(mlp::kBlock) * n.Dq),
        GH(static_cast<size_t>(mlp::kBlock) * n.Hp), zero(n.Dq) {}
  T* a2(int k) { return A2.p + static_cast<size_t>(k) * w.rows * w.Hp; }
};

// The tangent forward along the input direction (u, 0) (u in e.UX: the first O input columns):
//   ż_0 = W_s[:, :O] u,  ż_k = W_k ḣ_{k−1},  ḣ_k = act'(z_k) ⊙ ż_k (rows nb.. of w.u(k)),  ṫ = W_o ḣ_L (e.TOUT);
// A2_k becomes act''(z_k) ⊙ ż_k.
template <typename T>
void tangent_forward(const mlp::Net<T>& n, EnergyWork<T>& e, int nb) {
  mlp::Work<T>& w = e.w;
  const int Hp = n.Hp;
  const size_t tan = static_cast<size_t>(nb) * Hp;
  mlp::with_nv(n.NJ, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    auto layer = [&](int k, const T* A, int64_t lda, int K, const T* Bt) {
      T *Ud = w.u(k) + tan, *A2 = e.a2(k);
      const T* G = w.g(k);
      mlp::tiled_gemm<T, NV>(
          nb, A, lda, 1, K, Bt, Hp, n.NJ, [](int) { return mlp::Vec<T>{}; }, [&](mlp::Vec<T> zd, int l, int col) {
            const int64_t o = l * Hp + col;
            mlp::storea<T>(Ud + o, zd * mlp::loada<T>(G + o));
            mlp::storea<T>(A2 + o, zd * mlp::loada<T>(A2 + o));
          });
    };
    layer(0, e.UX.p, n.Dq, n.D, n.wsT.p);
    for (int k = 0; k < n.L; ++k) layer(k + 1, w.u(k) + tan, Hp, n.H, n.wT_k(k));
  });
  mlp::out_rows<T>(n, w.u(n.L) + tan, nb, e.zero.p, nullptr, e.TOUT.p);  // clip is +inf
}

// The reverse pass through the primal and tangent streams from the output cotangents w.GO (rows [0, nb): ḡ of f,
// rows [nb, 2 nb): ġ of ṫ) to every weight, added to the sums g: with ḡh_k, ġh_k the cotangents of h_k, ḣ_k,
//   ġz_k = ġh_k ⊙ act'(z_k),  ḡz_k = ḡh_k ⊙ act'(z_k) + ġh_k ⊙ act''(z_k) ⊙ ż_k,
//   ḡh_{k−1} = W_kᵀ ḡz_k, ġh_{k−1} = W_kᵀ ġz_k;  dW_k += Σ_l ḡz_k h_{k−1}ᵀ + ġz_k ḣ_{k−1}ᵀ,  db_k += Σ_l ḡz_k
// (the output layer likewise with ḡ, ġ; the input layer's input is (x, (u, 0))).
template <typename T>
void energy_reverse(const mlp::Net<T>& n, EnergyWork<T>& e, const T* X, int nb, const mlp::LayerGrads<T>& g) {
  mlp::Work<T>& w = e.w;
  const int Hp = n.Hp, NJ = n.NJ;
  const size_t tan = static_cast<size_t>(nb) * Hp;
  mlp::colsum<T>(nb, w.GO.p, n.Dq, n.NJo, g.dbo);
  mlp::with_nv(NJ, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    const auto zero = [](int) { return mlp::Vec<T>{}; };
    // A ([2 nb] rows, lda) times Wm (K rows of Hp) into δz_k (out): the tangent rows first (keeping the raw rows)
    const auto back = [&](const T* A, int64_t lda, int K, const T* Wm, int k, T* out) {
      const T *G = w.g(k), *A2 = e.a2(k);
      mlp::tiled_gemm<T, NV>(nb, A + nb * lda, lda, 1, K, Wm, Hp, NJ, zero, [&](mlp::Vec<T> gh, int l, int col) {
        const int64_t o = l * Hp + col;
        mlp::storea<T>(e.GH.p + o, gh);
        mlp::storea<T>(out + tan + o, gh * mlp::loada<T>(G + o));
      });
      mlp::tiled_gemm<T, NV>(nb, A, lda, 1, K, Wm, Hp, NJ, zero, [&](mlp::Vec<T> gh, int l, int col) {
        const int64_t o = l * Hp + col;
        mlp::storea<T>(out + o, vm::vfma(mlp::loada<T>(e.GH.p + o), mlp::loada<T>(A2 + o), gh * mlp::loada<T>(G + o)));
      });
    };
    mlp::wgrad<T, NV>(n.D, 2 * nb, w.GO.p, n.Dq, w.u(n.L), Hp, NJ, g.dwo, Hp);
    T *gz = w.GA.p, *gz2 = w.GB.p;
    back(w.GO.p, n.Dq, n.D, n.wo.p, n.L, gz);
    for (int k = n.L; k >= 1; --k) {
      mlp::wgrad<T, NV>(n.H, 2 * nb, gz, Hp, w.u(k - 1), Hp, NJ, g.dw + static_cast<size_t>(k - 1) * Hp * Hp, Hp);
      mlp::colsum<T>(nb, gz, Hp, NJ, g.db + static_cast<size_t>(k - 1) * Hp);
      back(gz, Hp, n.H, n.w_k(k - 1), k - 1, gz2);
      std::swap(gz, gz2);
    }
    mlp::colsum<T>(nb, gz, Hp, NJ, g.db0);
    mlp::wgrad<T, NV>(n.Din, nb, X, n.Din, gz, Hp, NJ, g.dwsT, Hp);
    mlp::wgrad<T, NV>(n.D, nb, e.UX.p, n.Dq, gz + tan, Hp, NJ, g.dwsT, Hp);
  });
}

// The opening of every entry point: the gradient count (g_params, when given), the dtype's dispatch and the Net
// (with its backward layout when there are gradients): f(tag, net), tag a value of the element type.
template <typename F>
void with_net(const char* op, int dtype, int64_t Din, int64_t H, int64_t O, const std::vector<uintptr_t>& params,
              int64_t act, const std::vector<uintptr_t>* g_params, F&& f) {
  if (g_params && g_params->size() != params.size())
    throw std::invalid_argument(std::string("fastsamp._C: ") + op + " needs one gradient per parameter");
  dispatch_dtype(dtype, [&](auto tag) { f(tag, make_net<decltype(tag)>(Din, H, O, params, act, g_params != nullptr)); });
}

}  // namespace

void mlp_net(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O, const std::vector<uintptr_t>& params,
             int64_t act, uintptr_t out) {
  with_net("mlp_net", dtype, Din, H, O, params, act, nullptr, [&](auto tag, const auto& n) {
    using T = decltype(tag);
    forward_impl<T>(n, ptr<T>(x), B, ptr<T>(out));
  });
}

void mlp_net_train(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                   const std::vector<uintptr_t>& params, int64_t act, uintptr_t out, uintptr_t act_hidden) {
  with_net("mlp_net_train", dtype, Din, H, O, params, act, nullptr, [&](auto tag, const auto& n) {
    using T = decltype(tag);
    forward_impl<T>(n, ptr<T>(x), B, ptr<T>(out), mlp::Kept<T>{ptr<T>(act_hidden), B});
  });
}

void mlp_net_backward(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                      const std::vector<uintptr_t>& params, int64_t act, uintptr_t g_out, uintptr_t act_hidden,
                      uintptr_t g_x, const std::vector<uintptr_t>& g_params) {
  with_net("mlp_net_backward", dtype, Din, H, O, params, act, &g_params, [&](auto tag, const auto& n) {
    using T = decltype(tag);
    const T* go = ptr<T>(g_out);
    auto given = [&](int64_t b0, int nb, mlp::Work<T>& w) {
      for (int l = 0; l < nb; ++l)
        std::memcpy(w.GO.p + static_cast<size_t>(l) * n.Dq, go + (b0 + l) * n.D, sizeof(T) * n.D);
    };
    backward_impl<T>(n, ptr<T>(x), B, given, g_x ? ptr<T>(g_x) : nullptr, g_params,
                     mlp::Kept<T>{act_hidden ? ptr<T>(act_hidden) : nullptr, B});
  });
}

void mlp_net_lsq(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                 const std::vector<uintptr_t>& params, int64_t act, uintptr_t c, uintptr_t k, uintptr_t loss,
                 const std::vector<uintptr_t>& g_params) {
  with_net("mlp_net_lsq", dtype, Din, H, O, params, act, &g_params, [&](auto tag, const auto& n) {
    using T = decltype(tag);
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

void mlp_net_energy_lsq(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                        const std::vector<uintptr_t>& params, int64_t act, uintptr_t c, uintptr_t v, uintptr_t sigma,
                        uintptr_t z, uintptr_t loss, const std::vector<uintptr_t>& g_params) {
  if (O > Din)
    throw std::invalid_argument("fastsamp._C: mlp_net_energy_lsq needs O <= Din (the state is the input's first O "
                                "columns)");
  with_net("mlp_net_energy_lsq", dtype, Din, H, O, params, act, &g_params, [&](auto tag, const auto& n) {
    using T = decltype(tag);
    const T *xx = ptr<T>(x), *cc = ptr<T>(c), *vv = ptr<T>(v), *ss = ptr<T>(sigma), *zz = ptr<T>(z);
    T* lo = ptr<T>(loss);
    const T scale = T(2) / static_cast<T>(B);  // d(mean_b |e_b|²)/de_b = 2 e_b / B
    const int D = n.D, Dq = n.Dq;
    grad_pass<T>(n, B, [&] { return EnergyWork<T>(n); },
                 [&](int64_t b0, int nb, EnergyWork<T>& e, const mlp::LayerGrads<T>& sums) {
                   const T* xb = xx + b0 * Din;
                   T *GO = e.w.GO.p, *UX = e.UX.p;
                   // the primal forward keeping h_k, act'(z_k) and act''(z_k); f into w.OUT
                   mlp::net_forward<T, true, true>(n, e.w, xb, nb, 0, e.A2.p);
                   for (int l = 0; l < nb; ++l) {  // r = c − √v f, the first backward's cotangent
                     const T sq = std::sqrt(vv[b0 + l]);
                     for (int d = 0; d < D; ++d) GO[l * Dq + d] = cc[(b0 + l) * D + d] - sq * e.w.OUT.p[l * Dq + d];
                   }
                   const T* gz0 = mlp::backprop_layers(n, e.w, nb, [](int, const T*, auto) {});
                   for (int l = 0; l < nb; ++l) {  // s = −r/v + J_fᵀ r/√v, e = σ s + z: the loss and u = (2/B) σ e
                     const int64_t b = b0 + l;
                     const T sq = std::sqrt(vv[b]);
                     T sum = 0;
                     for (int d = 0; d < D; ++d) {
                       const T jr = mlp::dot_nj<T>(gz0 + static_cast<size_t>(l) * n.Hp, n.wsT.p + d * n.Hp, n.NJ);
                       const T err = ss[b] * (jr / sq - GO[l * Dq + d] / vv[b]) + zz[b * D + d];
                       sum += err * err;
                       UX[l * Dq + d] = scale * ss[b] * err;
                     }
                     lo[b] = sum;
                   }
                   tangent_forward(n, e, nb);
                   for (int l = 0; l < nb; ++l) {  // the cotangents of f (u/√v − ṫ) and of ṫ (r/√v)
                     const T sq = std::sqrt(vv[b0 + l]);
                     for (int d = 0; d < D; ++d) {
                       const int64_t o = l * Dq + d;
                       GO[(nb + l) * Dq + d] = GO[o] / sq;
                       GO[o] = UX[o] / sq - e.TOUT.p[o];
                     }
                   }
                   energy_reverse(n, e, xb, nb, sums);
                 },
                 g_params);
  });
}

}  // namespace cpu
}  // namespace fastsamp
