// Helpers shared by the fastsamp CUDA kernels (no pybind11 here).
//
// Host side:
//  * the pointer ABI (tensor pointers arrive as uintptr_t, 0 = not given), their
//    alignment, and the dtype dispatch (dtype 0 float32, 1 float64),
//  * the size check of Philox-indexed entry points (check_chain_sizes: B < 2^32 chains,
//    invalid_argument -> ValueError) and the quad kernels' preamble (with_quads: dtype,
//    size check, nothing to do at B * D = 0),
//  * error checking of launches (throws std::runtime_error -> RuntimeError),
//  * grid geometry of the two kernel shapes: a group of G lanes per chain, and
//    grid-stride loops over the quads of a (B, D) tensor,
//  * compile-time dispatch of runtime choices (group size, flags, layouts).
// Device side:
//  * the contract's standard normals (Philox4x32-10 + Box-Muller, four
//    normals xi[b, 4j .. 4j+3] per philox call) and MH uniform,
//  * the chain a group of lanes owns, and the quad coordinates of a work item,
//  * xor-butterfly sums inside a group of G lanes of one warp (every lane of
//    the group ends with the bitwise-identical sum),
//  * 4-element loads/stores (vectorised where the caller guarantees alignment).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/philox.h"

namespace fastsamp {
namespace cuda {

// ---------------------------------------------------------------- host side

template <typename T>
inline const T* in(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
inline T* out(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
// Whether the quads of rows of D elements can be float4 / 2x double2 accesses: D % 4 == 0 and
// every pointer 16-byte aligned (an absent tensor, 0, counts as aligned).
inline bool vec_quads(int64_t D, std::initializer_list<uintptr_t> ptrs) {
  if (D % 4 != 0) return false;
  for (const uintptr_t p : ptrs)
    if (p % 16 != 0) return false;
  return true;
}

inline std::string op_error(const char* op, const std::string& what) {
  return std::string("fastsamp cuda ") + op + ": " + what;
}

inline void throw_cuda(const char* op, const char* what, cudaError_t e) {
  throw std::runtime_error(op_error(op, what) + ": " + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ")");
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

// f(float{}) or f(double{}) for dtype 0 / 1; any other dtype is invalid_argument.
template <typename F>
void dispatch_dtype(int dtype, const char* op, F&& f) {
  if (dtype == 0) return f(float{});
  if (dtype == 1) return f(double{});
  throw std::invalid_argument(
      op_error(op, "dtype must be 0 (float32) or 1 (float64), got " + std::to_string(dtype)));
}

// The size check of every entry point whose B chains index Philox: B, D >= 0, B < 2^32 (the chain is a
// 32-bit Philox word, as is the quad index j < ceil(D / 4)); invalid_argument naming B and D otherwise.
inline void check_chain_sizes(const char* op, int64_t B, int64_t D) {
  if (B < 0 || D < 0 || B > 0xFFFFFFFFLL || (D + 3) / 4 > 0xFFFFFFFFLL)
    throw std::invalid_argument(op_error(op, "bad sizes B=" + std::to_string(B) + " D=" + std::to_string(D)));
}

// The preamble of a quad kernel's entry point (dtype dispatch, check_chain_sizes): f(T{}, Q) with
// Q = ceil(D / 4) quads a row, unless there is nothing to compute (B = 0 or D = 0).
template <typename F>
void with_quads(int dtype, const char* op, int64_t B, int64_t D, F&& f) {
  dispatch_dtype(dtype, op, [&](auto tag) {
    check_chain_sizes(op, B, D);
    if (B > 0 && D > 0) f(tag, (D + 3) / 4);
  });
}

// f(std::integral_constant<int, v>{}) for a runtime v in [0, N) (N - 1 for larger v):
// one instantiation per value, as a chain of ifs would give.
template <int N, int I = 0, typename F>
void with_const(int v, F&& f) {
  if constexpr (I + 1 < N) {
    if (v != I) return with_const<N, I + 1>(v, f);
  }
  f(std::integral_constant<int, I>{});
}

// f(std::integral_constant<int, G>{}) with G = min(32, next power of two >= n): a group of
// G lanes for n work units (elements or quads) of a chain.
template <typename F>
void with_group(int64_t n, F&& f) {
  int lg = 0;
  while (lg < 5 && (int64_t{1} << lg) < n) ++lg;
  with_const<6>(lg, [&](auto l) { f(std::integral_constant<int, 1 << decltype(l)::value>{}); });
}

// Lanes per chain G and quads per lane NQ of a kernel for chains of up to max_d elements.
struct Layout {
  int64_t max_d;
  int G;
  int NQ;
};

// f(G, NQ) (integral constants) of the first layout of Table::kLayouts whose max_d >= D (the
// last one for larger D).
template <typename Table, size_t I = 0, typename F>
void with_layout(int64_t D, F&& f) {
  constexpr size_t n = sizeof(Table::kLayouts) / sizeof(Layout);
  if constexpr (I + 1 < n) {
    if (D > Table::kLayouts[I].max_d) return with_layout<Table, I + 1>(D, f);
  }
  f(std::integral_constant<int, Table::kLayouts[I].G>{},
    std::integral_constant<int, Table::kLayouts[I].NQ>{});
}

// Blocks of `threads` threads for B chains with G lanes each (one group per chain).
inline unsigned group_blocks(int64_t B, int G, int threads, const char* op) {
  const int64_t per_block = threads / G;
  const int64_t blocks = (B + per_block - 1) / per_block;
  if (blocks > 2147483647LL) throw std::invalid_argument(op_error(op, "B too large"));
  return static_cast<unsigned>(blocks);
}

// Threads per block of a group-per-chain kernel: max_threads, halved (down to one warp)
// while that gives fewer than two blocks per SM, so that small batches still spread.
inline int spread_threads(int64_t B, int G, int max_threads, const char* op) {
  const int64_t min_blocks = 2 * static_cast<int64_t>(current_sm_count(op));
  int threads = max_threads;
  auto nblocks = [&](int t) { return (B + (t / G) - 1) / (t / G); };
  while (threads > 32 && nblocks(threads) < min_blocks) threads /= 2;
  return threads;
}

// Blocks of a grid-stride loop over `total` work items: one item a thread, at most 16 blocks
// per SM, at least one.
inline unsigned stride_blocks(int64_t total, int threads, const char* op) {
  int64_t blocks = (total + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(current_sm_count(op)) * 16;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
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

// A seed / offset / chain offset argument of a kernel: the launch's value, or, with ptr set, the int64
// that a one-element tensor holds when the kernel runs (a u64 in two's complement), so that a
// replayed CUDA graph draws from the tensor's current value.
struct U64Arg {
  uint64_t value;
  const int64_t* ptr;
  __device__ __forceinline__ uint64_t get() const { return ptr ? static_cast<uint64_t>(*ptr) : value; }
};

// The U64Arg of an entry point's (value, pointer or 0) pair.
inline U64Arg u64_arg(uint64_t value, uintptr_t ptr) { return U64Arg{value, reinterpret_cast<const int64_t*>(ptr)}; }

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

// The chain of a group-per-chain kernel this thread works on: its lane in the group of G, the
// chain b, whether b < B, and bc: b, or the last chain for the groups past the end (they
// compute on it, so that every lane takes part in the group sums, and write nothing).
struct GroupChain {
  int lane;
  int64_t b;
  bool active;
  int64_t bc;
};

template <int G>
__device__ __forceinline__ GroupChain group_chain(int64_t B) {
  GroupChain c;
  c.lane = static_cast<int>(threadIdx.x) % G;
  c.b = static_cast<int64_t>(blockIdx.x) * (blockDim.x / G) + threadIdx.x / G;
  c.active = c.b < B;
  c.bc = c.active ? c.b : B - 1;
  return c;
}

// Row b and quad j of work item `it` over rows of Q quads; idx32 (uniform over the grid: all
// items < 2^32) takes the cheap 32-bit division.
__device__ __forceinline__ void quad_coords(int64_t it, int64_t Q, bool idx32, int64_t& b,
                                            int64_t& j) {
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

// The n (<= 4) elements of a quad at p, zeros past n; one aligned vector load when vec
// (then n == 4).
template <typename T>
__device__ __forceinline__ void load_quad(const T* __restrict__ p, bool vec, int n, T v[4]) {
  if (vec) {
    load4_aligned(p, v);
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r) v[r] = r < n ? p[r] : static_cast<T>(0);
  }
}

template <typename T>
__device__ __forceinline__ void store_quad(T* __restrict__ p, bool vec, int n, const T v[4]) {
  if (vec) {
    store4_aligned(p, v);
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (r < n) p[r] = v[r];
  }
}

}  // namespace cuda
}  // namespace fastsamp
