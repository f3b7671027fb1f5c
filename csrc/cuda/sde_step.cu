// Op 2: sde_step -- x_new = a x + c_s (score + extra_drift) + c_n xi.
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
                    const int64_t B, const int64_t D, const int64_t Q, const uint64_t seed,
                    const uint64_t offset, uint64_t chain0, const T a, const T c_s, const T c_n) {
  const int64_t total = B * Q;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool idx32 = total <= 0xFFFFFFFFLL;  // uniform: cheap 32-bit division
  for (int64_t it = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; it < total;
       it += stride) {
    int64_t b = 0, j = 0;
    if (!VEC || !NOISE) {
      if (idx32) {
        const uint32_t iu = static_cast<uint32_t>(it), qu = static_cast<uint32_t>(Q);
        const uint32_t bu = iu / qu;
        b = bu;
        j = iu - bu * qu;
      } else {
        b = it / Q;
        j = it - b * Q;
      }
    }
    T xv[4], sv[4], ev[4] = {0, 0, 0, 0}, nv[4] = {0, 0, 0, 0};
    int64_t base;
    int n = 4;
    if constexpr (VEC) {
      base = 4 * it;  // == b * D + 4 j since D == 4 Q
      load4_aligned(x + base, xv);
      load4_aligned(score + base, sv);
      if constexpr (EXTRA) load4_aligned(extra + base, ev);
      if constexpr (NOISE) load4_aligned(noise + base, nv);
    } else {
      base = b * D + 4 * j;
      const int64_t rem = D - 4 * j;
      n = rem < 4 ? static_cast<int>(rem) : 4;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const bool ok = r < n;
        xv[r] = ok ? x[base + r] : static_cast<T>(0);
        sv[r] = ok ? score[base + r] : static_cast<T>(0);
        if constexpr (EXTRA) ev[r] = ok ? extra[base + r] : static_cast<T>(0);
        if constexpr (NOISE) nv[r] = ok ? noise[base + r] : static_cast<T>(0);
      }
    }
    if constexpr (!NOISE) normal4<T>(seed, offset, static_cast<uint32_t>(chain0 + b), static_cast<uint32_t>(j), nv);
    T o[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const T drift = EXTRA ? sv[r] + ev[r] : sv[r];
      o[r] = a * xv[r] + c_s * drift + c_n * nv[r];
    }
    if constexpr (VEC) {
      store4_aligned(out + base, o);
    } else {
#pragma unroll
      for (int r = 0; r < 4; ++r)
        if (r < n) out[base + r] = o[r];
    }
  }
}

template <typename T, bool NOISE, bool EXTRA, bool VEC>
void run_cfg(const void* x, const void* score, const void* extra, const void* noise, void* out,
             int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0, double a, double c_s,
             double c_n, cudaStream_t stream) {
  const int64_t Q = (D + 3) / 4;
  const int64_t total = B * Q;
  const int sms = current_sm_count("sde_step");
  int64_t blocks = (total + kSdeThreads - 1) / kSdeThreads;
  const int64_t cap = static_cast<int64_t>(sms) * 16;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  sde_step_kernel<T, NOISE, EXTRA, VEC><<<static_cast<unsigned>(blocks), kSdeThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(score), static_cast<const T*>(extra),
      static_cast<const T*>(noise), static_cast<T*>(out), B, D, Q, seed, offset, chain0,
      static_cast<T>(a), static_cast<T>(c_s), static_cast<T>(c_n));
  check_launch("sde_step");
}

template <typename T, bool NOISE, bool EXTRA>
void run_vec(bool vec, const void* x, const void* score, const void* extra, const void* noise,
             void* out, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0, double a,
             double c_s, double c_n, cudaStream_t stream) {
  if (vec)
    run_cfg<T, NOISE, EXTRA, true>(x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n,
                                   stream);
  else
    run_cfg<T, NOISE, EXTRA, false>(x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n,
                                    stream);
}

template <typename T>
void run(const void* x, const void* score, const void* extra, const void* noise, void* out,
         int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain0, double a, double c_s, double c_n,
         cudaStream_t stream) {
  auto al = [](const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; };
  const bool vec = (D % 4 == 0) && al(x) && al(score) && al(extra) && al(noise) && al(out);
  const bool has_noise = noise != nullptr, has_extra = extra != nullptr;
  if (has_noise && has_extra)
    run_vec<T, true, true>(vec, x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, stream);
  else if (has_noise)
    run_vec<T, true, false>(vec, x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, stream);
  else if (has_extra)
    run_vec<T, false, true>(vec, x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, stream);
  else
    run_vec<T, false, false>(vec, x, score, extra, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, stream);
}

}  // namespace

void launch_sde_step(int dtype, const void* x, const void* score, const void* extra_drift,
                     const void* noise, void* out, int64_t B, int64_t D, uint64_t seed,
                     uint64_t offset, uint64_t chain0, double a, double c_s, double c_n, void* stream) {
  check_dtype(dtype, "sde_step");
  if (B < 0 || D < 0 || B > 0xFFFFFFFFLL || (D + 3) / 4 > 0xFFFFFFFFLL)
    throw std::invalid_argument("fastsamp cuda sde_step: bad sizes B=" + std::to_string(B) +
                                " D=" + std::to_string(D));
  if (B == 0 || D == 0) return;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (dtype == 0)
    run<float>(x, score, extra_drift, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, s);
  else
    run<double>(x, score, extra_drift, noise, out, B, D, seed, offset, chain0, a, c_s, c_n, s);
}

}  // namespace cuda
}  // namespace fastsamp
