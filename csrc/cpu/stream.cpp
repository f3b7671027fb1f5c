// Streaming / per-chain kernels: sde_step (2), guided_sde_step (2b), mala_propose (3), line_points (4),
// score_mh_accept (5), the HMC pieces (6a-6d) and em_step_logprob (9, forward and backward).
// See docs/backend-contract.md.
//
// Elementwise ops are single streaming passes (OpenMP static schedule). When
// the noise is drawn in-kernel, each thread walks a contiguous run of chunks of
// rows: the normals of a chunk are generated over flat groups g = b * J + j,
// 16 groups per SIMD block (GroupNormals in cpu/common.h), written row-major
// into an L1 buffer, and consumed by the same pass; the next chunk's inputs are
// prefetched while the normals are computed. When D % 4 == 0 (the row-major
// normals are exactly the group stream) the elementwise steps instead take the
// fused path (philox_fused): 64 normals at a time in registers, combined and
// stored at once, so that memory traffic and generator arithmetic overlap.
#include <cmath>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu/common.h"
#include "cpu/ops.h"

namespace fastsamp {
namespace cpu {
namespace {

// Rows per chunk of the in-kernel Philox path: a multiple of 16 (so that chunk
// starts are 64-byte aligned in the output and group blocks never straddle
// chunks of one thread) with about kChunkElems normals in the L1 buffer.
constexpr int64_t kChunkElems = 2048;
// Elements per thread below which a streaming call stays on the calling thread.
constexpr int64_t kStreamGrain = int64_t(1) << 15;
FASTSAMP_VINLINE int stream_threads(int64_t n_elems) { return threads_for(n_elems, kStreamGrain); }
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
  const size_t cap = static_cast<size_t>(64 * ((R * J + 15) / 16));
  parallel(stream_threads(B * D), [&](int id, int nt) {
    const int64_t per = (nchunk + nt - 1) / nt;
    const int64_t c0 = std::min<int64_t>(nchunk, per * id), c1 = std::min<int64_t>(nchunk, per * (id + 1));
    if (c0 < c1) {
      Buf<T> xi(cap);
      GroupNormals<T> gen(seed, offset, J, (static_cast<uint64_t>(c0 * R) + chain0) * J);
      typename GroupNormals<T>::State st;
      gen.prime(st);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t b0 = c * R;
        const int64_t nb = std::min<int64_t>(R, B - b0);
        // next chunk's input bytes [pf0, pf1) of each array, spread over the blocks
        const int64_t e0 = std::min(B, b0 + R) * D, e1 = std::min(B, b0 + 2 * R) * D;
        const char* const* inb = reinterpret_cast<const char* const*>(in);
        const int64_t pf0 = e0 * static_cast<int64_t>(sizeof(T)), pf1 = e1 * static_cast<int64_t>(sizeof(T));
        const int64_t nblk = (nb * J + 15) / 16;
        const int64_t lpb = ((pf1 - pf0 + 63) / 64 + nblk - 1) / nblk;  // lines per block
        rows_normals<T>(gen, st, nb, D, xi.p, [&](int64_t k, int64_t) {
          const int64_t o0 = pf0 + 64 * lpb * k, o1 = std::min(pf1, o0 + 64 * lpb);
          for (int a = 0; a < nin; ++a)
            for (int64_t o = o0; o < o1; o += 64) __builtin_prefetch(inb[a] + o, 0, 3);
        });
        f(b0, nb, static_cast<const T*>(xi.p));
      }
    }
  });
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
// and writes out with non-temporal stores (when out is 64-byte aligned), so the
// loads/stores of the memory streams are interleaved with the generator's ALU
// work at block grain instead of chunk grain (the generator is about as costly
// as the memory traffic, so overlapping the two is what matters). The `nin`
// input arrays are software-prefetched FASTSAMP_PF_BYTES ahead. f(i, xi) is the
// scalar form (partial last block).
template <typename T, typename F, typename FV>
void philox_fused(int64_t N, int D, uint64_t seed, uint64_t offset, uint64_t chain0, const T* const* in, int nin,
                  T* __restrict out, F&& f, FV&& fv) {
#if defined(__AVX512F__)
  using G = GroupNormals<T>;
  using V = typename G::Vec;
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  constexpr int KV = G::kVecs;
  const int J = D / 4;
  const int64_t nblk = (N + 63) / 64;
  const bool aligned = reinterpret_cast<uintptr_t>(out) % 64 == 0;
  parallel(stream_threads(N), [&](int id, int nt) {
    const int64_t per = (nblk + nt - 1) / nt;
    const int64_t k0 = std::min<int64_t>(nblk, per * id), k1 = std::min<int64_t>(nblk, per * (id + 1));
    if (k0 < k1) {
      G gen(seed, offset, J, static_cast<uint64_t>(k0) * 16 + chain0 * J);
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
        if (aligned) {
          for (int q = 0; q < KV; ++q) {
            V v;
            fv(i0 + q * L, v, xi[q]);
            if constexpr (sizeof(T) == 4) {
              _mm512_stream_ps(reinterpret_cast<float*>(out + i0 + q * L), reinterpret_cast<__m512&>(v));
            } else {
              _mm512_stream_pd(reinterpret_cast<double*>(out + i0 + q * L), reinterpret_cast<__m512d&>(v));
            }
          }
        } else {
          for (int q = 0; q < KV; ++q) {
            V v;
            fv(i0 + q * L, v, xi[q]);
            std::memcpy(out + i0 + q * L, &v, sizeof(V));
          }
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
  (void)N; (void)D; (void)seed; (void)offset; (void)chain0; (void)in; (void)nin; (void)out; (void)f; (void)fv;
#endif
}

#if defined(__AVX512F__)
constexpr bool kHaveFused = true;
#else
constexpr bool kHaveFused = false;
#endif

// f(b, xi, stride): xi[d * stride] is the normal of element (b, d).
// Given noise: rows of `noise`; else the Philox draw (seed, offset).
template <typename T, typename F>
void rows_with_noise(const T* noise, int64_t B, int D, uint64_t seed, uint64_t offset, uint64_t chain0,
                     const T* const* in, int nin, F&& f) {
  if (noise) {
    parallel_for(stream_threads(B * D), B, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) f(b, noise + b * D, 1);
    });
    return;
  }
  philox_chunks<T>(B, D, seed, offset, chain0, in, nin, [&](int64_t b0, int64_t nb, const T* xi) {
    for (int64_t r = 0; r < nb; ++r) f(b0 + r, xi + r * D, 1);
  });
}

// out[i] = f(i) for i in [i0, i0 + n), 64-byte vectors from fv(i, V&) where
// possible: non-temporal stores when out + i0 is 64-byte aligned (no
// read-for-ownership of the output), plain unaligned stores otherwise.
template <typename T, typename F, typename FV>
FASTSAMP_VINLINE void stream_range(int64_t i0, int64_t n, T* __restrict out, F&& f, FV&& fv) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  typedef T V __attribute__((vector_size(64)));
  const int64_t nv = n / L;
  const bool aligned = reinterpret_cast<uintptr_t>(out + i0) % 64 == 0;
  if (aligned) {
    for (int64_t k = 0; k < nv; ++k) {
      const int64_t i = i0 + k * L;
      V v;
      fv(i, v);
#if defined(__AVX512F__)
      if constexpr (sizeof(T) == 4) {
        _mm512_stream_ps(reinterpret_cast<float*>(out + i), reinterpret_cast<__m512&>(v));
      } else {
        _mm512_stream_pd(reinterpret_cast<double*>(out + i), reinterpret_cast<__m512d&>(v));
      }
#else
      std::memcpy(out + i, &v, sizeof(V));
#endif
    }
  } else {
    for (int64_t k = 0; k < nv; ++k) {
      const int64_t i = i0 + k * L;
      V v;
      fv(i, v);
      std::memcpy(out + i, &v, sizeof(V));
    }
  }
  for (int64_t i = i0 + nv * L; i < i0 + n; ++i) out[i] = f(i);
}

// ---------------------------------------------------------------- sde_step
// out[i] = f(i) over [0, N): OpenMP static split into 64-byte aligned pieces,
// 64-byte vectors computed by fv(i, V&) and written with non-temporal stores
// (no read-for-ownership of the output: 3-4 streams instead of 4-5).
template <typename T, typename F, typename FV>
void triad_stream(int64_t N, T* __restrict out, F&& f, FV&& fv) {
  constexpr int64_t L = 64 / static_cast<int64_t>(sizeof(T));
  typedef T V __attribute__((vector_size(64)));
  parallel(stream_threads(N), [&](int id, int nt) {
    // thread ranges on 16-vector boundaries of the output address
    const int64_t head = static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(out) % 64) % 64) / sizeof(T);
    const int64_t h = std::min<int64_t>(head, N);
    const int64_t nv = (N - h) / L;  // whole vectors after the head
    const int64_t per = (nv + nt - 1) / nt;
    const int64_t v0 = std::min<int64_t>(nv, per * id), v1 = std::min<int64_t>(nv, per * (id + 1));
    if (id == 0)
      for (int64_t i = 0; i < h; ++i) out[i] = f(i);
    for (int64_t vi = v0; vi < v1; ++vi) {
      const int64_t i = h + vi * L;
      V v;
      fv(i, v);
#if defined(__AVX512F__)
      if constexpr (sizeof(T) == 4) {
        _mm512_stream_ps(reinterpret_cast<float*>(out + i), reinterpret_cast<__m512&>(v));
      } else {
        _mm512_stream_pd(reinterpret_cast<double*>(out + i), reinterpret_cast<__m512d&>(v));
      }
#else
      std::memcpy(out + i, &v, sizeof(V));
#endif
    }
    if (id == nt - 1)
      for (int64_t i = h + nv * L; i < N; ++i) out[i] = f(i);
#if defined(__AVX512F__)
    _mm_sfence();
#endif
  });
}

// One template for the "affine + noise" steps: out = a x + c_s drift + c_n xi with
//   sde_step (GUIDED = false):        drift = score + extra          (extra may be null)
//   guided_sde_step (GUIDED = true):  drift = score + c_v v + c_diff (shift - score)
// (`extra` is v in the guided form; shift - score is formed first, c_diff can be ~1e5).
// GUIDED is a compile-time flag: the sde_step instantiations are unchanged.
template <typename T, int DC, bool GUIDED>
void affine_noise_impl(const T* __restrict x, const T* __restrict score, const T* __restrict extra,
                       const T* __restrict shift, const T* __restrict noise, int64_t B, int Drt, uint64_t seed,
                       uint64_t offset, uint64_t chain0, T a, T cs, T cv, T cdiff, T cn, T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  // drift of flat element i, scalar and 64-byte vector forms
  auto drift = [=](int64_t i) -> T {
    if constexpr (GUIDED) {
      return score[i] + cv * extra[i] + cdiff * (shift[i] - score[i]);
    } else {
      return extra ? score[i] + extra[i] : score[i];
    }
  };
  auto drift_v = [=](int64_t i, auto& sv) {
    using V = std::remove_reference_t<decltype(sv)>;
    std::memcpy(&sv, score + i, sizeof(V));
    if constexpr (GUIDED) {
      V vv, hv;
      std::memcpy(&vv, extra + i, sizeof(V));
      std::memcpy(&hv, shift + i, sizeof(V));
      sv = sv + cv * vv + cdiff * (hv - sv);
    } else if (extra) {
      V ev;
      std::memcpy(&ev, extra + i, sizeof(V));
      sv = sv + ev;
    }
  };
  if (noise) {
    // one streaming pass over B*D elements
    const int64_t N = B * D;
    triad_stream<T>(N, out, [=](int64_t i) { return a * x[i] + cs * drift(i) + cn * noise[i]; },
                    [=](int64_t i, auto& v) {
                      using V = std::remove_reference_t<decltype(v)>;
                      V xv, sv, nv;
                      std::memcpy(&xv, x + i, sizeof(V));
                      drift_v(i, sv);
                      std::memcpy(&nv, noise + i, sizeof(V));
                      v = a * xv + cs * sv + cn * nv;
                    });
    return;
  }
  const T* in[4] = {x, score, extra, shift};
  const int nin = GUIDED ? 4 : (extra ? 3 : 2);
  if (kHaveFused && D % 4 == 0) {
    philox_fused<T>(B * D, D, seed, offset, chain0, in, nin, out,
                    [=](int64_t i, T xi) { return a * x[i] + cs * drift(i) + cn * xi; },
                    [=](int64_t i, auto& v, auto xi) {
                      using V = std::remove_reference_t<decltype(v)>;
                      V xv, sv;
                      std::memcpy(&xv, x + i, sizeof(V));
                      drift_v(i, sv);
                      v = a * xv + cs * sv + cn * xi;
                    });
    return;
  }
  philox_chunks<T>(B, D, seed, offset, chain0, in, nin, [&](int64_t b0, int64_t nb, const T* __restrict xi) {
    const int64_t i0 = b0 * D;  // xi[i - i0]: normal of flat element i of this chunk
    stream_range<T>(i0, nb * D, out, [=](int64_t i) { return a * x[i] + cs * drift(i) + cn * xi[i - i0]; },
                    [=](int64_t i, auto& v) {
                      using V = std::remove_reference_t<decltype(v)>;
                      V xv, sv, nv;
                      std::memcpy(&xv, x + i, sizeof(V));
                      drift_v(i, sv);
                      std::memcpy(&nv, xi + (i - i0), sizeof(V));
                      v = a * xv + cs * sv + cn * nv;
                    });
  });
}

// ---------------------------------------------------------------- mala_propose
template <typename T, int DC>
void mala_propose_impl(const T* __restrict x, const T* __restrict score, const T* __restrict step,
                       const T* noise, int64_t B, int Drt, uint64_t seed, uint64_t offset, uint64_t chain0,
                       T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  const T* in[2] = {x, score};
  rows_with_noise<T>(noise, B, D, seed, offset, chain0, in, 2, [&](int64_t b, const T* __restrict xi, int stride) {
    const T e = step[b];
    const T q = std::sqrt(T(2) * e);
    const T* __restrict xr = x + b * D;
    const T* __restrict sr = score + b * D;
    T* __restrict o = out + b * D;
#pragma omp simd
    for (int d = 0; d < D; ++d) o[d] = xr[d] + e * sr[d] + q * xi[d * stride];
  });
}

// ---------------------------------------------------------------- momentum_refresh
template <typename T, int DC>
void momentum_refresh_impl(const T* __restrict p, T damp, T c, const T* noise, int64_t B, int Drt,
                           uint64_t seed, uint64_t offset, uint64_t chain0, T* __restrict out) {
  const int D = DC > 0 ? DC : Drt;
  if (noise) {
    const int64_t N = B * D;
    parallel_for(stream_threads(N), N, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) out[i] = damp * p[i] + c * noise[i];
    });
    return;
  }
  const T* in[1] = {p};
  if (kHaveFused && D % 4 == 0) {
    philox_fused<T>(B * D, D, seed, offset, chain0, in, 1, out, [=](int64_t i, T xi) { return damp * p[i] + c * xi; },
                    [=](int64_t i, auto& v, auto xi) {
                      using V = std::remove_reference_t<decltype(v)>;
                      V pv;
                      std::memcpy(&pv, p + i, sizeof(V));
                      v = damp * pv + c * xi;
                    });
    return;
  }
  philox_chunks<T>(B, D, seed, offset, chain0, in, 1, [&](int64_t b0, int64_t nb, const T* __restrict xi) {
    const int64_t i0 = b0 * D;
    stream_range<T>(i0, nb * D, out, [=](int64_t i) { return damp * p[i] + c * xi[i - i0]; },
                    [=](int64_t i, auto& v) {
                      using V = std::remove_reference_t<decltype(v)>;
                      V pv, nv;
                      std::memcpy(&pv, p + i, sizeof(V));
                      std::memcpy(&nv, xi + (i - i0), sizeof(V));
                      v = damp * pv + c * nv;
                    });
  });
}

