// The fused MLP engine of the CPU kernels: one network shape, register-tiled, shared by the
// DriftNet policy of the trained diffusion sampler (trajectory_policy.cpp), the ScoreMLP
// score networks (score_mlp.cpp) and the training pass of one MLP (mlp_net.cpp):
//
//   z_0 = W_s x + b_s + temb[i];  u_0 = act(z_0);  z_k = W_k u_{k-1} + b_k, u_k = act(z_k) (k = 1..L);
//   out = clamp((W_o u_L + b_o)[:D], -clip, clip)
//
// act is GELU (exact: z Φ(z); DriftNet) or SiLU (z σ(z); ScoreMLP). temb[i] is a per-row-block
// additive input: the DriftNet's time features, or a ScoreMLP's W_t emb(t) (the time columns of its
// first layer times its Fourier features, one row per call). W_s may be the first D columns of a
// wider matrix (row stride in_ld). The policy's clip is finite, a score network's is +inf.
//
// Layout: chains are rows ("chain-major"), every activation of a block of chains is a
// [nb][Hp] row-major buffer (Hp = H rounded up to one vector: a native register, kW lanes). Each
// layer is a small GEMM whose register tile is MR chains x NV vectors of output features: the
// chain's input value is broadcast, a row of the (transposed, padded) weight is loaded as NV
// vectors, MR*NV FMAs per k (MR*NV = 24 of AVX-512's 32 registers, 12 of AVX2's 16). The
// activation (GELU or SiLU; in the backward its derivative) is applied to the accumulators in
// registers. A small-D output layer is D dot products per chain instead (a padded GEMM would
// mostly multiply zeros). The same tiles give the backward
// through a layer and the weight gradients (outer products over the chains of a block).
#pragma once
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/common.h"
#include "cpu/mlp_activations.h"
#include "cpu/mlp_tiles.h"  // mk, row_tiles, with_nv, tiled_gemm

