// The streaming engine shared by the per-chain CPU kernels (mh.cpp, sde.cpp, hmc.cpp,
// trajectory.cpp): thread split, the in-kernel Philox normals by chunks of rows or fused into the
// pass, 64-byte-vector passes with non-temporal stores, and the MH accept/select of one row.
// See docs/backend-contract.md.
//
// Elementwise ops are single streaming passes (static split over the pool's threads). When
// the noise is drawn in-kernel, each thread walks a contiguous run of chunks of
// rows: the normals of a chunk are generated over flat groups g = b * J + j,
// 16 groups per SIMD block (GroupNormals in cpu/normals.h), written row-major
// into an L1 buffer, and consumed by the same pass; the next chunk's inputs are
// prefetched while the normals are computed. When D % 4 == 0 (the row-major
// normals are exactly the group stream) the elementwise steps instead take the
// fused path (philox_fused): 64 normals at a time in registers, combined and
// stored at once, so that memory traffic and generator arithmetic overlap.
#pragma once
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/common.h"

namespace fastsamp {
namespace cpu {

// Rows per chunk of the in-kernel Philox path: a multiple of 16 (so that chunk
// starts are 64-byte aligned in the output and group blocks never straddle
// chunks of one thread) with about kChunkElems normals in the L1 buffer.
constexpr int64_t kChunkElems = 2048;
// Elements per thread below which a streaming call stays on the calling thread.
constexpr int64_t kStreamGrain = int64_t(1) << 15;
FASTSAMP_VINLINE int stream_threads(int64_t n_elems) { return threads_for(n_elems, kStreamGrain); }
// Outputs of at least this many bytes are written with non-temporal stores (no read-for-ownership; they would not stay
// in cache anyway); a smaller one, e.g. a sampler's chains that its next op reads at once, with plain stores, so that
// it stays in L1 / L2.
constexpr int64_t kNonTemporalBytes = int64_t(1) << 20;
FASTSAMP_VINLINE int64_t chunk_rows(int D) {
  const int64_t P = 4 * ((D + 3) / 4);
  return std::max<int64_t>(16, (kChunkElems / P) / 16 * 16);
}

// f(b0, nb, xi): xi[(b - b0) * D + d] is the Philox normal of element (b, d) of
// draw (seed, offset), row b being global chain chain0 + b, for rows b0 .. b0+nb-1 (a chunk). Each thread takes a
// contiguous run of chunks (one Philox pipeline per thread). While the normals of
// a chunk are computed, the rows of the next chunk of the `nin` input arrays
// `in` (row length D) are prefetched, so that the memory streams keep running
// during the compute.
template <typename T, typename F>
void philox_chunks(int64_t B, int D, uint64_t seed, uint64_t offset, uint64_t chain0, const T* const* in, int nin,
                   F&& f) {
  const int64_t R = chunk_rows(D);
  const int64_t nchunk = (B + R - 1) / R;
  const int J = (D + 3) / 4;
  parallel(stream_threads(B * D), [&](int id, int nt) {
    const int64_t per = (nchunk + nt - 1) / nt;
    const int64_t c0 = std::min<int64_t>(nchunk, per * id), c1 = std::min<int64_t>(nchunk, per * (id + 1));
    if (c0 < c1) {
      Buf<T> xi(normals_capacity(R, D));
      GroupNormals<T> gen(seed, offset, J, (static_cast<uint64_t>(c0 * R) + chain_word(chain0)) * J);
      typename GroupNormals<T>::State st;
      gen.prime(st);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * R;
        const int64_t nb = std::min<int64_t>(R, B - b0);
        // next chunk's input bytes [e0, e1) * sizeof(T) of each array, spread over the blocks
        const int64_t e0 = std::min(B, b0 + R) * D, e1 = std::min(B, b0 + 2 * R) * D;
        const int64_t pf0 = e0 * static_cast<int64_t>(sizeof(T)), pf1 = e1 * static_cast<int64_t>(sizeof(T));
        const int64_t nblk = normals_blocks(nb, D);
        const int64_t lpb = ((pf1 - pf0 + 63) / 64 + nblk - 1) / nblk;  // lines per block
        rows_normals<T>(gen, st, nb, D, xi.p,
                        NormalsPrefetch{reinterpret_cast<const char* const*>(in), nin, pf0, pf1, lpb});
        f(b0, nb, static_cast<const T*>(xi.p));
      }
    }
  });
}

// 64-byte vector of T.
template <typename T>
using Vec64 = typename vm::V64<T>::V;

// Stores the 64-byte vector v at p: non-temporal when NT and the target has AVX-512 (p 64-byte
// aligned; no read-for-ownership of the output), a plain unaligned store otherwise.
template <bool NT, typename T, typename V>
FASTSAMP_VINLINE void store_vec(T* p, const V& v) {
#if defined(__AVX512F__)
  if constexpr (NT) {
    if constexpr (sizeof(T) == 4) {
      _mm512_stream_ps(reinterpret_cast<float*>(p), reinterpret_cast<const __m512&>(v));
    } else {
      _mm512_stream_pd(reinterpret_cast<double*>(p), reinterpret_cast<const __m512d&>(v));
    }
    return;
  }
#endif
  std::memcpy(p, &v, sizeof(V));
}

// out[i .. i + 64 bytes) = fv(i, V&) for the nv vectors from element i0 on (store_vec<NT>).
template <bool NT, typename T, typename FV>
FASTSAMP_VINLINE void vector_pass(int64_t i0, int64_t nv, T* __restrict out, FV&& fv) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t k = 0; k < nv; ++k) {
    const int64_t i = i0 + k * L;
    Vec64<T> v;
    fv(i, v);
    store_vec<NT>(out + i, v);
  }
}

