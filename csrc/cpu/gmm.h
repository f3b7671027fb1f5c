// The Gaussian mixture Σ_k π_k N(α μ_k, (α² v_k + σ²) I) of the gmm family (gmm.cpp): its
// per-call constants and its score / log-density on a block of W chains (SIMD lanes) whose
// state is transposed into [D][W] buffers. The score is an online (chunked) log-sum-exp over
// the K components, so nothing of size (B, K, D) exists. D is a compile-time constant for D
// in {1, 2, 4, 8, 16} (DC > 0), a runtime value otherwise.
#pragma once
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu/common.h"
#include "cpu/row_lanes.h"

namespace fastsamp {
namespace cpu {

constexpr int kChunkK = 64;  // components per online-LSE chunk

template <typename T>
struct Mixture {
  int K = 0, D = 0;
  std::vector<T> amu;  // (K, D): alpha * mu_k
  std::vector<T> c;    // lw_k - (D/2) log(2 pi s_k)
  std::vector<T> h;    // 1 / (2 s_k)
  std::vector<T> r;    // 1 / s_k

  Mixture(const T* means, const T* log_weights, const T* variances, int64_t K_, int64_t D_, double alpha,
          double sigma2)
      : K(checked_dim(K_, "K")), D(checked_dim(D_, "D")), amu(static_cast<size_t>(K) * D), c(K), h(K), r(K) {
    if (D < 1) throw std::invalid_argument("fastsamp._C: mixture D = 0: D must be >= 1");
    // lw = log_weights - logsumexp(log_weights)
    double mx = -std::numeric_limits<double>::infinity();
    for (int k = 0; k < K; ++k) mx = std::max(mx, static_cast<double>(log_weights[k]));
    double se = 0.0;
    for (int k = 0; k < K; ++k) se += std::exp(static_cast<double>(log_weights[k]) - mx);
    const T lse = static_cast<T>(mx + std::log(se));
    const T a = static_cast<T>(alpha), a2 = static_cast<T>(alpha * alpha), s2 = static_cast<T>(sigma2);
    const T halfD = static_cast<T>(0.5 * D);
    for (int k = 0; k < K; ++k) {
      const T s = a2 * variances[k] + s2;
      c[k] = (log_weights[k] - lse) - halfD * std::log(static_cast<T>(kTwoPi) * s);
      h[k] = T(0.5) / s;
      r[k] = T(1) / s;
      for (int d = 0; d < D; ++d) amu[static_cast<size_t>(k) * D + d] = a * means[static_cast<size_t>(k) * D + d];
    }
  }
};

// ---- the score on a block of W chains, in rows of one native register (GCC vector extensions) ----
// One W-lane row per dimension: vm::VNative's V / I (the network engine's mlp::Vec / IVec,
// cpu/mlp_activations.h), 64 bytes with AVX-512 (W = 16 float / 8 double), 32 with AVX / AVX2 (8 / 4),
// 16 below. A wider row would not fit a register: GCC keeps such vectors in memory and splits every
// operation (the mixture sampler ran about 3.5x slower on an AVX2-only Zen 3 with 64-byte rows,
// benchmarks/RESULTS.md, "Twenty-first session"). Every per-lane computation loads and stores rows
// whole: a row load of a row that narrower stores wrote (an `omp simd` loop vectorised at a smaller
// width) stalls on store forwarding.
template <typename T>
using Row = typename vm::VNative<T>::V;
template <typename T>
using RowMask = typename vm::VNative<T>::I;
// Chains per block of the mixture kernels: the lanes of a Row.
template <typename T>
constexpr int kRowLanes = static_cast<int>(sizeof(Row<T>) / sizeof(T));

// Row load / store at any alignment (memcpy): u for unaligned, as in _mm512_loadu_ps. The MLP engine's
// mlp::loada / storea (cpu/mlp_activations.h) need pointers aligned to one of its vectors.
template <typename T>
FASTSAMP_VINLINE Row<T> loadu(const T* p) {
  Row<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
FASTSAMP_VINLINE void storeu(T* p, const Row<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// exp(x) for x <= 0 or NaN (the log-sum-exp weights), the formula of vm::exp (a*b + c contracted
// to one FMA, as everywhere in these kernels): x clamped below at
// ExpC::lo, n = round(x / ln2) by the shifter, r = x - n ln2 in two parts, p = exp(r) by the same
// polynomial, then p 2^n. On AVX-512 the scaling is one vscalef (exact for normal results, so the
// same bits as the two exponent multiplies of vm::exp) instead of six integer/multiply operations.
template <typename V, typename VI, typename T>
FASTSAMP_VINLINE V vexp_nonpos(V x) {
  using C = vm::ExpC<T>;
  x = C::lo > x ? V{} + C::lo : x;  // NaN passes (vmaxps(lo, x))
  const V t = x * C::log2e + C::shifter;
  const V n = t - C::shifter;
  V r = x - n * C::ln2_hi;
  r = r - n * C::ln2_lo;
  V p;
  if constexpr (sizeof(T) == 4) {
    p = (V{} + T(1.9875691500e-4)) * r + T(1.3981999507e-3);
    p = p * r + T(8.3334519073e-3);
    p = p * r + T(4.1665795894e-2);
    p = p * r + T(1.6666665459e-1);
    p = p * r + T(5.0000001201e-1);
    p = (p * (r * r) + r) + T(1);
  } else {
    p = V{} + T(1.0 / 479001600.0);
    p = p * r + T(1.0 / 39916800.0);
    p = p * r + T(1.0 / 3628800.0);
    p = p * r + T(1.0 / 362880.0);
    p = p * r + T(1.0 / 40320.0);
    p = p * r + T(1.0 / 5040.0);
    p = p * r + T(1.0 / 720.0);
    p = p * r + T(1.0 / 120.0);
    p = p * r + T(1.0 / 24.0);
    p = p * r + T(1.0 / 6.0);
    p = p * r + T(0.5);
    p = p * r + T(1);
    p = p * r + T(1);
  }
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<V>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
  } else {
    return reinterpret_cast<V>(_mm512_scalef_pd(reinterpret_cast<__m512d>(p), reinterpret_cast<__m512d>(n)));
  }
#else
  // 2^n as two factors so that subnormal results come out right
  const VI ni = reinterpret_cast<const VI&>(t) - vm::as_int<T>(C::shifter);
  const VI n1 = ni >> 1;
  const VI n2 = ni - n1;
  const VI e1 = (n1 + vm::Bits<T>::kBias) << vm::Bits<T>::kMant;
  const VI e2 = (n2 + vm::Bits<T>::kBias) << vm::Bits<T>::kMant;
  return p * reinterpret_cast<const V&>(e1) * reinterpret_cast<const V&>(e2);
#endif
}

// The rows d < D of a block in tiles of N rows, N a compile-time width: f(IntC<N>(), d0) for the
// tiles [d0, d0 + N): tiles of kTile rows, then one of each of 4, 2, 1 that the remainder holds
// (D = 50: 6 x 8 + 2). A compile-time D unrolls to its tiles.
constexpr int kTile = 8;
template <typename F>
FASTSAMP_VINLINE void for_each_tile(int D, F&& f) {
  int d0 = 0;
  for (; d0 + kTile <= D; d0 += kTile) f(IntC<kTile>(), d0);
  const auto rest = [&](auto nc) {
    if (D - d0 >= decltype(nc)::value) {
      f(nc, d0);
      d0 += decltype(nc)::value;
    }
  };
  rest(IntC<4>());
  rest(IntC<2>());
  rest(IntC<1>());
}

// Score sc[D][W] and log-density logp[W] of the mixture at x[D][W]; ell: scratch of kChunkK * W
// values. Per chunk of kChunkK components, two passes, each over the tiles of rows with the tile's
// x rows (and, in the second, its sums) in registers:
//   1. dist_k = Σ_d (αμ_kd − x_d)², summed in ell tile by tile (d in order), then the log-terms
//      l_k = c_k − h_k dist_k and their maximum m;
//   2. the weights w_k = exp(l_k − m) (their sum; w_k / s_k into ell), then per tile
//      acc_d = Σ_k (w_k / s_k)(αμ_kd − x_d), k in order, kept in sc between chunks.
// The components of a pass are independent of each other, so the exp latency overlaps across
// components (a single-pass online log-sum-exp chains every component's exp behind the previous
// running maximum); the running sums are rescaled once per chunk, not once per component. The
// sums run in the same order for every tiling: a runtime D gives the bits of a compile-time one.
template <typename T, int W, int DC>
FASTSAMP_VINLINE void block_score(const Mixture<T>& mx, int Drt, const T* __restrict x, T* __restrict sc,
                                  T* __restrict logp, T* __restrict ell) {
  static_assert(W == kRowLanes<T>, "one Row per dimension");
  using V = Row<T>;
  using VI = RowMask<T>;
  const int D = DC > 0 ? DC : Drt;
  const int K = mx.K;
  const T* __restrict amu = mx.amu.data();
  const T* __restrict cc = mx.c.data();
  const T* __restrict hh = mx.h.data();
  const T* __restrict rr = mx.r.data();
  const T ninf = -std::numeric_limits<T>::infinity();
  V m = V{} + ninf, sum = V{};
  for (int k0 = 0; k0 < K; k0 += kChunkK) {
    const int kn = std::min(kChunkK, K - k0);
    // pass 1 (cm = max(e, cm) is vmaxps: a NaN e is not taken into the maximum, but its weight
    // exp(NaN) makes the sums NaN in pass 2)
    V cm = m;
    for_each_tile(D, [&](auto nc, int d0) {
      constexpr int N = decltype(nc)::value;
      const bool first = d0 == 0, last = d0 + N == D;
      V xv[N];
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) xv[j] = loadu(x + (d0 + j) * W);
      for (int kk = 0; kk < kn; ++kk) {
        const T* __restrict mu = amu + static_cast<size_t>(k0 + kk) * D + d0;
        V dist = first ? V{} : loadu(ell + kk * W);
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          const V df = mu[j] - xv[j];
          dist = df * df + dist;
        }
        if (last) {
          const V e = cc[k0 + kk] - dist * hh[k0 + kk];
          cm = e > cm ? e : cm;
          dist = e;
        }
        storeu(ell + kk * W, dist);
      }
    });
    V scl = V{} + T(1);  // rescales the running sums to the new maximum (1 where it did not move)
    if (k0 > 0) {
      scl = cm == m ? scl : vexp_nonpos<V, VI, T>(m - cm);
      sum *= scl;
    }
    m = cm;
    // pass 2: the weights. A -inf term has weight 0: exp(-inf - m) is exp(ExpC::lo), which rounds
    // to 0, and where m = -inf (x infinite) the shift is 0 instead, so that no -inf - -inf = NaN appears.
    const V shift = m == ninf ? V{} : m;
    for (int kk = 0; kk < kn; ++kk) {
      const V w = vexp_nonpos<V, VI, T>(loadu(ell + kk * W) - shift);
      sum += w;
      storeu(ell + kk * W, w * rr[k0 + kk]);
    }
    const bool final_chunk = k0 + kn == K;
    const V inv = final_chunk ? T(1) / sum : V{};  // normalises the sums after the final chunk
    for_each_tile(D, [&](auto nc, int d0) {
      constexpr int N = decltype(nc)::value;
      V xv[N], acc[N];
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        xv[j] = loadu(x + (d0 + j) * W);
        acc[j] = k0 > 0 ? loadu(sc + (d0 + j) * W) * scl : V{};
      }
      for (int kk = 0; kk < kn; ++kk) {
        const T* __restrict mu = amu + static_cast<size_t>(k0 + kk) * D + d0;
        const V wr = loadu(ell + kk * W);
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) acc[j] = wr * (mu[j] - xv[j]) + acc[j];
      }
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) storeu(sc + (d0 + j) * W, final_chunk ? acc[j] * inv : acc[j]);
    });
  }
  alignas(64) T sm[W], mm[W];
  storeu(sm, sum);
  storeu(mm, m);
