// Device helpers shared by the fastsamp CUDA kernels (no pybind11 here).
//
//  * error checking of launches (throws std::runtime_error -> RuntimeError),
//  * the contract's standard normals (Philox4x32-10 + Box-Muller, four
//    normals xi[b, 4j .. 4j+3] per philox call) and MH uniform,
//  * xor-butterfly sums inside a group of G lanes of one warp (every lane of
//    the group ends with the bitwise-identical sum),
//  * 4-element loads/stores (vectorised where the caller guarantees alignment).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/philox.h"

namespace fastsamp {
namespace cuda {

// ---------------------------------------------------------------- host side

inline void throw_cuda(const char* op, const char* what, cudaError_t e) {
  throw std::runtime_error(std::string("fastsamp cuda ") + op + ": " + what + ": " +
                           cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Call right after a <<<>>> launch.
inline void check_launch(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(op, "kernel launch failed", e);
}

inline void check_call(cudaError_t e, const char* op, const char* what) {
  if (e != cudaSuccess) throw_cuda(op, what, e);
}

// Number of SMs of the current device (for grid-stride grids).
inline int current_sm_count(const char* op) {
  int dev = 0, sms = 0;
  check_call(cudaGetDevice(&dev), op, "cudaGetDevice");
  check_call(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), op,
             "cudaDeviceGetAttribute");
  return sms > 0 ? sms : 1;
}

inline void check_dtype(int dtype, const char* op) {
  if (dtype != 0 && dtype != 1)
    throw std::invalid_argument(std::string("fastsamp cuda ") + op +
                                ": dtype must be 0 (float32) or 1 (float64), got " +
                                std::to_string(dtype));
}

// -------------------------------------------------------------- device side

template <typename T>
struct Num;
template <>
struct Num<float> {
  static __device__ __forceinline__ float inf() { return __int_as_float(0x7f800000); }
  static __device__ __forceinline__ float nan() { return __int_as_float(0x7fffffff); }
};
template <>
struct Num<double> {
  static __device__ __forceinline__ double inf() {
    return __longlong_as_double(0x7ff0000000000000LL);
  }
  static __device__ __forceinline__ double nan() {
    return __longlong_as_double(0x7fffffffffffffffLL);
  }
};

__device__ __forceinline__ void dev_sincos(float a, float* s, float* c) { sincosf(a, s, c); }
__device__ __forceinline__ void dev_sincos(double a, double* s, double* c) { sincos(a, s, c); }

// Box-Muller on one pair of philox words (contract: u1 open, u2 closed).
template <typename T>
__device__ __forceinline__ void box_muller(uint32_t w1, uint32_t w2, T& z_cos, T& z_sin) {
  const T u1 = uniform_open<T>(w1);
  const T u2 = uniform_closed<T>(w2);
  const T rad = sqrt(static_cast<T>(-2) * log(u1));
  const T ang = static_cast<T>(6.283185307179586476925286766559) * u2;
  T s, c;
  dev_sincos(ang, &s, &c);
  z_cos = rad * c;
  z_sin = rad * s;
}

// xi[b, 4j + r], r = 0..3, of draw (seed, offset).
template <typename T>
__device__ __forceinline__ void normal4(uint64_t seed, uint64_t offset, uint32_t b, uint32_t j,
                                        T out[4]) {
  const Philox4 r = philox_normal_words(seed, offset, b, j);
  box_muller<T>(r.v[0], r.v[1], out[0], out[1]);
  box_muller<T>(r.v[2], r.v[3], out[2], out[3]);
}

// MH uniform of chain b in draw (seed, offset), in (0, 1].
template <typename T>
__device__ __forceinline__ T mh_uniform(uint64_t seed, uint64_t offset, uint32_t b) {
  return uniform_open<T>(philox_uniform_word(seed, offset, b));
}

// Sum over the G consecutive lanes (G a power of two <= 32) sharing a chain.
// Every lane of the warp must call it (full mask); xor butterfly, so all lanes
// of a group get the same bits.
template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
  static_assert(G >= 1 && G <= 32 && (G & (G - 1)) == 0, "G must be a power of two <= 32");
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 4 consecutive elements; p must be 16-byte aligned.
__device__ __forceinline__ void load4_aligned(const float* p, float v[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void load4_aligned(const double* p, double v[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void store4_aligned(float* p, const float v[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4_aligned(double* p, const double v[4]) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}

}  // namespace cuda
}  // namespace fastsamp
