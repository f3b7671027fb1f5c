// The normals of docs/backend-contract.md drawn inside the kernels: GroupNormals (Philox and Box–Muller vectorised
// across 16 groups of 4 normals; AVX-512, AVX2 and lane-loop paths), rows_normals and draw_rows_normals. Part of
// cpu/common.h, which includes it; the lane loops it falls back to are there.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/common.h"
#include "cpu/philox_simd.h"

namespace fastsamp {
namespace cpu {

// ---------------------------------------------------------------- flat-group normals
// The normals of a draw as a stream over flat groups g = b * J + j (J = ceil(D/4)):
// group g holds xi[b, 4j .. 4j+3] (Philox counter (j, b, offset)). 16 consecutive
// groups are computed at a time, one per SIMD lane, and written transposed,
// group-major: out[4 * l + q] is xi[b, 4j + q] of group g + l. When D % 4 == 0
// that is exactly the row-major (B, D) layout of the normals.
//
// AVX-512: the Philox of 16 groups runs in two registers of 8 (one group per 64-bit
// lane, cpu/philox_simd.h). The Box–Muller uses one log/sqrt and one sincos per pair of
// words, vectorised with vm::vneg2log_unit / vm::vsincos; its four stages are
// interleaved with the Philox rounds of the *next* 16 groups (software pipeline)
// so that the multiply-bound Philox and the FMA-bound Box–Muller overlap.
// AVX2: the Philox in four registers of 4 groups, two at a time, then the
// Box–Muller on 32-byte vectors (the same formulas, and with FMA the same bits;
// about 3x (double) to 5x (float) the lane loops on a Zen 3). Elsewhere: the
// lane loops of philox_lanes / box_muller above (whose scalar log and sincos do
// not vectorise; the same normals up to the last bit).
typedef uint32_t U32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));
typedef uint32_t U32x8 __attribute__((vector_size(32)));
typedef uint32_t U32x4 __attribute__((vector_size(16)));
typedef float F32x16 __attribute__((vector_size(64)));
typedef double F64x8 __attribute__((vector_size(64)));
typedef int64_t I64x8 __attribute__((vector_size(64)));

template <typename T>
struct GroupNormals {
  uint32_t k0[10], k1[10];
  uint32_t o0, o1;
  uint32_t c0r0, c1r0, o1k;  // round-0 terms common to all lanes
  uint32_t J, jstep, bstep;
  U32x16 jv, bv;  // counter words (j, b) of the next 16 groups

  GroupNormals(uint64_t seed, uint64_t offset, int64_t J_, uint64_t g0) {
    philox_round_keys(seed, k0, k1);
    o0 = static_cast<uint32_t>(offset);
    o1 = static_cast<uint32_t>(offset >> 32);
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * o0;
    c0r0 = static_cast<uint32_t>(p1 >> 32) ^ k0[0];
    c1r0 = static_cast<uint32_t>(p1);
    o1k = o1 ^ k1[0];
    J = static_cast<uint32_t>(J_);
    jstep = 16u % J;
    bstep = 16u / J;
    for (int l = 0; l < 16; ++l) {
      const uint64_t g = g0 + static_cast<uint64_t>(l);
      jv[l] = static_cast<uint32_t>(g % J);
      bv[l] = static_cast<uint32_t>(g / J);
    }
  }

  // (j, b) of the 16 groups after the current ones.
  FASTSAMP_VINLINE void advance() {
    jv += jstep;
    bv += bstep;
    // m: -1 where the lane passed the end of its row. Compared a register at a time: GCC makes a 64-byte vector's
    // compare 16 scalar ones without AVX-512 (a sixth of the AVX2 normals' time), and signed, which AVX2 has
    // (j < J + 16 < 2^31)
    typedef int32_t INative __attribute__((vector_size(FASTSAMP_NATIVE_BYTES)));
    constexpr int kN = static_cast<int>(sizeof(INative));
    I32x16 m;
    for (int h = 0; h < 64 / kN; ++h) {
      INative j;
      std::memcpy(&j, reinterpret_cast<const char*>(&jv) + kN * h, kN);
      const INative mh = j >= static_cast<int32_t>(J);
      std::memcpy(reinterpret_cast<char*>(&m) + kN * h, &mh, kN);
    }
    jv -= J & reinterpret_cast<U32x16>(m);
    bv -= reinterpret_cast<U32x16>(m);
  }

#if defined(__AVX512F__) || defined(__AVX2__)
  using State = PhiloxState<16 / kPhiloxLanes>;

