// Shared pieces of the C++ CPU kernels: lane blocks, Philox across SIMD lanes,
// the Box–Muller normals / MH uniforms of docs/backend-contract.md (the lane
// loops here; the vectorised generator of the kernels in cpu/normals.h, which
// this header includes), per-thread workspaces and the compile-time-D dispatch.
//
// Layout convention of the "block" kernels: W chains (SIMD lanes) at a time,
// their state transposed into a local [D][W] buffer so that every inner loop
// runs over lanes (`#pragma omp simd`) with unit stride.
#pragma once
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "common/cpu_math.h"
#include "common/philox.h"
#include "cpu/runtime.h"

namespace fastsamp {
namespace cpu {

// Chains per block: one 512-bit register of lanes (16 float, 8 double).
template <typename T>
struct Lanes {
  static constexpr int W = 64 / static_cast<int>(sizeof(T));
};

constexpr double kTwoPi = 6.283185307179586476925286766559;

// 64-byte aligned scratch buffer (per thread).
template <typename T>
struct Buf {
  T* p = nullptr;
  explicit Buf(size_t n) {
    const size_t bytes = ((std::max<size_t>(n, 1) * sizeof(T) + 63) / 64) * 64;
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

// Philox4x32-10 on W independent counters (c0[l], c1[l], c2, c3) with a
// common key; rounds outermost, lanes innermost so that the 32x32->64
// multiplies vectorise across lanes. Results overwrite c0..c3.
template <int W>
FASTSAMP_VINLINE void philox_lanes(uint32_t* __restrict c0, uint32_t* __restrict c1,
                                   uint32_t* __restrict c2, uint32_t* __restrict c3, uint32_t k0,
                                   uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
#pragma omp simd
    for (int l = 0; l < W; ++l) {
      const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0[l];
      const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2[l];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[l] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[l] ^ k1;
      c0[l] = n0;
      c1[l] = static_cast<uint32_t>(p1);
      c2[l] = n2;
      c3[l] = static_cast<uint32_t>(p0);
    }
    philox_next_key(k0, k1);
  }
}

// Box–Muller on words (w0, w1) of one lane: (rad cos ang, rad sin ang).
template <typename T>
FASTSAMP_VINLINE void box_muller(uint32_t w0, uint32_t w1, T* even, T* odd) {
  const T u1 = uniform_open<T>(w0);
  const T u2 = uniform_closed<T>(w1);
  const T rad = std::sqrt(T(-2) * vm::log<T>(u1));
  const T ang = static_cast<T>(kTwoPi) * u2;
  T s, c;
  vm::sincos<T>(ang, &s, &c);
  *even = rad * c;
  *odd = rad * s;
}

// Standard normals of draw (seed, offset) for chains b0 .. b0+W-1 and all d < D,
// into xi[d * W + l]. xi must hold 4 * ceil(D / 4) * W values (rows d >= D are
// scratch).
template <typename T, int W>
FASTSAMP_VINLINE void block_normals(uint64_t seed, uint64_t offset, uint64_t b0, int D,
                                    T* __restrict xi) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
  const int J = (D + 3) / 4;
  alignas(64) uint32_t c0[W], c1[W], c2[W], c3[W];
  for (int j = 0; j < J; ++j) {
#pragma omp simd
    for (int l = 0; l < W; ++l) {
      c0[l] = static_cast<uint32_t>(j);
      c1[l] = static_cast<uint32_t>(b0 + l);
      c2[l] = o0;
      c3[l] = o1;
    }
    philox_lanes<W>(c0, c1, c2, c3, k0, k1);
    T* __restrict r0 = xi + (4 * j) * W;
#pragma omp simd
    for (int l = 0; l < W; ++l) {
      T e, o;
      box_muller<T>(c0[l], c1[l], &e, &o);
      r0[l] = e;
      r0[W + l] = o;
    }
    if (4 * j + 2 < D) {
#pragma omp simd
      for (int l = 0; l < W; ++l) {
        T e, o;
        box_muller<T>(c2[l], c3[l], &e, &o);
        r0[2 * W + l] = e;
        r0[3 * W + l] = o;
      }
    }
  }
}

// log u of the MH uniforms of draw (seed, offset), chains b0 .. b0+W-1.
template <typename T, int W>
FASTSAMP_VINLINE void block_log_uniform(uint64_t seed, uint64_t offset, uint64_t b0,
                                        T* __restrict logu) {
  alignas(64) uint32_t c0[W], c1[W], c2[W], c3[W];
  const uint32_t o0 = static_cast<uint32_t>(offset), o1 = static_cast<uint32_t>(offset >> 32);
#pragma omp simd
  for (int l = 0; l < W; ++l) {
    c0[l] = 0xFFFFFFFFu;
    c1[l] = static_cast<uint32_t>(b0 + l);
    c2[l] = o0;
    c3[l] = o1;
  }
  philox_lanes<W>(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
#pragma omp simd
  for (int l = 0; l < W; ++l) logu[l] = vm::log<T>(uniform_open<T>(c0[l]));
}


}  // namespace cpu
}  // namespace fastsamp

#include "cpu/normals.h"  // GroupNormals, rows_normals, draw_rows_normals: the normals drawn inside the kernels

namespace fastsamp {
namespace cpu {

// Largest D (and K) the kernels take: with it every per-block index (d * W + l, 8 * D * W)
// fits an int. Beyond it: std::invalid_argument (ValueError in Python), never a wrapped index.
constexpr int64_t kMaxDim = int64_t(1) << 24;
inline int checked_dim(int64_t v, const char* name) {
  if (v < 0 || v > kMaxDim)
    throw std::invalid_argument(std::string("fastsamp._C: ") + name + " = " + std::to_string(v) +
                                " is outside [0, 2**24]");
  return static_cast<int>(v);
}

// Calls f(std::integral_constant<int, DC>) with DC = D for D in {1,2,4,8,16}
// and DC = 0 (runtime D) otherwise.
template <int N>
using IntC = std::integral_constant<int, N>;
template <typename F>
inline void dispatch_d(int64_t D, F&& f) {
  checked_dim(D, "D");
  switch (D) {
    case 1: f(IntC<1>()); break;
    case 2: f(IntC<2>()); break;
    case 4: f(IntC<4>()); break;
    case 8: f(IntC<8>()); break;
    case 16: f(IntC<16>()); break;
    default: f(IntC<0>()); break;
  }
}

template <typename F>
inline void dispatch_dtype(int dtype, F&& f) {
  if (dtype == 0) {
    f(float());
  } else if (dtype == 1) {
    f(double());
  } else {
    throw std::invalid_argument("fastsamp._C: dtype must be 0 (float32) or 1 (float64)");
  }
}

// f(tag, dc): dispatch_dtype's type tag and dispatch_d's D-constant, for the kernels
// instantiated per dtype and compile-time D.
template <typename F>
inline void dispatch_dtype_d(int dtype, int64_t D, F&& f) {
  dispatch_dtype(dtype, [&](auto tag) { dispatch_d(D, [&](auto dc) { f(tag, dc); }); });
}

// f(std::true_type()) or f(std::false_type()): a runtime flag as a compile-time one.
template <typename F>
inline void dispatch_bool(bool v, F&& f) {
  if (v) {
    f(std::true_type());
  } else {
    f(std::false_type());
  }
}

template <typename T>
FASTSAMP_VINLINE T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace cpu
}  // namespace fastsamp