namespace fastsamp {
namespace cpu {
namespace mlp {

// Hidden / input layer forward: Z[l] = bias + Σ_k A[l*lda + k] Bt[k][:] (+ add), U = act(Z),
// G = act'(Z) when DERIV, A2 = act''(Z) when DERIV2 (with DERIV). NJ vectors of output features, rows l < nb.
template <typename T, int NV, int ACT, bool DERIV, bool DERIV2 = false>
void fwd_layer(int nb, const T* __restrict A, int64_t lda, int K, const T* __restrict Bt, int64_t ldb, int NJ,
               const T* __restrict bias, const T* __restrict add, T* __restrict U, T* __restrict G, int64_t ldo,
               T* __restrict A2 = nullptr) {
  static_assert(DERIV || !DERIV2, "act'' is kept with act'");
  tiled_gemm<T, NV>(nb, A, lda, 1, K, Bt, ldb, NJ, [&](int col) { return loada<T>(bias + col); },
                    [&](Vec<T> z, int l, int col) {
                      const int64_t o = l * ldo + col;
                      if (add) z += loada<T>(add + col);
                      Vec<T> g, dg;
                      if constexpr (DERIV2) {
                        Vec<T> d2g;
                        act_v2<T, ACT>(z, &g, &dg, &d2g);
                        storea<T>(A2 + o, d2g);
                      } else {
                        act_v<T, ACT, DERIV>(z, &g, &dg);
                      }
                      storea<T>(U + o, g);
                      if constexpr (DERIV) storea<T>(G + o, dg);
                    });
}

// Output layer: OUT[l] = bo + Σ_k U[l*ldu + k] WoT[k][:], DR = clamp(OUT, -clip, clip).
template <typename T, int NV>
void out_layer(int nb, const T* __restrict U, int64_t ldu, int K, const T* __restrict WoT, int64_t ldw, int NJ,
               const T* __restrict bo, T clip, T* __restrict OUT, T* __restrict DR, int64_t ldo) {
  tiled_gemm<T, NV>(nb, U, ldu, 1, K, WoT, ldw, NJ, [&](int col) { return loada<T>(bo + col); },
                    [&](Vec<T> o, int l, int col) {
                      const int64_t off = l * ldo + col;
                      Vec<T> dr = o < -clip ? bc<T>(-clip) : o;  // NaN passes (torch.clamp propagates NaN)
                      dr = dr > clip ? bc<T>(clip) : dr;
                      if (OUT) storea<T>(OUT + off, o);
                      storea<T>(DR + off, dr);
                    });
}

template <typename T>
FASTSAMP_VINLINE T hsum(Vec<T> v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
  } else {
    return _mm512_reduce_add_pd(reinterpret_cast<__m512d>(v));
  }
#else
  constexpr int H = kW<T> / 2;  // the two halves added, then their lanes in order
  if constexpr (H >= 1) {
    typedef T Half __attribute__((vector_size(sizeof(Vec<T>) / 2)));
    Half lo, hi;
    std::memcpy(&lo, &v, sizeof(Half));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    const Half s = lo + hi;
    T r = 0;
    for (int l = 0; l < H; ++l) r += s[l];
    return r;
  }
  return v[0];
#endif
}

// Σ_j u[j] w[j] over NJ vectors (two accumulators, one horizontal sum).
template <typename T>
FASTSAMP_VINLINE T dot_nj(const T* __restrict u, const T* __restrict w, int NJ) {
  constexpr int W = kW<T>;
  Vec<T> a0 = Vec<T>{}, a1 = Vec<T>{};
  int v = 0;
  for (; v + 2 <= NJ; v += 2) {
    a0 = vm::vfma(loada<T>(u + v * W), loada<T>(w + v * W), a0);
    a1 = vm::vfma(loada<T>(u + (v + 1) * W), loada<T>(w + (v + 1) * W), a1);
  }
  if (v < NJ) a0 = vm::vfma(loada<T>(u + v * W), loada<T>(w + v * W), a0);
  return hsum<T>(a0 + a1);
}

// Output layer for small D (fewer than about H / (NJ + 8) outputs, where the padded GEMM above
// would mostly multiply zeros): one dot product of NJ vectors and a horizontal sum per output.
template <typename T>
void out_layer_dot(int nb, const T* __restrict U, int64_t ldu, int NJ, const T* __restrict Wo, int64_t ldw, int D,
                   const T* __restrict bo, T clip, T* __restrict OUT, T* __restrict DR, int64_t ldo) {
  for (int l = 0; l < nb; ++l) {
    const T* __restrict u = U + l * ldu;
    for (int d = 0; d < D; ++d) {
      const T o = bo[d] + dot_nj<T>(u, Wo + d * ldw, NJ);
      T dr = o < -clip ? -clip : o;  // NaN passes
      dr = dr > clip ? clip : dr;
      if (OUT) OUT[l * ldo + d] = o;
      DR[l * ldo + d] = dr;
    }
  }
}


// Backward through a linear layer and the activation before it: out[l] = (Σ_k A[l*lda + k] Wm[k][:]) * G[l].
template <typename T, int NV>
void bwd_layer(int nb, const T* __restrict A, int64_t lda, int K, const T* __restrict Wm, int64_t ldw, int NJ,
               const T* __restrict G, T* __restrict out, int64_t ldo) {
  tiled_gemm<T, NV>(nb, A, lda, 1, K, Wm, ldw, NJ, [](int) { return Vec<T>{}; }, [&](Vec<T> acc, int l, int col) {
    const int64_t o = l * ldo + col;
    storea<T>(out + o, acc * loada<T>(G + o));
  });
}

// Weight gradient: C[m][:] += Σ_{l<nb} A[l*lda + m] Bm[l][:] for m < M (M rows of C, ldc): the
// block's sum first, then one rounding at C's scale.
template <typename T, int NV>
void wgrad(int M, int nb, const T* __restrict A, int64_t lda, const T* __restrict Bm, int64_t ldb, int NJ,
           T* __restrict C, int64_t ldc) {
  tiled_gemm<T, NV>(M, A, 1, lda, nb, Bm, ldb, NJ, [](int) { return Vec<T>{}; }, [&](Vec<T> acc, int m, int col) {
    T* c = C + m * ldc + col;
    storea<T>(c, loada<T>(c) + acc);
  });
}

// acc[:] += Σ_{l<nb} A[l][:]  (NJ vectors)
template <typename T>
FASTSAMP_VINLINE void colsum(int nb, const T* __restrict A, int64_t lda, int NJ, T* __restrict acc) {
  constexpr int W = kW<T>;
  for (int v = 0; v < NJ; ++v) {
    Vec<T> s = Vec<T>{};
    for (int l = 0; l < nb; ++l) s += loada<T>(A + l * lda + v * W);
    storea<T>(acc + v * W, loada<T>(acc + v * W) + s);
  }
}

// ---------------------------------------------------------------- the network, padded
constexpr int kBlock = 48;  // chains per block (24 .. 96 time the same)

// The partition of every engine kernel: thread tid of nt takes the contiguous run of rows [B tid / nt, B (tid+1) / nt).
inline std::pair<int64_t, int64_t> row_run(int64_t B, int tid, int nt) { return {B * tid / nt, B * (tid + 1) / nt}; }

// f(b0, nb) on each block [b0, b0 + nb) of nb <= kBlock rows of thread tid's run, in order.
template <typename F>
void for_blocks(int64_t B, int tid, int nt, F&& f) {
  const auto [c0, c1] = row_run(B, tid, nt);
  for (int64_t b0 = c0; b0 < c1; b0 += kBlock) f(b0, static_cast<int>(c1 - b0 < kBlock ? c1 - b0 : kBlock));
}

FASTSAMP_VINLINE int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

template <typename T>
struct ABuf {  // zeroed, 64-byte aligned, one vector of slack
  std::unique_ptr<Buf<T>> b;
  T* p = nullptr;
  ABuf() = default;
  explicit ABuf(size_t n) : b(new Buf<T>(n + 64 / sizeof(T))), p(b->p) {
    std::memset(p, 0, (n + 64 / sizeof(T)) * sizeof(T));
  }
};

// The network's tensors: temb (T, H; T = 0: none), ws (H, in_ld: the first Din columns are read), bs (H),
// wo (>= D, H), bo (>= D; the first D outputs are computed), the L hidden (H, H) weights and (H,) biases.
// Din, the width of the input rows, is D unless the Net is built with another (a generic MLP, mlp_net).
struct Ptrs {
  uintptr_t temb, ws, bs, wo, bo;
  std::vector<uintptr_t> hw, hb;
  int64_t in_ld = -1;  // row stride of ws (-1: Din)
  int act = kGelu;
};

template <typename T>
struct Net {
  int D, Din, H, L, Tn, Hp, NJ, Dq, NJo, act;  // D outputs, Din inputs
  bool out_dot;  // output layer as dot products (small D)
  T clip;
  ABuf<T> wsT, bs, temb, wT, w, b, woT, wo, bo;
  ABuf<T> ws;  // backward with Din >= W: the input layer's weight in rows, [H][round_up(Din, W)] (input_layer_vjp)

