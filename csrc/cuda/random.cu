// The random family on CUDA: ops.normal and ops.uniform as kernels of their own, the streams that
// the other kernels draw in-kernel (docs/backend-contract.md; normal4 / mh_uniform of common.cuh).
// normal: grid-stride over quads (b, j), one Philox call for the four normals xi[b, 4j .. 4j+3]
// (vector stores when D % 4 == 0 and the output is 16-byte aligned); uniform: one chain a thread.
#include <string>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kRandomThreads = 256;

template <typename T, bool VEC>
__global__ void __launch_bounds__(kRandomThreads)
    normal_kernel(T* __restrict__ out, const int64_t B, const int64_t D, const int64_t Q, const U64Arg seed_a,
                  const U64Arg offset_a, const U64Arg chain_a) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  const int64_t total = B * Q;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool idx32 = total <= 0xFFFFFFFFLL;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < total; it += stride) {
    int64_t b = 0, j = 0;
    quad_coords(it, Q, idx32, b, j);
    const int64_t base = VEC ? 4 * it : b * D + 4 * j;
    int n = 4;
    if constexpr (!VEC) {
      const int64_t rem = D - 4 * j;
      n = rem < 4 ? static_cast<int>(rem) : 4;
    }
    T z[4];
    normal4<T>(seed, offset, static_cast<uint32_t>(chain0 + b), static_cast<uint32_t>(j), z);
    store_quad(out + base, VEC, n, z);
  }
}

template <typename T>
__global__ void __launch_bounds__(kRandomThreads)
    uniform_kernel(T* __restrict__ out, const int64_t B, const U64Arg seed_a, const U64Arg offset_a,
                   const U64Arg chain_a) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; b < B; b += stride)
    out[b] = mh_uniform<T>(seed, offset, static_cast<uint32_t>(chain0 + b));
}

}  // namespace

void normal(int dtype, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
uintptr_t chain_offset_t, int64_t B, int64_t D, uintptr_t out_,
            uintptr_t stream) {
  const char* op = "normal";
  with_quads(dtype, op, B, D, [&](auto tag, int64_t Q) {
    using T = decltype(tag);
    with_const<2>(vec_quads(D, {out_}), [&](auto is_vec) {
      normal_kernel<T, decltype(is_vec)::value>
          <<<stride_blocks(B * Q, kRandomThreads, op), kRandomThreads, 0, as_stream(stream)>>>(
              out<T>(out_), B, D, Q, u64_arg(seed, seed_t), u64_arg(offset, offset_t), u64_arg(chain_offset,
              chain_offset_t));
      check_launch(op);
    });
  });
}

void uniform(int dtype, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
uintptr_t chain_offset_t, int64_t B, uintptr_t out_,
             uintptr_t stream) {
  const char* op = "uniform";
  dispatch_dtype(dtype, op, [&](auto tag) {
    using T = decltype(tag);
    check_chain_sizes(op, B, 1);  // one uniform a chain
    if (B == 0) return;
    uniform_kernel<T><<<stride_blocks(B, kRandomThreads, op), kRandomThreads, 0, as_stream(stream)>>>(
        out<T>(out_), B, u64_arg(seed, seed_t), u64_arg(offset, offset_t), u64_arg(chain_offset, chain_offset_t));
    check_launch(op);
  });
}

}  // namespace cuda
}  // namespace fastsamp