  // Philox round `round` (1 .. 9).
  FASTSAMP_VINLINE void round(State& st, int round) const { st.round(philox_key(k0[round]), philox_key(k1[round])); }

  // Round 0 for the current 16 groups (then moves on to the next 16).
  FASTSAMP_VINLINE void start(State& st) {
    const PhiloxReg m0 = philox_set(kPhiloxM0);
    const __m512i jw = reinterpret_cast<__m512i>(jv), bw = reinterpret_cast<__m512i>(bv);
#pragma GCC unroll 4
    for (int h = 0; h < 16 / kPhiloxLanes; ++h) {
      const PhiloxReg p0 = philox_mul(philox_widen(jw, h), m0);
      // round 0: c1, c2, c3 of the counter are the same in every lane
      st.c[0][h] = philox_xor(philox_widen(bw, h), philox_set(c0r0));
      st.c[1][h] = philox_set(c1r0);
      st.c[2][h] = philox_xor(philox_hi(p0), philox_set(o1k));
      st.c[3][h] = p0;
    }
    advance();
  }
#endif
#if defined(__AVX512F__)
  // The 4 Philox words (after round 9), lane l = group l.
  static FASTSAMP_VINLINE void words(const State& st, U32x16* r) {
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) r[k] = reinterpret_cast<U32x16>(philox_words(st.c[k][0], st.c[k][1]));
  }
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
  // Box–Muller on vectors of words (or of their exact values as T), NP pairs (w[2p], w[2p+1]):
  // n[2p] = rad cos ang, n[2p+1] = rad sin ang. tick(i), i = 0 .. kTicks - 1, is
  // called between the stages (the next block's Philox rounds go there).
  static constexpr int kTicks = 5;
  template <typename V, int NP, typename U, typename Tick>
  static FASTSAMP_VINLINE void box_muller_v(const U* w, V* n, Tick&& tick) {
    V u1[NP], ang[NP], l[NP], rad[NP], s[NP], c[NP];
    for (int p = 0; p < NP; ++p) {
      u1[p] = __builtin_convertvector(w[2 * p], V) * T(2.3283064365386963e-10) + T(1.1641532182693481e-10);
      // 2π (r 2^-32) = r (2π 2^-32) exactly rounded alike: the 2^-32 scalings are exact
      ang[p] = __builtin_convertvector(w[2 * p + 1], V) *
               static_cast<T>(static_cast<T>(kTwoPi) * T(2.3283064365386963e-10));
    }
    tick(0);
    for (int p = 0; p < NP; ++p) l[p] = vm::vneg2log_unit<T>(u1[p]);
    tick(1);
    for (int p = 0; p < NP; ++p) rad[p] = vm::vsqrt(l[p]);
    tick(2);
    for (int p = 0; p < NP; ++p) vm::vsincos<T>(ang[p], &s[p], &c[p]);
    tick(3);
    for (int p = 0; p < NP; ++p) {
      n[2 * p] = rad[p] * c[p];
      n[2 * p + 1] = rad[p] * s[p];
    }
    tick(4);
  }

  // Philox state of the current 16 groups, all rounds done (pipeline prologue; AVX2's whole Philox).
  FASTSAMP_VINLINE void prime(State& st) {
    start(st);
    st.template rounds_from<2>(1, k0, k1);
  }