#pragma omp simd
  for (int l = 0; l < W; ++l) logp[l] = mm[l] + vm::log<T>(sm[l]);
}

// x (B, D) rows b0 .. b0+nb-1 -> xt[D][W] (lanes >= nb get 0). With row lanes of this W (AVX-512, AVX2) each
// row of xt is one register and one whole-row store (the score then loads it whole: a row written by W scalar
// stores would stall that load on store forwarding): at a compile-time D = DC the row lanes' row_columns (one
// load at D = 1, a whole block's in-register transpose at D = 2, 4, 8 (and 16 on AVX2), else gathers), at a
// run-time D gathers.
template <typename T, int W, int DC = 0>
FASTSAMP_VINLINE void load_block(const T* __restrict x, int64_t b0, int nb, int D, T* __restrict xt) {
#if FASTSAMP_MH_ROW_LANES
  using L = RowLanes<T>;
  if constexpr (W == L::W) {
    const typename L::Mask live = L::mask(nb);
    if constexpr (DC > 0) {
      typename L::V c[DC];
      row_columns<T, DC>(nb, live, L::index(DC), x + b0 * DC, c);
      for (int d = 0; d < DC; ++d) std::memcpy(xt + d * W, &c[d], sizeof(T) * W);
      return;
    }
    const auto idx = L::index(D);
    for (int d = 0; d < D; ++d) {
      const typename L::V v = L::gather(live, idx, x + b0 * D + d);
      std::memcpy(xt + d * W, &v, sizeof(T) * W);
    }
    return;
  }
#endif
  for (int l = 0; l < W; ++l) {
    if (l < nb) {
      const T* __restrict row = x + (b0 + l) * D;
      for (int d = 0; d < D; ++d) xt[d * W + l] = row[d];
    } else {
      for (int d = 0; d < D; ++d) xt[d * W + l] = T(0);
    }
  }
}
// xt[D][W] lanes l < nb -> x (B, D) rows b0 + l; with row lanes of this W a whole block at a compile-time D = DC
// of 1, 2, 4, 8 (16 on AVX2) by one store or the inverse of the row lanes' transpose (RowLanes::rows), not W x D
// scalar stores.
template <typename T, int W, int DC = 0>
FASTSAMP_VINLINE void store_block(const T* __restrict xt, int64_t b0, int nb, int D, T* __restrict x) {
#if FASTSAMP_MH_ROW_LANES
  using L = RowLanes<T>;
  if constexpr (W == L::W && (DC == 1 || L::has_columns(DC))) {
    if (nb == W) {
      if constexpr (DC == 1) {
        std::memcpy(x + b0, xt, sizeof(T) * W);
      } else {
        typename L::V c[DC];
        for (int d = 0; d < DC; ++d) std::memcpy(&c[d], xt + d * W, sizeof(T) * W);
        L::template rows<DC>(c, x + b0 * DC);
      }
      return;
    }
  }
#endif
  for (int l = 0; l < nb; ++l) {
    T* __restrict row = x + (b0 + l) * D;
    for (int d = 0; d < D; ++d) row[d] = xt[d * W + l];
  }
}

