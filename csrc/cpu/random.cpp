// The random family on the CPU: ops.normal and ops.uniform as kernels of their own, the same
// Philox streams that the other kernels draw in-kernel (docs/backend-contract.md): the normals
// through the streaming engine's generator (noise_pass of cpu/stream.h: fused 64-normal blocks when
// D % 4 == 0 on AVX-512, chunks of rows otherwise), the uniforms 16 chains at a time (cpu/random.h).
#include "cpu/ops.h"
#include "cpu/random.h"
#include "cpu/stream.h"

namespace fastsamp {
namespace cpu {

void normal(int dtype, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t B, int64_t D, uintptr_t out) {
  const int d = checked_dim(D, "D");
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    noise_pass<T>(nullptr, B, d, seed, offset, chain_offset, nullptr, 0, ptr<T>(out),
                  [](int64_t, T xi) { return xi; }, [](int64_t, auto& v, auto xi) { v = xi; });
  });
}

void uniform(int dtype, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t B, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* __restrict u = ptr<T>(out);
    parallel_for(stream_threads(B), B, [&](int64_t b0, int64_t b1) {
      for (int64_t c = b0; c < b1; c += kUniformBlock) {
        const int n = static_cast<int>(std::min<int64_t>(kUniformBlock, b1 - c));
        uniform_block<T>(seed, offset, chain_offset + static_cast<uint64_t>(c), n, u + c);
      }
    });
  });
}

}  // namespace cpu
}  // namespace fastsamp
