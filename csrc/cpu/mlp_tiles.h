// The register tiles of the MLP engine (mlp.h): C[M][NJ vectors] = init + A B as MR chains x NV vectors of
// accumulators, MR * NV <= kAcc (24 of AVX-512's 32 vector registers, 12 of AVX2's 16), and the choice of NV
// for a layer of NJ vectors.
#pragma once
#include <cstdint>

#include "cpu/common.h"
#include "cpu/mlp_activations.h"

namespace fastsamp {
namespace cpu {
namespace mlp {

// acc[r][v] += Σ_{k<K} a[r*ar + k*ak] * b[k*ldb + v*W .. +W]   (b rows aligned to one vector)
template <typename T, int MR, int NV>
FASTSAMP_VINLINE void mk(const T* __restrict a, int64_t ar, int64_t ak, int K, const T* __restrict b, int64_t ldb,
                         Vec<T> (&acc)[MR][NV]) {
  constexpr int W = kW<T>;
  for (int k = 0; k < K; ++k) {
    Vec<T> bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = loada<T>(b + k * ldb + v * W);
    const T* __restrict ak0 = a + k * ak;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Vec<T> av = bc<T>(ak0[r * ar]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = vm::vfma(av, bv[v], acc[r][v]);
    }
  }
}

// Row tiles of MR (NV vectors wide: MR * NV <= kAcc accumulators, MR <= 12), then 8 / 4 / 2 / 1 for the rest.
constexpr int kAcc = FASTSAMP_NATIVE_BYTES == 64 ? 24 : 12;
template <int NV>
constexpr int tile_rows() {
  return kAcc / NV < 12 ? kAcc / NV : 12;
}
template <int NV, typename F>
FASTSAMP_VINLINE void row_tiles(int M, F&& f) {
  constexpr int MR = tile_rows<NV>();
  int m = 0;
  for (; m + MR <= M; m += MR) f(IntC<MR>(), m);
  if constexpr (MR > 8) {
    if (M - m >= 8) {
      f(IntC<8>(), m);
      m += 8;
    }
  }
  if constexpr (MR > 4) {
    if (M - m >= 4) {
      f(IntC<4>(), m);
      m += 4;
    }
  }
  if (M - m >= 2) {
    f(IntC<2>(), m);
    m += 2;
  }
  if (M - m >= 1) f(IntC<1>(), m);
}

// f(IntC<NV>()) with NV the widest of 4, 3, 2, 1 vectors (2, 1 below AVX-512) dividing NJ. With AVX2's 16
// registers the 6 x 2-vector tile ran the training pass 10-19 % faster than 3 x 4 (RESULTS.md, "Nineteenth session").
constexpr int kMaxNV = FASTSAMP_NATIVE_BYTES == 64 ? 4 : 2;
template <typename F>
FASTSAMP_VINLINE void with_nv(int NJ, F&& f) {
  if constexpr (kMaxNV >= 4) {
    if (NJ % 4 == 0) {
      f(IntC<4>());
    } else if (NJ % 3 == 0) {
      f(IntC<3>());
    } else if (NJ % 2 == 0) {
      f(IntC<2>());
    } else {
      f(IntC<1>());
    }
  } else if (NJ % 2 == 0) {  // below AVX-512 the 3- and 4-vector tiles are not compiled
    f(IntC<2>());
  } else {
    f(IntC<1>());
  }
}
// Register-tiled C = init + Σ_{k<K} A[r*ar + k*ak] B[k*ldb + :] for rows r < M and NJ vectors of
// columns: init(col) is a tile's starting vector (bias or zero), epi(acc, r, col) consumes each
// accumulator vector of row r, columns col .. col + W.
template <typename T, int NV, class Init, class Epilogue>
FASTSAMP_VINLINE void tiled_gemm(int M, const T* __restrict A, int64_t ar, int64_t ak, int K, const T* __restrict B,
                                 int64_t ldb, int NJ, Init&& init, Epilogue&& epi) {
  constexpr int W = kW<T>;
  for (int c0 = 0; c0 < NJ; c0 += NV) {
    const int cc = c0 * W;
    row_tiles<NV>(M, [&](auto mr, int m0) {
      constexpr int MR = decltype(mr)::value;
      Vec<T> acc[MR][NV];
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = init(cc + v * W);
      mk<T, MR, NV>(A + m0 * ar, ar, ak, K, B + cc, ldb, acc);
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) epi(acc[r][v], m0 + r, cc + v * W);
    });
  }
}

}  // namespace mlp
}  // namespace cpu
}  // namespace fastsamp
