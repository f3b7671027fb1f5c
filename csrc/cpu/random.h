// The MH uniforms of docs/backend-contract.md on the CPU: u of chain g in draw (seed, offset) is
// uniform_open(word 0 of philox((0xFFFFFFFF, g, offset_lo, offset_hi), seed)), computed for 16
// chains at a time across SIMD lanes (philox_lanes of cpu/common.h). Used by ops.uniform
// (random.cpp) and by the accept kernels that draw their uniform in-kernel (mh.cpp, hmc.cpp).
#pragma once
#include <algorithm>

#include "cpu/common.h"

namespace fastsamp {
namespace cpu {

constexpr int kUniformBlock = 16;

// u[l] = MH uniform of chain chain0 + l in draw (seed, offset), l < n <= kUniformBlock.
template <typename T>
FASTSAMP_VINLINE void uniform_block(uint64_t seed, uint64_t offset, uint64_t chain0, int n, T* __restrict u) {
  constexpr int W = kUniformBlock;
  alignas(64) uint32_t c0[W], c1[W], c2[W], c3[W];
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    c0[l] = 0xFFFFFFFFu;
    c1[l] = static_cast<uint32_t>(chain0 + static_cast<uint64_t>(l));
    c2[l] = o0;
    c3[l] = o1;
  }
  philox_lanes<W>(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int l = 0; l < n; ++l) u[l] = uniform_open<T>(c0[l]);
}

// The uniforms of an MH accept kernel: the given u (B,) when u is not null, else the draw
// (seed, offset) of chains chain0 + b (the same bits as ops.uniform).
template <typename T>
struct MhUniforms {
  const T* u;
  uint64_t seed, offset, chain0;

  // f(b, u_b) for the rows b0 .. b1 - 1, in order (drawn uniforms: 16 rows at a time).
  template <typename F>
  FASTSAMP_VINLINE void rows(int64_t b0, int64_t b1, F&& f) const {
    if (u) {
      for (int64_t b = b0; b < b1; ++b) f(b, u[b]);
      return;
    }
    alignas(64) T ub[kUniformBlock];
    for (int64_t c = b0; c < b1; c += kUniformBlock) {
      const int n = static_cast<int>(std::min<int64_t>(kUniformBlock, b1 - c));
      uniform_block<T>(seed, offset, chain0 + static_cast<uint64_t>(c), n, ub);
      for (int i = 0; i < n; ++i) f(c + i, ub[i]);
    }
  }
};

}  // namespace cpu
}  // namespace fastsamp