// ---------------------------------------------------------------- line_points
template <typename T>
void line_points_impl(const T* __restrict x, const T* __restrict xp, int64_t B, int64_t D, int64_t n,
                      T* __restrict out) {
  const int64_t N = B * D;
  const T tn = static_cast<T>(n);
  parallel_for(stream_threads(N * (n - 1)), N, [&](int64_t e0, int64_t e1) {
    for (int64_t i = 1; i < n; ++i) {
      const T t = static_cast<T>(i) / tn;
      T* __restrict o = out + (i - 1) * N;
#pragma omp simd
      for (int64_t e = e0; e < e1; ++e) o[e] = x[e] + t * (xp[e] - x[e]);
    }
  });
}

// ---------------------------------------------------------------- helpers for accept ops
template <typename T>
FASTSAMP_VINLINE void select_row(bool acc, const T* __restrict a, const T* __restrict b, T* __restrict o,
                                 int D) {
  const T* __restrict src = acc ? a : b;
#pragma omp simd
  for (int d = 0; d < D; ++d) o[d] = src[d];
}

// ---------------------------------------------------------------- score_mh_accept
template <typename T, int DC>
void score_mh_accept_impl(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                          const T* __restrict sp, const T* __restrict step, const T* __restrict u,
                          const T* __restrict interior, int64_t m, int64_t B, int Drt, T* __restrict x_new,
                          T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
  const int D = DC > 0 ? DC : Drt;
  const int64_t N = B * D;
  const T tn = static_cast<T>(m + 1);
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T e = step[b];
      const T* __restrict xr = x + b * D;
      const T* __restrict xpr = xp + b * D;
      const T* __restrict sr = s + b * D;
      const T* __restrict spr = sp + b * D;
      T sd = 0, spd = 0, ff = 0, bb = 0;
#pragma omp simd reduction(+ : sd, spd, ff, bb)
      for (int d = 0; d < D; ++d) {
        const T dd = xpr[d] - xr[d];
        const T fwd = dd - e * sr[d];
        const T bwd = dd + e * spr[d];
        sd += sr[d] * dd;
        spd += spr[d] * dd;
        ff += fwd * fwd;
        bb += bwd * bwd;
      }
      T total = T(0.5) * (sd + spd);
      if (interior && m > 0) {
        T si = 0;
        for (int64_t i = 0; i < m; ++i) {
          const T* __restrict ir = interior + i * N + b * D;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int d = 0; d < D; ++d) acc += ir[d] * (xpr[d] - xr[d]);
          si += acc;
        }
        total = total + si;
      }
      const T la = total / tn + (ff - bb) / (T(4) * e);
      const bool acc = std::log(u[b]) < la;
      log_alpha[b] = la;
      accepted[b] = acc ? 1 : 0;
      select_row<T>(acc, xpr, xr, x_new + b * D, D);
      select_row<T>(acc, spr, sr, s_new + b * D, D);
    }
  });
}