#endif
#if defined(__AVX2__) && !defined(__AVX512F__)
  // 64 normals of the 16 groups whose Philox state is `st` (round 9 done) into out (64-byte aligned), then the
  // Philox of the next 16 groups into `st`. On vectors of one AVX2 register: GCC keeps 64-byte vectors in memory
  // without AVX-512, and 16 registers leave no room for the next block's rounds between the Box–Muller stages.
  FASTSAMP_VINLINE void next(State& st, T* __restrict out) {
    auto no_tick = [](int) {};
    if constexpr (sizeof(T) == 4) {
      typedef float F32x8 __attribute__((vector_size(32)));
      // word k of the groups of registers 2q, 2q + 1 in one vector, in-lane: groups 8q + (0 1 4 5 | 2 3 6 7)
      U32x8 wq[8];
      for (int q = 0; q < 2; ++q)
        for (int k = 0; k < 4; ++k)
          wq[4 * q + k] = reinterpret_cast<U32x8>(philox_words_inlane(st.c[k][2 * q], st.c[k][2 * q + 1]));
      prime(st);
      // all 32 pairs in one Box–Muller: four independent chains of its polynomials, not two
      F32x8 nq[8];
      box_muller_v<F32x8, 4>(wq, nq, no_tick);
      for (int q = 0; q < 2; ++q) {
        const F32x8* n = nq + 4 * q;
        // out[4 g + k] = n[k][g]: 4 x 8 transpose to u0 = (g0 | g2), u1 = (g1 | g3), u2 = (g4 | g6), u3 = (g5 | g7)
        const __m256 n0 = reinterpret_cast<__m256>(n[0]), n1 = reinterpret_cast<__m256>(n[1]);
        const __m256 n2 = reinterpret_cast<__m256>(n[2]), n3 = reinterpret_cast<__m256>(n[3]);
        const __m256 t0 = _mm256_unpacklo_ps(n0, n1), t1 = _mm256_unpackhi_ps(n0, n1);
        const __m256 t2 = _mm256_unpacklo_ps(n2, n3), t3 = _mm256_unpackhi_ps(n2, n3);
        const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        float* o = reinterpret_cast<float*>(out) + 32 * q;
        for (int h = 0; h < 2; ++h) {  // 128-bit halves stored apart: no lane-crossing shuffle (vperm2f128)
          _mm_store_ps(o + 16 * h, _mm256_castps256_ps128(u[2 * h]));
          _mm_store_ps(o + 16 * h + 4, _mm256_castps256_ps128(u[2 * h + 1]));
          _mm_store_ps(o + 16 * h + 8, _mm256_extractf128_ps(u[2 * h], 1));
          _mm_store_ps(o + 16 * h + 12, _mm256_extractf128_ps(u[2 * h + 1], 1));
        }
      }
    } else {
      typedef double F64x4 __attribute__((vector_size(32)));
      // word k of register q's 4 groups as doubles, straight from the 64-bit lanes
      F64x4 wd[4][4];
      for (int q = 0; q < 4; ++q)
        for (int k = 0; k < 4; ++k) wd[q][k] = reinterpret_cast<F64x4>(philox_words_f64(st.c[k][q]));
      prime(st);
      for (int q = 0; q < 4; ++q) {  // groups 4q .. 4q + 3
        F64x4 n[4];
        box_muller_v<F64x4, 2>(wd[q], n, no_tick);
        // out[4 g + k] = n[k][g]: 4 x 4 transpose
        const __m256d n0 = reinterpret_cast<__m256d>(n[0]), n1 = reinterpret_cast<__m256d>(n[1]);
        const __m256d n2 = reinterpret_cast<__m256d>(n[2]), n3 = reinterpret_cast<__m256d>(n[3]);
        const __m256d t0 = _mm256_unpacklo_pd(n0, n1), t1 = _mm256_unpackhi_pd(n0, n1);
        const __m256d t2 = _mm256_unpacklo_pd(n2, n3), t3 = _mm256_unpackhi_pd(n2, n3);
        double* o = reinterpret_cast<double*>(out) + 16 * q;  // 128-bit halves stored apart, as for float
        _mm_store_pd(o, _mm256_castpd256_pd128(t0));
        _mm_store_pd(o + 2, _mm256_castpd256_pd128(t2));
        _mm_store_pd(o + 4, _mm256_castpd256_pd128(t1));
        _mm_store_pd(o + 6, _mm256_castpd256_pd128(t3));
        _mm_store_pd(o + 8, _mm256_extractf128_pd(t0, 1));
        _mm_store_pd(o + 10, _mm256_extractf128_pd(t2, 1));
        _mm_store_pd(o + 12, _mm256_extractf128_pd(t1, 1));
        _mm_store_pd(o + 14, _mm256_extractf128_pd(t3, 1));
      }
    }
  }
