// Philox4x32-10 counter-based generator (Salmon, Moraes, Dror, Shaw, SC'11),
// shared by the C++ CPU and CUDA kernels. The stream layout (which counter
// gives which normal / uniform) is specified in docs/backend-contract.md and
// mirrored by the PyTorch reference (fastsamp/ops/random.py) and the Triton
// kernels (kernels/random.py).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTSAMP_HD __host__ __device__ __forceinline__
#else
#define FASTSAMP_HD inline __attribute__((always_inline))
#endif

namespace fastsamp {

struct Philox4 {
  uint32_t v[4];
};

// The round multipliers and the key schedule's Weyl increments: every Philox here (this scalar one, the CPU's lane
// loops and SIMD registers, the CUDA kernels) takes them from these lines.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// The key of the next round: (k0 + W0, k1 + W1) mod 2^32.
FASTSAMP_HD void philox_next_key(uint32_t& k0, uint32_t& k1) {
  k0 += kPhiloxW0;
  k1 += kPhiloxW1;
}

// The round keys of seed, (k0[r], k1[r]) for rounds r = 0 .. 9.
FASTSAMP_HD void philox_round_keys(uint64_t seed, uint32_t* k0, uint32_t* k1) {
  uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
  for (int r = 0; r < 10; ++r) {
    k0[r] = a;
    k1[r] = b;
    philox_next_key(a, b);
  }
}

FASTSAMP_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

// Philox4x32 with 10 rounds on counter (c0, c1, c2, c3) and key (k0, k1).
FASTSAMP_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                  uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kPhiloxM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kPhiloxM1, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    philox_next_key(k0, k1);
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniforms from a 32-bit word, in the kernel's dtype T (round-to-nearest
// conversion, exact power-of-two scale, one rounding in the add).
template <typename T>
FASTSAMP_HD T uniform_open(uint32_t r) {  // (0, 1]
  return static_cast<T>(r) * static_cast<T>(2.3283064365386963e-10) +
         static_cast<T>(1.1641532182693481e-10);
}
template <typename T>
FASTSAMP_HD T uniform_closed(uint32_t r) {  // [0, 1]
  return static_cast<T>(r) * static_cast<T>(2.3283064365386963e-10);
}

// Counter of the four normals xi[b, 4j .. 4j+3] of draw (seed, offset).
FASTSAMP_HD Philox4 philox_normal_words(uint64_t seed, uint64_t offset, uint32_t b, uint32_t j) {
  return philox4x32_10(j, b, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Word whose uniform_open is the MH uniform of chain b in draw (seed, offset).
FASTSAMP_HD uint32_t philox_uniform_word(uint64_t seed, uint64_t offset, uint32_t b) {
  return philox4x32_10(0xFFFFFFFFu, b, static_cast<uint32_t>(offset),
                       static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32)).v[0];
}

}  // namespace fastsamp