// ---------------------------------------------------------------- HMC
template <typename T, int DC>
void leapfrog_impl(const T* __restrict x, const T* __restrict p, const T* __restrict s,
                   const T* __restrict step, int64_t B, int Drt, T* __restrict x_next, T* __restrict p_half) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T e = step[b];
      const T he = T(0.5) * e;
      const int64_t o = b * D;
#pragma omp simd
      for (int d = 0; d < D; ++d) {
        const T ph = p[o + d] + he * s[o + d];
        p_half[o + d] = ph;
        x_next[o + d] = x[o + d] + e * ph;
      }
    }
  });
}

template <typename T, int DC>
void leapfrog_finish_impl(const T* __restrict x, const T* __restrict xn, const T* __restrict ph,
                          const T* __restrict s, const T* __restrict sn, const T* __restrict step,
                          const T* __restrict dlp, int64_t B, int Drt, T* __restrict p_next,
                          T* __restrict dlp_next) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const T he = T(0.5) * step[b];
      const int64_t o = b * D;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int d = 0; d < D; ++d) {
        p_next[o + d] = ph[o + d] + he * sn[o + d];
        acc += (s[o + d] + sn[o + d]) * (xn[o + d] - x[o + d]);
      }
      dlp_next[b] = dlp[b] + T(0.5) * acc;
    }
  });
}