#endif
#if defined(__AVX512F__)

  // 64-byte vectors of T: 64 normals are kVecs of them.
  typedef T Vec __attribute__((vector_size(64)));
  static constexpr int kVecs = static_cast<int>(sizeof(T)) == 4 ? 4 : 8;

  // 64 normals of the 16 groups whose Philox state is `st` (round 9 done) into
  // out (64-byte aligned), while running the Philox of the next 16 groups into `st`.
  FASTSAMP_VINLINE void next(State& st, T* __restrict out) {
    Vec n[kVecs];
    next_v(st, n);
    Vec* o = reinterpret_cast<Vec*>(out);
    for (int k = 0; k < kVecs; ++k) o[k] = n[k];
  }

  // The same 64 normals as kVecs vectors (o[k] holds normals 64/kVecs * k ..).
  FASTSAMP_VINLINE void next_v(State& st, Vec* __restrict o) {
    U32x16 r[4];
    words(st, r);
    start(st);
    // rounds 1..9 of the next block spread evenly over the ticks
    auto tick = [&](int i) {
#pragma GCC unroll 9
      for (int rr = 1; rr < 10; ++rr)
        if ((rr - 1) * kTicks / 9 == i) round(st, rr);
    };
    if constexpr (sizeof(T) == 4) {
      F32x16 n[4];
      box_muller_v<F32x16, 2>(r, n, tick);
      const I32x16 ilo = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
      const I32x16 ihi = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
      const F32x16 t0 = __builtin_shuffle(n[0], n[1], ilo), t1 = __builtin_shuffle(n[0], n[1], ihi);
      const F32x16 t2 = __builtin_shuffle(n[2], n[3], ilo), t3 = __builtin_shuffle(n[2], n[3], ihi);
      const I32x16 plo = {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23};
      const I32x16 phi = {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31};
      o[0] = __builtin_shuffle(t0, t2, plo);
      o[1] = __builtin_shuffle(t0, t2, phi);
      o[2] = __builtin_shuffle(t1, t3, plo);
      o[3] = __builtin_shuffle(t1, t3, phi);
    } else {
      // lanes 0..7 and 8..15 of each word, as 8 doubles
      U32x8 w[8];
      for (int k = 0; k < 4; ++k) {
        w[k] = __builtin_shufflevector(r[k], r[k], 0, 1, 2, 3, 4, 5, 6, 7);
        w[4 + k] = __builtin_shufflevector(r[k], r[k], 8, 9, 10, 11, 12, 13, 14, 15);
      }
      F64x8 n[8];
      box_muller_v<F64x8, 4>(w, n, tick);
      const I64x8 ilo = {0, 8, 1, 9, 2, 10, 3, 11}, ihi = {4, 12, 5, 13, 6, 14, 7, 15};
      const I64x8 plo = {0, 1, 8, 9, 2, 3, 10, 11}, phi = {4, 5, 12, 13, 6, 7, 14, 15};
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const F64x8* m = n + 4 * h;
        const F64x8 t0 = __builtin_shuffle(m[0], m[1], ilo), t1 = __builtin_shuffle(m[0], m[1], ihi);
        const F64x8 t2 = __builtin_shuffle(m[2], m[3], ilo), t3 = __builtin_shuffle(m[2], m[3], ihi);
        o[4 * h + 0] = __builtin_shuffle(t0, t2, plo);
        o[4 * h + 1] = __builtin_shuffle(t0, t2, phi);
        o[4 * h + 2] = __builtin_shuffle(t1, t3, plo);
        o[4 * h + 3] = __builtin_shuffle(t1, t3, phi);
      }
    }
  }
#elif !defined(__AVX2__)
  struct State {};
  FASTSAMP_VINLINE void prime(State&) {}
  // 64 normals of the current 16 groups into out, then advance.
  FASTSAMP_VINLINE void next(State&, T* __restrict out) {
    alignas(64) uint32_t c0[16], c1[16], c2[16], c3[16];
    alignas(64) T n[4][16];
    for (int l = 0; l < 16; ++l) {
      c0[l] = jv[l];
      c1[l] = bv[l];
      c2[l] = o0;
      c3[l] = o1;
    }
    philox_lanes<16>(c0, c1, c2, c3, k0[0], k1[0]);
    advance();
#pragma omp simd
    for (int l = 0; l < 16; ++l) {
      T e0, e1, e2, e3;
      box_muller<T>(c0[l], c1[l], &e0, &e1);
      box_muller<T>(c2[l], c3[l], &e2, &e3);
      n[0][l] = e0;
      n[1][l] = e1;
      n[2][l] = e2;
      n[3][l] = e3;
    }
    for (int l = 0; l < 16; ++l)
      for (int q = 0; q < 4; ++q) out[4 * l + q] = n[q][l];
  }
