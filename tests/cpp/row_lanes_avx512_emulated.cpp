// The AVX-512 row lanes' data movement (csrc/cpu/row_lanes.h: the whole-block transposes RowLanes::columns / rows,
// the partial blocks' masked gathers through row_columns, the accept copy's select_block) on any x86-64 CPU, AVX-512
// or not: the _mm512 intrinsics run under SIMDe's emulation (Debian's libsimde-dev; tests/test_mh.py builds this
// at -march=x86-64 with the extension's compiler), checked element by element against the layouts they claim.
// Exact: they only move values. Exit status: 0 all equal, 1 a mismatch (printed).
#include <immintrin.h>  // before SIMDe's aliases of its names (row_lanes.h includes it again)

#include "cpu/common.h"  // first, at the build's own ISA (its AVX-512 paths stay off)

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cstdio>
#include <vector>

// The intrinsics row_lanes.h uses that SIMDe 0.7.4 lacks, lane by lane on SIMDe's types.
namespace emulated {
template <typename V, typename E>
V from(const E* e) {
  V v;
  std::memcpy(&v, e, sizeof(V));
  return v;
}
// dst 128-bit block j: block imm[2j+1:2j] of a (j < 2) or b (j >= 2)
template <typename V, typename E>
V shuffle_blocks(V a, V b, int imm) {
  constexpr int n = 16 / sizeof(E);
  E x[4 * n], y[4 * n], o[4 * n];
  std::memcpy(x, &a, 64);
  std::memcpy(y, &b, 64);
  for (int j = 0; j < 4; ++j) std::memcpy(o + n * j, (j < 2 ? x : y) + n * ((imm >> (2 * j)) & 3), 16);
  return from<V>(o);
}
inline __m512 mm512_shuffle_f32x4(__m512 a, __m512 b, int imm) { return shuffle_blocks<__m512, float>(a, b, imm); }
inline __m512d mm512_shuffle_f64x2(__m512d a, __m512d b, int imm) { return shuffle_blocks<__m512d, double>(a, b, imm); }
inline __m256 mm512_extractf32x8_ps(__m512 a, int imm) {
  float x[16];
  std::memcpy(x, &a, 64);
  return from<__m256>(x + 8 * (imm & 1));
}
template <typename V, typename E, int N, typename I>
V mask_gather(V src, unsigned k, I idx, const E* p, int scale) {
  E o[N];
  int32_t i[N];
  std::memcpy(o, &src, sizeof(o));
  std::memcpy(i, &idx, sizeof(i));
  for (int l = 0; l < N; ++l)
    if ((k >> l) & 1u) std::memcpy(o + l, reinterpret_cast<const char*>(p) + int64_t{i[l]} * scale, sizeof(E));
  return from<V>(o);
}
inline __m512 mm512_mask_i32gather_ps(__m512 src, __mmask16 k, __m512i idx, const float* p, int scale) {
  return mask_gather<__m512, float, 16>(src, k, idx, p, scale);
}
inline __m512d mm512_mask_i32gather_pd(__m512d src, __mmask8 k, __m256i idx, const double* p, int scale) {
  return mask_gather<__m512d, double, 8>(src, k, idx, p, scale);
}
template <typename V, typename E, int N>
V maskz_load(unsigned k, const E* p) {
  E o[N] = {};
  for (int l = 0; l < N; ++l)
    if ((k >> l) & 1u) o[l] = p[l];
  return from<V>(o);
}
template <typename V, typename E, int N>
void mask_store(E* p, unsigned k, V v) {
  E o[N];
  std::memcpy(o, &v, sizeof(o));
  for (int l = 0; l < N; ++l)
    if ((k >> l) & 1u) p[l] = o[l];
}
inline __m512 mm512_maskz_loadu_ps(__mmask16 k, const float* p) { return maskz_load<__m512, float, 16>(k, p); }
inline __m512d mm512_maskz_loadu_pd(__mmask8 k, const double* p) { return maskz_load<__m512d, double, 8>(k, p); }
inline void mm512_mask_storeu_ps(float* p, __mmask16 k, __m512 v) { mask_store<__m512, float, 16>(p, k, v); }
inline void mm512_mask_storeu_pd(double* p, __mmask8 k, __m512d v) { mask_store<__m512d, double, 8>(p, k, v); }
inline __m128i mm_maskz_set1_epi8(__mmask16 k, char a) {
  int8_t o[16] = {};
  for (int l = 0; l < 16; ++l)
    if ((k >> l) & 1u) o[l] = a;
  return from<__m128i>(o);
}
inline void mm_mask_storeu_epi8(void* p, __mmask16 k, __m128i v) {
  mask_store<__m128i, int8_t, 16>(static_cast<int8_t*>(p), k, v);
}
}  // namespace emulated
#define _mm512_shuffle_f32x4 emulated::mm512_shuffle_f32x4
#define _mm512_shuffle_f64x2 emulated::mm512_shuffle_f64x2
#define _mm512_extractf32x8_ps emulated::mm512_extractf32x8_ps
#define _mm512_mask_i32gather_ps emulated::mm512_mask_i32gather_ps
#define _mm512_mask_i32gather_pd emulated::mm512_mask_i32gather_pd
#define _mm512_maskz_loadu_ps emulated::mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_pd emulated::mm512_maskz_loadu_pd
#define _mm512_mask_storeu_ps emulated::mm512_mask_storeu_ps
#define _mm512_mask_storeu_pd emulated::mm512_mask_storeu_pd
#define _mm_maskz_set1_epi8 emulated::mm_maskz_set1_epi8
#define _mm_mask_storeu_epi8 emulated::mm_mask_storeu_epi8