template <typename T, int DC>
void hmc_accept_impl(const T* __restrict x, const T* __restrict xp, const T* __restrict s,
                     const T* __restrict sp, const T* __restrict p, const T* __restrict pp,
                     const T* __restrict dlp, const T* __restrict u, int64_t B, int Drt, T* __restrict x_new,
                     T* __restrict s_new, uint8_t* __restrict accepted, T* __restrict log_alpha) {
  const int D = DC > 0 ? DC : Drt;
  parallel_for(stream_threads(B * D), B, [&](int64_t b_begin, int64_t b_end) {
    for (int64_t b = b_begin; b < b_end; ++b) {
      const int64_t o = b * D;
      T k0 = 0, k1 = 0;
#pragma omp simd reduction(+ : k0, k1)
      for (int d = 0; d < D; ++d) {
        k0 += p[o + d] * p[o + d];
        k1 += pp[o + d] * pp[o + d];
      }
      const T la = (dlp[b] - T(0.5) * k1) + T(0.5) * k0;
      const bool acc = std::log(u[b]) < la;
      log_alpha[b] = la;
      accepted[b] = acc ? 1 : 0;
      select_row<T>(acc, xp + o, x + o, x_new + o, D);
      select_row<T>(acc, sp + o, s + o, s_new + o, D);
    }
  });
}