  Net(const Ptrs& P, int64_t D_, int64_t H_, int64_t T_, double clip_, bool backward, int64_t Din_ = -1)
      : D(static_cast<int>(D_)), Din(static_cast<int>(Din_ < 0 ? D_ : Din_)), H(static_cast<int>(H_)),
        L(static_cast<int>(P.hw.size())), Tn(static_cast<int>(T_)), act(P.act), clip(static_cast<T>(clip_)) {
    constexpr int W = kW<T>;
    const int64_t in_ld = P.in_ld < 0 ? Din : P.in_ld;
    Hp = static_cast<int>(round_up(H, W));
    NJ = Hp / W;
    Dq = static_cast<int>(round_up(D, W));
    NJo = Dq / W;
    out_dot = D * (NJ + 8) < H * NJo;
    const T* ws_ = ptr<T>(P.ws);
    const T* bs_ = ptr<T>(P.bs);
    const T* te_ = ptr<T>(P.temb);
    const T* wo_ = ptr<T>(P.wo);
    const T* bo_ = ptr<T>(P.bo);
    wsT = ABuf<T>(static_cast<size_t>(Din) * Hp);
    bs = ABuf<T>(Hp);
    temb = ABuf<T>(static_cast<size_t>(Tn) * Hp);
    for (int j = 0; j < H; ++j) {
      bs.p[j] = bs_[j];
      for (int d = 0; d < Din; ++d) wsT.p[d * Hp + j] = ws_[j * in_ld + d];
    }
    for (int i = 0; i < Tn; ++i)
      std::memcpy(temb.p + static_cast<size_t>(i) * Hp, te_ + static_cast<size_t>(i) * H, H * sizeof(T));
    if (backward && Din >= W) {
      const int64_t ldi = round_up(Din, W);
      ws = ABuf<T>(static_cast<size_t>(H) * ldi);
      for (int j = 0; j < H; ++j) std::memcpy(ws.p + j * ldi, ws_ + j * in_ld, Din * sizeof(T));
    }
    wT = ABuf<T>(static_cast<size_t>(std::max(L, 1)) * Hp * Hp);
    b = ABuf<T>(static_cast<size_t>(std::max(L, 1)) * Hp);
    if (backward) w = ABuf<T>(static_cast<size_t>(std::max(L, 1)) * Hp * Hp);
    for (int k = 0; k < L; ++k) {
      const T* wk = ptr<T>(P.hw[k]);
      const T* bk = ptr<T>(P.hb[k]);
      T* t = wT.p + static_cast<size_t>(k) * Hp * Hp;
      for (int j = 0; j < H; ++j) {
        b.p[k * Hp + j] = bk[j];
        for (int m = 0; m < H; ++m) t[m * Hp + j] = wk[j * H + m];
      }
      if (backward) {
        T* u = w.p + static_cast<size_t>(k) * Hp * Hp;
        for (int j = 0; j < H; ++j) std::memcpy(u + j * Hp, wk + j * H, H * sizeof(T));
      }
    }
    woT = ABuf<T>(static_cast<size_t>(Hp) * Dq);
    bo = ABuf<T>(Dq);
    wo = ABuf<T>(static_cast<size_t>(D) * Hp);
    for (int d = 0; d < D; ++d) {
      bo.p[d] = bo_[d];
      for (int j = 0; j < H; ++j) {
        woT.p[j * Dq + d] = wo_[d * H + j];
        wo.p[d * Hp + j] = wo_[d * H + j];
      }
    }
  }
  const T* wT_k(int k) const { return wT.p + static_cast<size_t>(k) * Hp * Hp; }
  const T* w_k(int k) const { return w.p + static_cast<size_t>(k) * Hp * Hp; }
  const T* b_k(int k) const { return b.p + static_cast<size_t>(k) * Hp; }
};

// Per-thread activations of one block of up to `rows` (default kBlock) chains: U[k], G[k] (k = 0..L)
// [rows][Hp], OUT / DR / GO [rows][Dq]. u(k), g(k) are in the owned U, G, or (bind) in a caller's arrays of
// the same row layout: layer k's u at u0 + k lst, its act' at g0 + k lst.
template <typename T>
struct Work {
  int Hp, Dq, rows;
  ABuf<T> TV, U, G, OUT, DR, GO, GA, GB, XI;
  T *u0 = nullptr, *g0 = nullptr;
  size_t lst = 0;
  Work(const Net<T>& n, bool backward, bool normals, int rows_ = kBlock)
      : Hp(n.Hp), Dq(n.Dq), rows(rows_), TV(2 * static_cast<size_t>(n.D)) {
    const size_t act = static_cast<size_t>(rows) * n.Hp;
    U = ABuf<T>(act * (backward ? n.L + 1 : 2));
    if (backward) {
      G = ABuf<T>(act * (n.L + 1));
      GA = ABuf<T>(act);
      GB = ABuf<T>(act);
      GO = ABuf<T>(static_cast<size_t>(rows) * n.Dq);
      OUT = ABuf<T>(static_cast<size_t>(rows) * n.Dq);
    }
    DR = ABuf<T>(static_cast<size_t>(rows) * n.Dq);
    if (normals) XI = ABuf<T>(normals_capacity(rows, n.D));
    bind(U.p, G.p, static_cast<size_t>(rows) * Hp);
  }
  void bind(T* u0_, T* g0_, size_t lst_) {
    u0 = u0_;
    g0 = g0_;
    lst = lst_;
  }
  T* u(int k) { return u0 + static_cast<size_t>(k) * lst; }
  T* g(int k) { return g0 + static_cast<size_t>(k) * lst; }
};

// The hidden activations that a forward keeps for its backward (hidden null: none): a policy rollout's every step
// (trajectory_policy.cpp) or one MLP's (mlp_net.cpp, T = 1). hidden (T, 2(L+1), B, H) holds u_k at [i][k] and
// act'(z_k) at [i][L+1+k], each [i][k] a [B][H] array of rows. Where H is whole vectors (H = Hp) the Work is bound
// to them (the forward writes there, the backward reads there); otherwise the rows are copied out of / into the
// Work's own buffers. (The D-wide output layer is recomputed from u_L where needed: keeping it costs more memory
// traffic than its GEMM.)
template <typename T>
struct Kept {
  T* hidden = nullptr;
  int64_t B = 0;
  bool on() const { return hidden != nullptr; }
  T* at(const Net<T>& n, int i, int k, int64_t b0) const {
    return hidden + ((static_cast<int64_t>(i) * 2 * (n.L + 1) + k) * B + b0) * n.H;
  }
  // whether the Work reads and writes the kept arrays in place: rows of whole vectors from a vector-aligned start
  // (the engine's aligned loads; a caller's tensor may start anywhere)
  bool in_place(const Net<T>& n) const {
    return n.H == n.Hp && reinterpret_cast<uintptr_t>(hidden) % FASTSAMP_NATIVE_BYTES == 0;
  }
  // before the forward of (step i, block b0): the Work writes into the kept arrays where it can
  void bind(const Net<T>& n, Work<T>& w, int i, int64_t b0) const {
    if (in_place(n)) w.bind(at(n, i, 0, b0), at(n, i, n.L + 1, b0), static_cast<size_t>(B) * n.H);
  }
  // after it: else the Work's rows are copied there (IN = false), or (IN = true) into the Work from there
  template <bool IN>
  void copy(const Net<T>& n, Work<T>& w, int nb, int i, int64_t b0) const {
    if (in_place(n)) return;
    for (int k = 0; k < 2 * (n.L + 1); ++k) {
      T* work = k <= n.L ? w.u(k) : w.g(k - n.L - 1);
      for (int l = 0; l < nb; ++l) {
        T* a = at(n, i, k, b0) + static_cast<int64_t>(l) * n.H;
        T* b = work + static_cast<int64_t>(l) * n.Hp;
        std::memcpy(IN ? b : a, IN ? a : b, static_cast<size_t>(n.H) * sizeof(T));
      }
    }
  }
};

// The output layer of nb rows U (stride Hp) with bias `bias`: the raw output into OUT (when not null), clamped to
// [-clip, clip] into DR (both [nb][Dq]).
template <typename T>
FASTSAMP_VINLINE void out_rows(const Net<T>& n, const T* U, int nb, const T* bias, T* OUT, T* DR) {
  if (n.out_dot) {
    out_layer_dot<T>(nb, U, n.Hp, n.NJ, n.wo.p, n.Hp, n.D, bias, n.clip, OUT, DR, n.Dq);
    return;
  }
  with_nv(n.NJo, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    out_layer<T, NV>(nb, U, n.Hp, n.H, n.woT.p, n.Dq, n.NJo, bias, n.clip, OUT, DR, n.Dq);
  });
}

// Forward of the network for the nb <= w.rows chains X (rows of Din) at step i (no temb when Tn = 0): out into
// w.DR ([nb][Dq]), the raw output into w.OUT (backward). BACKWARD keeps every layer's u and act' in w.U / w.G;
// otherwise u ping-pongs between two buffers. DERIV2 (with BACKWARD) also keeps act'' of layer k in
// A2 + k rows Hp (laid out as w.U / w.G).
template <typename T, bool BACKWARD, bool DERIV2 = false>
FASTSAMP_VINLINE void net_forward(const Net<T>& n, Work<T>& w, const T* X, int nb, int i, T* A2 = nullptr) {
  const int Hp = n.Hp;
  const T* temb_i = n.Tn > 0 ? n.temb.p + static_cast<size_t>(i) * Hp : nullptr;
  auto ucur = [&](int k) { return BACKWARD ? w.u(k) : w.u(k & 1); };
  auto a2 = [&](int k) { return DERIV2 ? A2 + static_cast<size_t>(k) * w.rows * Hp : nullptr; };
  with_act(n.act, [&](auto a) {
    constexpr int ACT = decltype(a)::value;
    with_nv(n.NJ, [&](auto nv) {
      constexpr int NV = decltype(nv)::value;
      fwd_layer<T, NV, ACT, BACKWARD, DERIV2>(nb, X, n.Din, n.Din, n.wsT.p, Hp, n.NJ, n.bs.p, temb_i, ucur(0),
                                              BACKWARD ? w.g(0) : nullptr, Hp, a2(0));
      for (int k = 0; k < n.L; ++k)
        fwd_layer<T, NV, ACT, BACKWARD, DERIV2>(nb, ucur(k), Hp, n.H, n.wT_k(k), Hp, n.NJ, n.b_k(k), nullptr,
                                                ucur(k + 1), BACKWARD ? w.g(k + 1) : nullptr, Hp, a2(k + 1));
    });
  });
  out_rows(n, ucur(n.L), nb, n.bo.p, BACKWARD ? w.OUT.p : nullptr, w.DR.p);
}

// The backward through the layers after net_forward<T, true> of nb chains (w.U, w.G hold its activations
// u_k and act'(z_k)), from the output cotangent g (w.GO, [nb][Dq], D columns read):
//
//   δz_L = (W_oᵀ g) ⊙ act'(z_L),  δz_k = (W_kᵀ δz_{k+1}) ⊙ act'(z_k)  (k = L−1 .. 0),
//
// each δz_k ([nb][Hp], in w.GA or w.GB) passed to visit(k, δz_k, nv) (nv: the NJ tag of with_nv) before
// δz_{k−1} is computed (the weight gradients read it there); returns δz_0. The output clamp is the
// caller's (g masked). The Net needs its untransposed hidden weights (built with backward = true).
template <typename T, typename Visit>
const T* backprop_layers(const Net<T>& n, Work<T>& w, int nb, Visit&& visit) {
  const int Hp = n.Hp;
  T* gz = w.GA.p;
  T* gz2 = w.GB.p;
  with_nv(n.NJ, [&](auto nv) {
    constexpr int NV = decltype(nv)::value;
    bwd_layer<T, NV>(nb, w.GO.p, n.Dq, n.D, n.wo.p, Hp, n.NJ, w.g(n.L), gz, Hp);
    for (int k = n.L - 1; k >= 0; --k) {
      visit(k + 1, static_cast<const T*>(gz), nv);
      bwd_layer<T, NV>(nb, gz, Hp, n.H, n.w_k(k), Hp, n.NJ, w.g(k), gz2, Hp);
      std::swap(gz, gz2);
    }
    visit(0, static_cast<const T*>(gz), nv);
  });
  return gz;
}

// Pointers to padded gradient sums in the Net's layouts: the L hidden weights dw (H rows of Hp each, Hp² apart)
// and biases db (Hp apart), the output layer's dwo (D rows of Hp) and dbo, the input layer's dwsT (Din rows of
// Hp: its transpose) and db0 (Hp).
template <typename T>
struct LayerGrads {
  T *dw, *db, *dwo, *dbo, *dwsT, *db0;
};

// The parameter gradients of nb rows X after net_forward<T, true> of them, from the output cotangent w.GO (the
// clamp is the caller's, as in backprop_layers), added to the sums g (each block's sum first, then one rounding):
//
//   dbo += Σ_l g_l,  dW_o += Σ_l g_l u_L,lᵀ,  dW_k += Σ_l δz_k,l u_{k−1},lᵀ,  db_k += Σ_l δz_k,l  (k = 1..L),
//   dW_s += Σ_l δz_0,l x_lᵀ,  db0 += Σ_l δz_0,l;
//
// returns δz_0 (input_layer_vjp of it is the input's gradient).
template <typename T>
const T* layer_grads(const Net<T>& n, Work<T>& w, const T* X, int nb, const LayerGrads<T>& g) {
  const int Hp = n.Hp, L = n.L;
  colsum<T>(nb, w.GO.p, n.Dq, n.NJo, g.dbo);
  with_nv(n.NJ, [&](auto nv) { wgrad<T, decltype(nv)::value>(n.D, nb, w.GO.p, n.Dq, w.u(L), Hp, n.NJ, g.dwo, Hp); });
  return backprop_layers(n, w, nb, [&](int k, const T* gz, auto nv) {
    constexpr int NV = decltype(nv)::value;
    if (k > 0) {
      wgrad<T, NV>(n.H, nb, gz, Hp, w.u(k - 1), Hp, n.NJ, g.dw + static_cast<size_t>(k - 1) * Hp * Hp, Hp);
      colsum<T>(nb, gz, Hp, n.NJ, g.db + static_cast<size_t>(k - 1) * Hp);
    } else {
      colsum<T>(nb, gz, Hp, n.NJ, g.db0);
      wgrad<T, NV>(n.Din, nb, X, n.Din, gz, Hp, n.NJ, g.dwsT, Hp);
    }
  });
}

// (W_sᵀ δz_0) of nb chains into GX[l*ldx + d] (ADD: added to it); W_s: the Din input columns of the input layer.
// Inputs at least a vector wide (a Net built for the backward keeps W_s in rows, n.ws) as a register-tiled GEMM
// δz_0 (nb × H) · W_s (H × Din); narrower ones as Din dot products per row (the input gradient of mlp_net at 30,000
// rows, H = 64, float32, one thread: 0.8 → 0.4 ms at Din = 16, 7.5 → 5.4 ms at Din = 128; RESULTS.md, "Fifteenth
// session").
template <typename T, bool ADD>
void input_layer_vjp(const Net<T>& n, const T* __restrict gz0, int nb, T* __restrict GX, int64_t ldx) {
  constexpr int W = kW<T>;
  if (n.ws.p == nullptr) {
    for (int l = 0; l < nb; ++l)
      for (int d = 0; d < n.Din; ++d) {
        const T v = dot_nj<T>(gz0 + static_cast<int64_t>(l) * n.Hp, n.wsT.p + d * n.Hp, n.NJ);
        GX[l * ldx + d] = ADD ? GX[l * ldx + d] + v : v;
      }
    return;
  }
  const int NJi = static_cast<int>(round_up(n.Din, W) / W);
  with_nv(NJi, [&](auto nv) {
    tiled_gemm<T, decltype(nv)::value>(nb, gz0, n.Hp, 1, n.H, n.ws.p, NJi * W, NJi, [](int) { return Vec<T>{}; },
                                       [&](Vec<T> acc, int l, int col) {
                                         alignas(64) T v[W];
                                         storea<T>(v, acc);
                                         T* __restrict g = GX + l * ldx + col;
                                         const int m = n.Din - col < W ? n.Din - col : W;
                                         for (int j = 0; j < m; ++j) g[j] = ADD ? g[j] + v[j] : v[j];
                                       });
  });
}

// The network's vector-Jacobian product to its input, after net_forward<T, true> of the same nb chains:
// GX[l*ldx + d] = (J_f(x_l)ᵀ g_l)_d = (W_sᵀ δz_0)_d (backprop_layers; the time input is constant in x).
// The output clamp is taken as the identity: for networks with clip = +inf (the score and energy networks).
template <typename T>
void net_input_vjp(const Net<T>& n, Work<T>& w, int nb, T* __restrict GX, int64_t ldx) {
  const T* gz0 = backprop_layers(n, w, nb, [](int, const T*, auto) {});
  input_layer_vjp<T, false>(n, gz0, nb, GX, ldx);
}

}  // namespace mlp
}  // namespace cpu
}  // namespace fastsamp