// The mixture score of the rows [r0, r1) of x (n, D), in blocks of W rows: per block (rows b0 .. b0+nb-1)
// load_block, block_score, then out(b0, nb, sc, lp) with the block's score sc[D][W] and log-density lp[W].
// scratch: score_rows_scratch<T, W>(D) values, 64-byte aligned.
template <typename T, int W>
constexpr size_t score_rows_scratch(int D) {
  return static_cast<size_t>(2 * D + 1 + kChunkK) * W;
}
template <typename T, int W, int DC, typename Out>
FASTSAMP_VINLINE void score_rows(const Mixture<T>& mx, int D, const T* __restrict x, int64_t r0, int64_t r1,
                                 T* __restrict scratch, Out&& out) {
  T* xt = scratch;  // [D][W] the block's rows, its score, log-density and the log-sum-exp scratch
  T* sct = xt + static_cast<size_t>(D) * W;
  T* lp = sct + static_cast<size_t>(D) * W;
  for (int64_t b0 = r0; b0 < r1; b0 += W) {
    const int nb = static_cast<int>(std::min<int64_t>(W, r1 - b0));
    load_block<T, W, DC>(x, b0, nb, D, xt);
    block_score<T, W, DC>(mx, D, xt, sct, lp, lp + W);
    out(b0, nb, static_cast<const T*>(sct), static_cast<const T*>(lp));
  }
}