// ---------------------------------------------------------------- em_step_logprob (9)
// f(std::true_type()) or f(std::false_type()): a runtime flag as a compile-time one.
template <typename F>
inline void dispatch_bool(bool v, F&& f) {
  if (v) {
    f(std::true_type());
  } else {
    f(std::false_type());
  }
}

// Euler–Maruyama transition with its forward / Brownian-bridge log-densities.
// Per call constants (host double, rounded to T once): s2 = σ²h, e2 = explore²,
// c = t/(t+h), b2 = s2 c (0: no log_pb), inv_s2 = 1/s2, inv_b2 = 1/b2, q = sqrt(s2 + e2)
// (the sampling scale without log_var), lpf0 = D log(2π s2), lpb0 = D log(2π b2).
// With log_var, log(2π s²) = log(2π s2) + log_var: the row sum of log_var is
// accumulated and no log is taken per element.
template <typename T>
struct EmConst {
  T h, s2, e2, c, inv_s2, inv_b2, q, lpf0, lpb0;
  bool has_pb;
  EmConst(int64_t D, double h_, double s2_, double e2_, double c_, double b2_)
      : h(static_cast<T>(h_)), s2(static_cast<T>(s2_)), e2(static_cast<T>(e2_)), c(static_cast<T>(c_)),
        inv_s2(static_cast<T>(1.0 / s2_)), inv_b2(static_cast<T>(b2_ != 0.0 ? 1.0 / b2_ : 0.0)),
        q(static_cast<T>(std::sqrt(s2_ + e2_))),
        lpf0(static_cast<T>(static_cast<double>(D) * std::log(kTwoPi * s2_))),
        lpb0(static_cast<T>(b2_ != 0.0 ? static_cast<double>(D) * std::log(kTwoPi * b2_) : 0.0)),
        has_pb(b2_ != 0.0) {}
};

// Forward terms of flat element i: {v²/s² + log_var (v² without log_var: 1/s2 is applied to the
// row sum), u²}; writes x_next = x + h drift + sqrt(s² + e2) xi unless GIVEN. A free function
// with its pointers as arguments (not a lambda's captures): inside `omp simd` loops gcc then sees
// them loop-invariant (captures are reloaded, even gathered, per lane).
template <typename T>
struct EmTerms {
  T v, u;
};
template <typename T, bool HAS_LV, bool GIVEN>
FASTSAMP_VINLINE EmTerms<T> em_forward_elem(const T* __restrict x, const T* __restrict drift,
                                            const T* __restrict lv, const T* __restrict xn, T* __restrict y,
                                            int64_t i, T xi, T h, T s2, T e2, T c, T q) {
  const T mean = x[i] + h * drift[i];
  T var = s2;
  if constexpr (HAS_LV) var = s2 * vm::exp<T>(lv[i]);
  T yv;
  if constexpr (GIVEN) {
    yv = xn[i];
  } else {
    yv = mean + (HAS_LV ? std::sqrt(var + e2) : q) * xi;
    y[i] = yv;
  }
  const T v = yv - mean;
  const T u = x[i] - c * yv;
  if constexpr (HAS_LV) {
    return {v * v / var + lv[i], u * u};
  } else {
    return {v * v, u * u};
  }
}