// Software prefetch distance of the fused path below, in bytes of each input
// array: one block ahead (the hardware prefetchers carry the streams; touching
// the next block early mostly starts its loads before the ALU work of the
// current one). Measured on Zen4: 256-512 best, 0 close, >= 1 KiB worse.
#ifndef FASTSAMP_PF_BYTES
#define FASTSAMP_PF_BYTES 256
#endif
// Fused form of philox_chunks + stream_range for D % 4 == 0, where the flat
// group stream is exactly the row-major (B, D) layout of the normals: flat
// element i has its normal in lane i % 64 of the 64-normal block i / 64. Each
// thread walks a contiguous run of blocks; per block it generates the 64
// normals in registers (GroupNormals::next_v), combines them at once with the
// inputs (fv(i, v, xi): v = out[i .. i + L) from the inputs and the normals xi)
// and writes out with non-temporal stores (when nontemporal and out is 64-byte aligned), so the
// loads/stores of the memory streams are interleaved with the generator's ALU
// work at block grain instead of chunk grain (the generator is about as costly
// as the memory traffic, so overlapping the two is what matters). The `nin`
// input arrays are software-prefetched FASTSAMP_PF_BYTES ahead. f(i, xi) is the
// scalar form (partial last block).
template <typename T, typename F, typename FV>
void philox_fused(int64_t N, int D, uint64_t seed, uint64_t offset, uint64_t chain0, const T* const* in, int nin,
                  T* __restrict out, bool nontemporal, F&& f, FV&& fv) {
#if defined(__AVX512F__)
  using G = GroupNormals<T>;
  using V = typename G::Vec;
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  constexpr int KV = G::kVecs;
  const int J = D / 4;
  const int64_t nblk = (N + 63) / 64;
  const bool stream = nontemporal && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  parallel(stream_threads(N), [&](int id, int nt) {
    const int64_t per = (nblk + nt - 1) / nt;
    const int64_t k0 = std::min<int64_t>(nblk, per * id), k1 = std::min<int64_t>(nblk, per * (id + 1));
    if (k0 < k1) {
      G gen(seed, offset, J, static_cast<uint64_t>(k0) * 16 + chain_word(chain0) * J);
      typename G::State st;
      gen.prime(st);
      const int64_t kf = std::min<int64_t>(k1, N / 64);  // whole blocks
      const char* const* inb = reinterpret_cast<const char* const*>(in);
      for (int64_t k = k0; k < kf; ++k) {
        const int64_t i0 = 64 * k;
        const int64_t pb = i0 * static_cast<int64_t>(sizeof(T)) + FASTSAMP_PF_BYTES;
        if (FASTSAMP_PF_BYTES >= 0)
          for (int a = 0; a < nin; ++a)
            for (int64_t o = 0; o < 64 * static_cast<int64_t>(sizeof(T)); o += 64)
              __builtin_prefetch(inb[a] + pb + o, 0, 3);
        V xi[KV];
        gen.next_v(st, xi);
        auto combine = [&](int64_t i, V& v) { fv(i, v, xi[(i - i0) / L]); };
        if (stream) {
          vector_pass<true>(i0, KV, out, combine);
        } else {
          vector_pass<false>(i0, KV, out, combine);
        }
      }
      if (kf < k1) {  // partial last block
        alignas(64) T xi[64];
        gen.next(st, xi);
        for (int64_t i = 64 * kf; i < N; ++i) out[i] = f(i, xi[i - 64 * kf]);
      }
      _mm_sfence();
    }
  });
#else
  (void)N; (void)D; (void)seed; (void)offset; (void)chain0; (void)in; (void)nin; (void)out; (void)nontemporal; (void)f;
  (void)fv;
#endif
}

#if defined(__AVX512F__)
constexpr bool kHaveFused = true;
#else
constexpr bool kHaveFused = false;
#endif

// out[i] = f(i) for i in [i0, i0 + n), 64-byte vectors from fv(i, V&) where
// possible: non-temporal stores when nontemporal and out + i0 is 64-byte aligned (no
// read-for-ownership of the output), plain unaligned stores otherwise.
template <typename T, typename F, typename FV>
FASTSAMP_VINLINE void stream_range(int64_t i0, int64_t n, T* __restrict out, bool nontemporal, F&& f, FV&& fv) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  const int64_t nv = n / L;
  if (nontemporal && reinterpret_cast<uintptr_t>(out + i0) % 64 == 0) {
    vector_pass<true>(i0, nv, out, fv);
  } else {
    vector_pass<false>(i0, nv, out, fv);
  }
  for (int64_t i = i0 + nv * L; i < i0 + n; ++i) out[i] = f(i);
}

