// The sde family on CUDA: op 2, sde_step -- x_new = a x + c_s (score + extra_drift) + c_n xi.
// (guided_sde_step has no CUDA kernel: the dispatcher runs it on Triton.)
//
// Grid-stride streaming kernel over "quads": work item (b, j) covers the
// elements d = 4j .. 4j+3 of chain b, which are exactly the four normals of one
// philox call (counter (j, b, offset)). When D % 4 == 0 and every pointer is
// 16-byte aligned the quads are contiguous and aligned: float4 / 2x double2
// loads and stores (VEC). Otherwise scalar accesses, the last quad of a row
// being partial.
#include <string>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace fastsamp {
namespace cuda {
namespace {

constexpr int kSdeThreads = 256;

template <typename T, bool NOISE, bool EXTRA, bool VEC>
__global__ void __launch_bounds__(kSdeThreads)
    sde_step_kernel(const T* __restrict__ x, const T* __restrict__ score,
                    const T* __restrict__ extra, const T* __restrict__ noise, T* __restrict__ out,
                    const int64_t B, const int64_t D, const int64_t Q, const U64Arg seed_a,
                    const U64Arg offset_a, const U64Arg chain_a, const T a, const T c_s, const T c_n) {
  const uint64_t seed = seed_a.get(), offset = offset_a.get(), chain0 = chain_a.get();
  const int64_t total = B * Q;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool idx32 = total <= 0xFFFFFFFFLL;
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < total;
       it += stride) {
    int64_t b = 0, j = 0;
    if (!VEC || !NOISE) quad_coords(it, Q, idx32, b, j);
    // VEC: D == 4 Q, so quad (b, j) starts at 4 it == b D + 4 j.
    const int64_t base = VEC ? 4 * it : b * D + 4 * j;
    int n = 4;
    if constexpr (!VEC) {
      const int64_t rem = D - 4 * j;
      n = rem < 4 ? static_cast<int>(rem) : 4;
    }
    T xv[4], sv[4], ev[4] = {0, 0, 0, 0}, nv[4] = {0, 0, 0, 0};
    load_quad(x + base, VEC, n, xv);
    load_quad(score + base, VEC, n, sv);
    if constexpr (EXTRA) load_quad(extra + base, VEC, n, ev);
    if constexpr (NOISE) {
      load_quad(noise + base, VEC, n, nv);
    } else {
      normal4<T>(seed, offset, static_cast<uint32_t>(chain0 + b), static_cast<uint32_t>(j), nv);
    }
    T o[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const T drift = EXTRA ? sv[r] + ev[r] : sv[r];
      o[r] = a * xv[r] + c_s * drift + c_n * nv[r];
    }
    store_quad(out + base, VEC, n, o);
  }
}

}  // namespace

void sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise, int64_t B,
              int64_t D, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
              uintptr_t chain_offset_t, double a, double c_s, double c_n,
              uintptr_t out_, uintptr_t stream) {
  const char* op = "sde_step";
  with_quads(dtype, op, B, D, [&](auto tag, int64_t Q) {
    using T = decltype(tag);
    const bool vec = vec_quads(D, {x, score, extra_drift, noise, out_});
    with_const<2>(noise != 0, [&](auto has_noise) {
      with_const<2>(extra_drift != 0, [&](auto has_extra) {
        with_const<2>(vec, [&](auto is_vec) {
          sde_step_kernel<T, decltype(has_noise)::value, decltype(has_extra)::value, decltype(is_vec)::value>
              <<<stride_blocks(B * Q, kSdeThreads, op), kSdeThreads, 0, as_stream(stream)>>>(
                  in<T>(x), in<T>(score), in<T>(extra_drift), in<T>(noise), out<T>(out_), B, D, Q, u64_arg(seed,
                  seed_t), u64_arg(offset, offset_t),
                  u64_arg(chain_offset, chain_offset_t), static_cast<T>(a), static_cast<T>(c_s), static_cast<T>(c_n));
          check_launch(op);
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace fastsamp