// Forward. GIVEN: x_next is read (evaluate the transition); otherwise it is sampled with xi the
// rows' normals (rows of the noise tensor (HAS_NOISE) or of the Philox chunk buffer of
// philox_chunks: the same body either way). One pass over the data, x_next and the terms in
// registers. Small D (< one 64-byte vector W): RB = W / D consecutive rows form one flat vector,
// whose terms go through a W-element stack buffer for the per-row sums (no per-row loop of D
// iterations and horizontal sums).
template <typename T, int DC, bool HAS_LV, bool GIVEN, bool HAS_NOISE>
void em_step_logprob_impl(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                          const T* __restrict xn, const T* __restrict noise, int64_t B, int Drt, uint64_t seed,
                          uint64_t offset, uint64_t chain0, const EmConst<T> k, T* __restrict y, T* __restrict log_pf,
                          T* __restrict log_pb) {
  const int D = DC > 0 ? DC : Drt;
  constexpr int W = Lanes<T>::W;
  constexpr int RB = (DC > 0 && DC < W) ? W / DC : 1;
  const T h = k.h, s2 = k.s2, e2 = k.e2, c = k.c, q = k.q;
  const T inv_s2 = k.inv_s2, inv_b2 = k.inv_b2, lpf0 = k.lpf0, lpb0 = k.lpb0;
  const bool has_pb = k.has_pb;
  // rows b0 .. b0+nb-1, their normals at xs[(b - b0) * D + d] (unused when GIVEN)
  auto rows = [x, drift, lv, xn, y, log_pf, log_pb, D, h, s2, e2, c, q, inv_s2, inv_b2, lpf0, lpb0, has_pb](
                  int64_t b0, int64_t nb, const T* __restrict xs) {
    const T* __restrict xp = x;
    const T* __restrict dp = drift;
    const T* __restrict lp = lv;
    const T* __restrict np = xn;
    T* __restrict yp = y;
    auto finish = [&](int64_t b, T sv, T su) {
      log_pf[b] = T(-0.5) * ((HAS_LV ? sv : sv * inv_s2) + lpf0);
      log_pb[b] = has_pb ? T(-0.5) * (su * inv_b2 + lpb0) : T(0);
    };
    int64_t r = 0;
    if constexpr (RB > 1) {
      // `rows` (<= RB) rows from row r: terms through the buffer, then per-row sums in order (the
      // last rows of B take the same arithmetic as full groups: results do not depend on B)
      auto group = [&](int64_t r, int rows) __attribute__((always_inline)) {
        const int64_t o = (b0 + r) * D;
        const T* __restrict xr = GIVEN ? nullptr : xs + r * D;
        const int ne = rows * DC;
        alignas(64) T tv[W], tu[W];
#pragma omp simd
        for (int e = 0; e < ne; ++e) {
          const EmTerms<T> t = em_forward_elem<T, HAS_LV, GIVEN>(xp, dp, lp, np, yp, o + e, GIVEN ? T(0) : xr[e],
                                                                 h, s2, e2, c, q);
          tv[e] = t.v;
          tu[e] = t.u;
        }
        for (int g = 0; g < rows; ++g) {
          T sv = 0, su = 0;
          for (int d = 0; d < DC; ++d) {
            sv += tv[g * DC + d];
            su += tu[g * DC + d];
          }
          finish(b0 + r + g, sv, su);
        }
      };
      for (; r + RB <= nb; r += RB) group(r, RB);
      if (r < nb) group(r, static_cast<int>(nb - r));
      return;
    }
    for (; r < nb; ++r) {
      const int64_t o = (b0 + r) * D;
      const T* __restrict xr = GIVEN ? nullptr : xs + r * D;
      T sv = 0, su = 0;
#pragma omp simd reduction(+ : sv, su)
      for (int d = 0; d < D; ++d) {
        const EmTerms<T> t = em_forward_elem<T, HAS_LV, GIVEN>(xp, dp, lp, np, yp, o + d, GIVEN ? T(0) : xr[d],
                                                               h, s2, e2, c, q);
        sv += t.v;
        su += t.u;
      }
      finish(b0 + r, sv, su);
    }
  };
  if constexpr (GIVEN || HAS_NOISE) {
    const int64_t groups = (B + RB - 1) / RB;
    parallel_for(stream_threads(B * D), groups, [&](int64_t g_begin, int64_t g_end) {
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int64_t b0 = g * RB;
        rows(b0, std::min<int64_t>(RB, B - b0), HAS_NOISE ? noise + b0 * D : nullptr);
      }
    });
  } else {
    // chunks of a multiple of 16 rows (so of RB): whole vectors but for the last rows of B
    const T* in[3] = {x, drift, lv};
    philox_chunks<T>(B, D, seed, offset, chain0, in, HAS_LV ? 3 : 2,
                     [&](int64_t b0, int64_t nb, const T* __restrict xs) { rows(b0, nb, xs); });
  }
}

// Backward of flat element i (elementwise, row scalars ga = g_pf, gw = g_pb / b2, 0 without
// log_pb): with v = x_next − x − h drift, u = x − c x_next, a = g_pf v / s², w = g_pb u / b2,
// G = g_x_next − a + c w (g_x_next = 0 without HAS_GXN): g_x = a − w + R G, g_drift = h (a + R G),
// g_log_var = g_pf (½ v²/s² − ½) + R G ½ s² v / (s² + e2), g_x_next = G (WANT_GXN); R = REPARAM.
template <typename T, bool HAS_LV, bool REPARAM, bool WANT_GXN, bool HAS_GXN>
FASTSAMP_VINLINE void em_backward_elem(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                                       const T* __restrict xn, const T* __restrict gxn, T* __restrict gx,
                                       T* __restrict gdr, T* __restrict glv, T* __restrict gxo, int64_t i, T ga,
                                       T gw, T h, T s2, T e2, T c, T inv_s2) {
  const T xv = x[i], yv = xn[i];
  const T v = yv - (xv + h * drift[i]);
  T var = s2;
  if constexpr (HAS_LV) var = s2 * vm::exp<T>(lv[i]);
  T a = HAS_LV ? ga * v / var : (ga * inv_s2) * v;
  const T w = gw * (xv - c * yv);
  T g = c * w - a;
  if constexpr (HAS_GXN) g += gxn[i];
  T gxv = a - w;
  if constexpr (REPARAM) {
    gxv += g;
    a += g;
  }
  gx[i] = gxv;
  gdr[i] = h * a;
  if constexpr (HAS_LV) {
    T gl = ga * (T(0.5) * v * v / var - T(0.5));
    if constexpr (REPARAM) gl += g * T(0.5) * var * v / (var + e2);
    glv[i] = gl;
  }
  if constexpr (WANT_GXN) gxo[i] = g;
}