#endif
};

// Prefetch of the next chunk's inputs while rows_normals computes: bytes [begin, end) of each of
// the nin arrays `in`, spread over the blocks, lines_per_block 64-byte lines after each (nin = 0: none).
struct NormalsPrefetch {
  const char* const* in = nullptr;
  int nin = 0;
  int64_t begin = 0, end = 0, lines_per_block = 0;
};

// The blocks of 16 groups (64 normals each) that rows_normals computes for nb rows of D:
// ceil(nb * J / 16), J = ceil(D / 4).
inline int64_t normals_blocks(int64_t nb, int D) { return (nb * ((D + 3) / 4) + 15) / 16; }
// The values rows_normals writes for nb rows of D, the room its xi needs: 64 per block.
inline size_t normals_capacity(int64_t nb, int D) { return static_cast<size_t>(64 * normals_blocks(nb, D)); }

// Standard normals xi[b, d] of draw (seed, offset), row-major, for consecutive
// runs of rows: `gen` (made for group g0 = b0 * J) must be at row b0, and is left
// at row b0 + nb when nb * J is a multiple of 16. rows_normals(gen, st, nb, D, xi, pf)
// writes the rows b0 .. b0+nb-1 densely into xi[(b - b0) * D + d] (xi: 64-byte
// aligned, room for normals_capacity(nb, D) values). Out of line on purpose: every kernel
// (the streaming ops and the policy rollout) runs this one instantiation, so their normals
// have the same bits whatever FMA contractions the compiler would choose in each caller.
template <typename T>
__attribute__((noinline)) void rows_normals(GroupNormals<T>& gen, typename GroupNormals<T>::State& st,
                                            int64_t nb, int D, T* __restrict xi, const NormalsPrefetch& pf) {
  const int J = (D + 3) / 4;
  const int64_t nblk = normals_blocks(nb, D);
  for (int64_t k = 0; k < nblk; ++k) {
    gen.next(st, xi + 64 * k);
    const int64_t o0 = pf.begin + 64 * pf.lines_per_block * k, o1 = std::min(pf.end, o0 + 64 * pf.lines_per_block);
    for (int a = 0; a < pf.nin; ++a)
      for (int64_t o = o0; o < o1; o += 64) __builtin_prefetch(pf.in[a] + o, 0, 3);
  }
  if (D % 4 != 0) {
    // compact rows of 4J to rows of D (in place: destinations never overtake sources)
    const int P = 4 * J;
    for (int64_t r = 1; r < nb; ++r) {
      const T* src = xi + r * P;
      T* dst = xi + r * D;
      for (int d = 0; d < D; ++d) dst[d] = src[d];
    }
  }
}

// Standard normals xi[l * D + d] of draw (seed, offset) for the nb rows of global chains
// chain0 .. chain0 + nb - 1: rows_normals from a GroupNormals primed at group chain_word(chain0) * J,
// J = ceil(D / 4) (xi: 64-byte aligned, room for normals_capacity(nb, D) values). The per-move draw of
// the MALA / HMC network moves (score_mlp.cpp) and of each policy_rollout step (trajectory_policy.cpp).
// The counter's chain word of global chain c is c mod 2**32: a GroupNormals of chains from chain0 starts at group
// chain_word(chain0) * J, a product that cannot wrap mod 2**64 (chain0 itself times J would, past 2**64 / J; the
// rows after it wrap their 32-bit word in GroupNormals).
inline uint64_t chain_word(uint64_t chain) { return chain & 0xFFFFFFFFull; }

template <typename T>
inline void draw_rows_normals(uint64_t seed, uint64_t offset, uint64_t chain0, int64_t nb, int D, T* __restrict xi) {
  const int J = (D + 3) / 4;
  GroupNormals<T> gen(seed, offset, J, chain_word(chain0) * static_cast<uint64_t>(J));
  typename GroupNormals<T>::State st;
  gen.prime(st);
  rows_normals<T>(gen, st, nb, D, xi, NormalsPrefetch{});
}

}  // namespace cpu
}  // namespace fastsamp
