// The MH uniforms of docs/backend-contract.md on the CPU: u of chain g in draw (seed, offset) is
// uniform_open(word 0 of philox((0xFFFFFFFF, g, offset_lo, offset_hi), seed)), computed for 16
// chains at a time across SIMD lanes (uniform_words: AVX-512, AVX2, lane loops). Used by ops.uniform
// (random.cpp) and by the accept kernels that draw their uniform in-kernel (mh.cpp, hmc.cpp).
#pragma once
#include <algorithm>

#include "cpu/common.h"
#include "cpu/philox_simd.h"

namespace fastsamp {
namespace cpu {

constexpr int kUniformBlock = 16;

#if defined(__AVX512F__) || defined(__AVX2__)
// Word 0 of philox((0xFFFFFFFF, chain0 + l, offset_lo, offset_hi), seed) for l < kUniformBlock into w, on the
// SIMD Philox of cpu/philox_simd.h. About 4x the lane loop of philox_lanes, whose 64-bit products GCC does not
// map onto vpmuludq.
FASTSAMP_VINLINE void uniform_words(uint64_t seed, uint64_t offset, uint64_t chain0, uint32_t* __restrict w) {
  constexpr int H = kUniformBlock / kPhiloxLanes;
  PhiloxState<H> st;
  st.set(0xFFFFFFFFu, chain0, offset);
  st.rounds(seed);
#if defined(__AVX512F__)
  _mm512_storeu_si512(w, philox_words(st.c[0][0], st.c[0][1]));
#else
  for (int q = 0; q < H / 2; ++q)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + 8 * q), philox_words(st.c[0][2 * q], st.c[0][2 * q + 1]));
#endif
}
#else
FASTSAMP_VINLINE void uniform_words(uint64_t seed, uint64_t offset, uint64_t chain0, uint32_t* __restrict w) {
  constexpr int W = kUniformBlock;
  alignas(64) uint32_t c1[W], c2[W], c3[W];
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    w[l] = 0xFFFFFFFFu;
    c1[l] = static_cast<uint32_t>(chain0 + static_cast<uint64_t>(l));
    c2[l] = static_cast<uint32_t>(offset);
    c3[l] = static_cast<uint32_t>(offset >> 32);
  }
  philox_lanes<W>(w, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}
#endif

// u[l] = MH uniform of chain chain0 + l in draw (seed, offset), l < n <= kUniformBlock.
template <typename T>
FASTSAMP_VINLINE void uniform_block(uint64_t seed, uint64_t offset, uint64_t chain0, int n, T* __restrict u) {
  alignas(64) uint32_t w[kUniformBlock];
  uniform_words(seed, offset, chain0, w);
  for (int l = 0; l < n; ++l) u[l] = uniform_open<T>(w[l]);
}

// The uniforms of an MH accept kernel: the given u (B,) when u is not null, else the draw
// (seed, offset) of chains chain0 + b (the same bits as ops.uniform). The kernels test
// log u < log alpha, so what they take is log u, computed 16 rows at a time across SIMD lanes (vm::log;
// a scalar std::log per row was a quarter of energy_mh_accept's time at B = 2048, D = 8).
template <typename T>
struct MhUniforms {
  const T* u;
  uint64_t seed, offset, chain0;

  // g(c, n, lu) for the blocks of rows c .. c + n - 1 (n <= kRows) of b0 .. b1 - 1, in order, with
  // lu[l] = log u_{c + l} (64-byte aligned): the Philox blocks of the kRows rows, then one vectorised log.
  static constexpr int kRows = 16 * kUniformBlock;
  template <typename G>
  FASTSAMP_VINLINE void blocks(int64_t b0, int64_t b1, G&& g) const {
    alignas(64) T lu[kRows];
    for (int64_t c = b0; c < b1; c += kRows) {
      const int n = static_cast<int>(std::min<int64_t>(kRows, b1 - c));
      if (u) {
        for (int l = 0; l < n; ++l) lu[l] = u[c + l];
      } else {
        for (int k = 0; k < n; k += kUniformBlock)
          uniform_block<T>(seed, offset, chain0 + static_cast<uint64_t>(c + k), kUniformBlock, lu + k);
      }
      const int nv = (n + kUniformBlock - 1) / kUniformBlock * kUniformBlock;
      for (int l = n; l < nv; ++l) lu[l] = T(1);
#pragma omp simd
      for (int l = 0; l < nv; ++l) lu[l] = vm::log<T>(lu[l]);
      g(c, n, static_cast<const T*>(lu));
    }
  }

  // f(b, log u_b) for the rows b0 .. b1 - 1, in order (`blocks`, then f over each block's rows).
  template <typename F>
  FASTSAMP_VINLINE void rows(int64_t b0, int64_t b1, F&& f) const {
    blocks(b0, b1, [&](int64_t c, int n, const T* lu) __attribute__((always_inline)) {
      for (int l = 0; l < n; ++l) f(c + l, lu[l]);
    });
  }
};

}  // namespace cpu
}  // namespace fastsamp