// Backward: rows in groups of RB (small D: one flat vector, the row scalars spread over its lanes
// first; else one row per group).
template <typename T, int DC, bool HAS_LV, bool REPARAM, bool WANT_GXN>
void em_step_logprob_backward_impl(const T* __restrict x, const T* __restrict drift, const T* __restrict lv,
                                   const T* __restrict xn, const T* __restrict gxn, const T* __restrict gpf,
                                   const T* __restrict gpb, int64_t B, int Drt, const EmConst<T> k,
                                   T* __restrict gx, T* __restrict gdr, T* __restrict glv,
                                   T* __restrict gxo) {
  const int D = DC > 0 ? DC : Drt;
  constexpr int W = Lanes<T>::W;
  constexpr int RB = (DC > 0 && DC < W) ? W / DC : 1;
  const T h = k.h, s2 = k.s2, e2 = k.e2, c = k.c, inv_s2 = k.inv_s2, inv_b2 = k.inv_b2;
  const bool has_pb = k.has_pb;
  const int64_t groups = (B + RB - 1) / RB;
  // (a null g_x_next as a compile-time flag: a runtime test inside the loop costs 2-3x)
  dispatch_bool(gxn != nullptr, [&](auto has_gxn) {
    constexpr bool HAS_GXN = decltype(has_gxn)::value;
    parallel_for(stream_threads(B * D), groups, [&](int64_t gi_begin, int64_t gi_end) {
      for (int64_t gi = gi_begin; gi < gi_end; ++gi) {
        const int64_t b0 = gi * RB;
        if (RB > 1 && b0 + RB <= B) {
          alignas(64) T gae[W], gwe[W];
          for (int e = 0; e < W; ++e) {
            const int64_t b = b0 + e / (DC > 0 ? DC : 1);
            gae[e] = gpf[b];
            gwe[e] = has_pb ? gpb[b] * inv_b2 : T(0);
          }
          const int64_t o = b0 * D;
#pragma omp simd
          for (int e = 0; e < W; ++e)
            em_backward_elem<T, HAS_LV, REPARAM, WANT_GXN, HAS_GXN>(x, drift, lv, xn, gxn, gx, gdr, glv, gxo, o + e,
                                                                    gae[e], gwe[e], h, s2, e2, c, inv_s2);
        } else {
          for (int64_t b = b0; b < std::min<int64_t>(B, b0 + RB); ++b) {
            const T ga = gpf[b], gw = has_pb ? gpb[b] * inv_b2 : T(0);
            const int64_t o = b * D;
#pragma omp simd
            for (int d = 0; d < D; ++d)
              em_backward_elem<T, HAS_LV, REPARAM, WANT_GXN, HAS_GXN>(x, drift, lv, xn, gxn, gx, gdr, glv, gxo, o + d,
                                                                      ga, gw, h, s2, e2, c, inv_s2);
          }
        }
      }
    });
  });
}

}  // namespace

// ---------------------------------------------------------------- entry points
void sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise, int64_t B,
              int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double a, double c_s, double c_n,
              uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      affine_noise_impl<T, decltype(dc)::value, false>(
          ptr<T>(x), ptr<T>(score), ptr<T>(extra_drift), nullptr, ptr<T>(noise), B, static_cast<int>(D), seed,
          offset, chain_offset, static_cast<T>(a), static_cast<T>(c_s), T(0), T(0), static_cast<T>(c_n), ptr<T>(out));
    });
  });
}

void guided_sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t score_shift, uintptr_t v,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double a, double c_s, double c_v, double c_diff, double c_n, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      affine_noise_impl<T, decltype(dc)::value, true>(
          ptr<T>(x), ptr<T>(score), ptr<T>(v), ptr<T>(score_shift), ptr<T>(noise), B, static_cast<int>(D), seed,
          offset, chain_offset, static_cast<T>(a), static_cast<T>(c_s), static_cast<T>(c_v), static_cast<T>(c_diff),
          static_cast<T>(c_n), ptr<T>(out));
    });
  });
}

void mala_propose(int dtype, uintptr_t x, uintptr_t score, uintptr_t step_size, uintptr_t noise, int64_t B,
                  int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      mala_propose_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(score), ptr<T>(step_size), ptr<T>(noise),
                                                B, static_cast<int>(D), seed, offset, chain_offset,
                                                ptr<T>(out));
    });
  });
}

void line_points(int dtype, uintptr_t x, uintptr_t x_prop, int64_t B, int64_t D, int64_t n, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    line_points_impl<T>(ptr<T>(x), ptr<T>(x_prop), B, D, n, ptr<T>(out));
  });
}

void score_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                     uintptr_t step_size, uintptr_t u, uintptr_t interior, int64_t m, int64_t B, int64_t D,
                     uintptr_t x_new, uintptr_t score_new, uintptr_t accepted, uintptr_t log_alpha) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      score_mh_accept_impl<T, decltype(dc)::value>(
          ptr<T>(x), ptr<T>(x_prop), ptr<T>(score), ptr<T>(score_prop), ptr<T>(step_size), ptr<T>(u),
          ptr<T>(interior), m, B, static_cast<int>(D), ptr<T>(x_new), ptr<T>(score_new),
          ptr<uint8_t>(accepted), ptr<T>(log_alpha));
    });
  });
}