// row_lanes.h's AVX-512 form, on the emulated intrinsics
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#include "cpu/row_lanes.h"
static_assert(FASTSAMP_MH_ROW_LANES == 512, "the AVX-512 row lanes");

using namespace fastsamp::cpu;

// Mismatches of columns / rows (whole blocks, where has_columns(D)), row_columns (every block size n) and
// select_block at D.
template <typename T, int D>
int check() {
  using L = RowLanes<T>;
  constexpr int W = L::W;
  std::vector<T> p(W * D), back(W * D, T(-1)), a(W * D), b(W * D), out(W * D);
  for (int i = 0; i < W * D; ++i) p[i] = T(i) + T(0.25), a[i] = T(i), b[i] = T(-i - 1);
  int bad = 0;
  typename L::V c[D];
  auto compare_columns = [&](int n) {
    for (int d = 0; d < D; ++d) {
      T lane[W];
      std::memcpy(lane, &c[d], sizeof(lane));
      for (int r = 0; r < W; ++r) bad += lane[r] != (r < n ? p[r * D + d] : T(0));
    }
  };
  if constexpr (L::has_columns(D)) {
    L::template columns<D>(p.data(), c);
    compare_columns(W);
    L::template rows<D>(c, back.data());
    for (int i = 0; i < W * D; ++i) bad += back[i] != p[i];
  }
  for (int n = 1; n <= W; ++n) {
    row_columns<T, D>(n, L::mask(n), L::index(D), p.data(), c);
    compare_columns(n);
  }
  for (unsigned take : {0u, 1u, 0x5u, 0xA5u, 0x8001u, 0xFFFFu}) {
    take &= (1u << W) - 1u;
    L::template select_block<D>(take, a.data(), b.data(), out.data());
    for (int i = 0; i < W * D; ++i) bad += out[i] != (((take >> (i / D)) & 1u) ? a[i] : b[i]);
  }
  std::printf("AVX-512 row lanes (emulated), %s D=%d: %d mismatches\n", sizeof(T) == 4 ? "float32" : "float64", D,
              bad);
  return bad;
}

int main() {
  const int bad = check<float, 1>() + check<float, 2>() + check<float, 3>() + check<float, 4>() + check<float, 8>() +
                  check<float, 16>() + check<double, 1>() + check<double, 2>() + check<double, 3>() +
                  check<double, 4>() + check<double, 8>() + check<double, 16>();
  return bad != 0;
}