// ---- Philox across the lanes of a chain block (the whole-move kernels) ----
// The normals and MH uniforms of docs/backend-contract.md for the W chains b0 .. b0+W-1 of a block,
// written [row][W] as block_normals / block_log_uniform (cpu/common.h) do. On AVX-512 and AVX2 the
// Philox runs on 64-bit lanes, 8 (AVX-512) or 4 (AVX2) chains per register (cpu/philox_simd.h), and
// the Box–Muller is GroupNormals' vector one
// (vneg2log_unit, vsqrt, vsincos) on Rows: the same formulas as the scalar lane loops, to the last
// bits of log/sin/cos. Elsewhere those lane loops.
#if defined(__AVX512F__) || defined(__AVX2__)
template <typename T, int W>
struct LanePhilox {
  using G = GroupNormals<T>;
  static constexpr int H = W / kPhiloxLanes;  // registers of chains per block: 2 (float), 1 (double)
#if defined(__AVX512F__)
  static constexpr int kMaxNC = 4;  // counters at a time: 4 H of them (4 words each) fill the 32 registers
  using Word = std::conditional_t<H == 2, U32x16, U32x8>;  // a word of the W chains
#else
  // counters at a time: their 4 H kMaxNC = 8 words stay in the 16 registers (16 spilled every round, as in
  // GroupNormals' prime)
  static constexpr int kMaxNC = 2 / H;
  // a word of the W chains; float64 takes the words' values straight from the 64-bit lanes
  using Word = std::conditional_t<H == 2, U32x8, Row<T>>;
#endif
  using State = PhiloxState<H>;
  PhiloxKeys keys;