void leapfrog(int dtype, uintptr_t x, uintptr_t p, uintptr_t score, uintptr_t step_size, int64_t B,
              int64_t D, uintptr_t x_next, uintptr_t p_half) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      leapfrog_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(p), ptr<T>(score), ptr<T>(step_size), B,
                                            static_cast<int>(D), ptr<T>(x_next), ptr<T>(p_half));
    });
  });
}

void leapfrog_finish(int dtype, uintptr_t x, uintptr_t x_next, uintptr_t p_half, uintptr_t score,
                     uintptr_t score_next, uintptr_t step_size, uintptr_t delta_logp, int64_t B, int64_t D,
                     uintptr_t p_next, uintptr_t delta_logp_next) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      leapfrog_finish_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(x_next), ptr<T>(p_half), ptr<T>(score),
                                                   ptr<T>(score_next), ptr<T>(step_size), ptr<T>(delta_logp),
                                                   B, static_cast<int>(D), ptr<T>(p_next),
                                                   ptr<T>(delta_logp_next));
    });
  });
}

void hmc_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop, uintptr_t p,
                uintptr_t p_prop, uintptr_t delta_logp, uintptr_t u, int64_t B, int64_t D, uintptr_t x_new,
                uintptr_t score_new, uintptr_t accepted, uintptr_t log_alpha) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_d(D, [&](auto dc) {
      hmc_accept_impl<T, decltype(dc)::value>(ptr<T>(x), ptr<T>(x_prop), ptr<T>(score), ptr<T>(score_prop),
                                              ptr<T>(p), ptr<T>(p_prop), ptr<T>(delta_logp), ptr<T>(u), B,
                                              static_cast<int>(D), ptr<T>(x_new), ptr<T>(score_new),
                                              ptr<uint8_t>(accepted), ptr<T>(log_alpha));
    });
  });
}

void momentum_refresh(int dtype, uintptr_t p, double damping, uintptr_t noise, int64_t B, int64_t D,
                      uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T damp = static_cast<T>(damping);
    const T c = static_cast<T>(std::sqrt(1.0 - damping * damping));
    dispatch_d(D, [&](auto dc) {
      momentum_refresh_impl<T, decltype(dc)::value>(ptr<T>(p), damp, c, ptr<T>(noise), B,
                                                    static_cast<int>(D), seed, offset, chain_offset,
                                                    ptr<T>(out));
    });
  });
}

void em_step_logprob(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double h, double s2, double e2, double c, double b2, uintptr_t y, uintptr_t log_pf, uintptr_t log_pb) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const EmConst<T> k(D, h, s2, e2, c, b2);
    const int mode = x_next ? 0 : (noise ? 1 : 2);  // given / noise tensor / Philox
    dispatch_d(D, [&](auto dc) {
      dispatch_bool(log_var != 0, [&](auto lvc) {
        constexpr int DC = decltype(dc)::value;
        constexpr bool LV = decltype(lvc)::value;
        auto run = [&](auto given, auto has_noise) {
          em_step_logprob_impl<T, DC, LV, decltype(given)::value, decltype(has_noise)::value>(
              ptr<T>(x), ptr<T>(drift), ptr<T>(log_var), ptr<T>(x_next), ptr<T>(noise), B, static_cast<int>(D),
              seed, offset, chain_offset, k, ptr<T>(y), ptr<T>(log_pf), ptr<T>(log_pb));
        };
        if (mode == 0) {
          run(std::true_type(), std::false_type());
        } else if (mode == 1) {
          run(std::false_type(), std::true_type());
        } else {
          run(std::false_type(), std::false_type());
        }
      });
    });
  });
}

void em_step_logprob_backward(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                              uintptr_t g_x_next, uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D,
                              double h, double s2, double e2, double c, double b2, bool reparam, uintptr_t g_x,
                              uintptr_t g_drift, uintptr_t g_log_var, uintptr_t g_x_next_out) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const EmConst<T> k(D, h, s2, e2, c, b2);
    dispatch_d(D, [&](auto dc) {
      dispatch_bool(log_var != 0, [&](auto lvc) {
        constexpr int DC = decltype(dc)::value;
        constexpr bool LV = decltype(lvc)::value;
        auto run = [&](auto rep, auto want) {
          em_step_logprob_backward_impl<T, DC, LV, decltype(rep)::value, decltype(want)::value>(
              ptr<T>(x), ptr<T>(drift), ptr<T>(log_var), ptr<T>(x_next), ptr<T>(g_x_next), ptr<T>(g_log_pf),
              ptr<T>(g_log_pb), B, static_cast<int>(D), k, ptr<T>(g_x), ptr<T>(g_drift), ptr<T>(g_log_var),
              ptr<T>(g_x_next_out));
        };
        dispatch_bool(reparam, [&](auto rep) {
          dispatch_bool(g_x_next_out != 0, [&](auto want) { run(rep, want); });
        });
      });
    });
  });
}

}  // namespace cpu
}  // namespace fastsamp