// out[i] = f(i) over [0, N): a static split into 64-byte aligned pieces,
// 64-byte vectors computed by fv(i, V&) and written with non-temporal stores when nontemporal
// (no read-for-ownership of the output: 3-4 streams instead of 4-5).
template <typename T, typename F, typename FV>
void triad_stream(int64_t N, T* __restrict out, bool nontemporal, F&& f, FV&& fv) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  parallel(stream_threads(N), [&](int id, int nt) {
    // thread ranges on 16-vector boundaries of the output address
    const int64_t head = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(out) % 64) % 64) / sizeof(T);
    const int64_t h = std::min<int64_t>(head, N);
    const int64_t nv = (N - h) / L;  // whole vectors after the head
    const int64_t per = (nv + nt - 1) / nt;
    const int64_t v0 = std::min<int64_t>(nv, per * id), v1 = std::min<int64_t>(nv, per * (id + 1));
    if (id == 0)
      for (int64_t i = 0; i < h; ++i) out[i] = f(i);
    if (nontemporal) {
      vector_pass<true>(h + v0 * L, v1 - v0, out, fv);
    } else {
      vector_pass<false>(h + v0 * L, v1 - v0, out, fv);
    }
    if (id == nt - 1)
      for (int64_t i = h + nv * L; i < N; ++i) out[i] = f(i);
#if defined(__AVX512F__)
    _mm_sfence();
#endif
  });
}

// out[i] = f(i, xi_i) over the B * D elements, xi the standard normals: the rows of `noise` when
// given, else the Philox draw (seed, offset) of chains chain0 + b, fused into the pass
// (philox_fused) when D % 4 == 0 on AVX-512, by chunks of rows (philox_chunks) otherwise; non-temporal stores for
// outputs of kNonTemporalBytes and more. fv(i, V& v, V xi) is the 64-byte-vector form; `in` the nin input arrays to
// prefetch.
template <typename T, typename F, typename FV>
void noise_pass(const T* noise, int64_t B, int D, uint64_t seed, uint64_t offset, uint64_t chain0,
                const T* const* in, int nin, T* __restrict out, F&& f, FV&& fv) {
  using V = Vec64<T>;
  const bool nontemporal = B * D * static_cast<int64_t>(sizeof(T)) >= kNonTemporalBytes;
  if (noise) {
    triad_stream<T>(B * D, out, nontemporal, [=](int64_t i) { return f(i, noise[i]); },
                    [=](int64_t i, V& v) {
                      V nv;
                      std::memcpy(&nv, noise + i, sizeof(V));
                      fv(i, v, nv);
                    });
    return;
  }
  if (kHaveFused && D % 4 == 0) {
    philox_fused<T>(B * D, D, seed, offset, chain0, in, nin, out, nontemporal, f, fv);
    return;
  }
  philox_chunks<T>(B, D, seed, offset, chain0, in, nin, [&](int64_t b0, int64_t nb, const T* __restrict xi) {
    const int64_t i0 = b0 * D;  // xi[i - i0]: normal of flat element i of this chunk
    stream_range<T>(i0, nb * D, out, nontemporal, [=](int64_t i) { return f(i, xi[i - i0]); },
                    [=](int64_t i, V& v) {
                      V nv;
                      std::memcpy(&nv, xi + (i - i0), sizeof(V));
                      fv(i, v, nv);
                    });
  });
}

// The rows of (x_new, s_new), D elements each: (xp, sp) if take, else (x, s). memcpy (the outputs overlap no input):
// at a D known at compile time it is inlined as vector moves, where GCC 12 turned the copy loops it replaces into two
// library memmove calls per row (score_mh_accept at B = 2048, D = 8 on a Zen 1: 108 -> 90 us per call with its glue).
template <typename T>
FASTSAMP_VINLINE void select_row(bool take, const T* __restrict xp, const T* __restrict x, const T* __restrict sp,
                                 const T* __restrict s, int D, T* __restrict x_new, T* __restrict s_new) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(D);
  std::memcpy(x_new, take ? xp : x, bytes);
  std::memcpy(s_new, take ? sp : s, bytes);
}

// The MH decision of row b with log_u_b = log u_b: accept iff log u_b < log alpha (NaN rejects); writes
// log_alpha[b], accepted[b] and the rows of (x_new, s_new): (xp, sp) if accepted, else (x, s).
template <typename T>
FASTSAMP_VINLINE void accept_row(int64_t b, T log_alpha_b, T log_u_b, const T* __restrict xp,
                                 const T* __restrict x, const T* __restrict sp, const T* __restrict s, int D,
                                 T* __restrict x_new, T* __restrict s_new, uint8_t* __restrict accepted,
                                 T* __restrict log_alpha) {
  const bool acc = log_u_b < log_alpha_b;
  log_alpha[b] = log_alpha_b;
  accepted[b] = acc ? 1 : 0;
  select_row<T>(acc, xp, x, sp, s, D, x_new, s_new);
}

}  // namespace cpu
}  // namespace fastsamp