  explicit LanePhilox(uint64_t seed) : keys(seed) {}

  // Philox4x32-10 of the NC counters (js[i], chain b0 + l, offset) into st[i], their rounds interleaved
  // (independent multiply chains).
  template <int NC>
  FASTSAMP_VINLINE void run(const uint32_t* js, uint64_t b0, uint64_t offset, State* st) const {
    for (int i = 0; i < NC; ++i) st[i].set(js[i], b0, offset);
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
#pragma GCC unroll 4
      for (int i = 0; i < NC; ++i) st[i].round(keys.k0[r], keys.k1[r]);
    }
  }

  // The 4 words of each lane as W-lane vectors of uint32.
  template <typename U>
  static FASTSAMP_VINLINE void words(const State& st, U* w) {
    for (int q = 0; q < 4; ++q) {
      if constexpr (H == 2) {
        w[q] = reinterpret_cast<U>(philox_words(st.c[q][0], st.c[q][1]));
      } else {
#if defined(__AVX512F__)
        w[q] = reinterpret_cast<U>(philox_words(st.c[q][0]));
#else
        w[q] = reinterpret_cast<U>(philox_words_f64(st.c[q][0]));
#endif
      }
    }
  }

  // The draws (seed, offset) of the block's chains: standard normals, rows d < D into xi[d][W] (xi
  // holds 4 ceil(D/4) rows; rows D .. are scratch), and, when logu is not null, the log of the MH
  // uniforms into logu[W]. The Philox of up to kMaxNC counters runs at a time.
  FASTSAMP_VINLINE void draw(uint64_t offset, uint64_t b0, int D, T* __restrict xi, T* __restrict logu) const {
    using V = Row<T>;
    using U = Word;
    const int J = (D + 3) / 4;
    const int nc = J + (logu ? 1 : 0);
    for (int c0 = 0; c0 < nc; c0 += kMaxNC) {
      const int ncur = std::min(kMaxNC, nc - c0);
      uint32_t js[kMaxNC];
      for (int i = 0; i < ncur; ++i) js[i] = c0 + i < J ? static_cast<uint32_t>(c0 + i) : 0xFFFFFFFFu;
      State st[kMaxNC];
      if constexpr (kMaxNC == 4) {
        switch (ncur) {
          case 1: run<1>(js, b0, offset, st); break;
          case 2: run<2>(js, b0, offset, st); break;
          case 3: run<3>(js, b0, offset, st); break;
          default: run<4>(js, b0, offset, st); break;
        }
      } else if constexpr (kMaxNC == 2) {
        if (ncur == 1) {
          run<1>(js, b0, offset, st);
        } else {
          run<2>(js, b0, offset, st);
        }
      } else {
        run<1>(js, b0, offset, st);
      }
      for (int i = 0; i < ncur; ++i) {
        U w[4];
        words<U>(st[i], w);
        const int j = c0 + i;
        if (j == J) {  // the MH uniform: log u = -1/2 (-2 log u), exact
          const V u = __builtin_convertvector(w[0], V) * T(2.3283064365386963e-10) + T(1.1641532182693481e-10);
          const V lu = vm::vneg2log_unit<T, V>(u) * T(-0.5);
          std::memcpy(logu, &lu, sizeof(V));
          continue;
        }
        V n[4];
        auto no_tick = [](int) {};
        if (4 * j + 2 < D) {
          G::template box_muller_v<V, 2>(w, n, no_tick);
        } else {
          G::template box_muller_v<V, 1>(w, n, no_tick);
          n[2] = n[3] = V{};
        }
        for (int q = 0; q < 4; ++q) std::memcpy(xi + (4 * j + q) * W, &n[q], sizeof(V));
      }
    }
  }
};
#else
template <typename T, int W>
struct LanePhilox {
  uint64_t seed;
  explicit LanePhilox(uint64_t seed_) : seed(seed_) {}
  FASTSAMP_VINLINE void draw(uint64_t offset, uint64_t b0, int D, T* __restrict xi, T* __restrict logu) const {
    block_normals<T, W>(seed, offset, b0, D, xi);
    if (logu) block_log_uniform<T, W>(seed, offset, b0, logu);
  }
};
#endif


}  // namespace cpu
}  // namespace fastsamp
