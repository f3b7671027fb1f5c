// Reverse-SDE steps: sde_step (op 2) and guided_sde_step (op 2b), one streaming pass each
// (cpu/stream.h). See docs/backend-contract.md.
#include <cstring>

#include "cpu/ops.h"
#include "cpu/stream.h"

namespace fastsamp {
namespace cpu {
namespace {

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
  const T* in[4] = {x, score, extra, shift};
  const int nin = GUIDED ? 4 : (extra ? 3 : 2);
  noise_pass<T>(noise, B, D, seed, offset, chain0, in, nin, out,
                [=](int64_t i, T xi) { return a * x[i] + cs * drift(i) + cn * xi; },
                [=](int64_t i, auto& v, auto xi) {
                  using V = std::remove_reference_t<decltype(v)>;
                  V xv, sv;
                  std::memcpy(&xv, x + i, sizeof(V));
                  drift_v(i, sv);
                  v = a * xv + cs * sv + cn * xi;
                });
}

}  // namespace

void sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise, int64_t B,
              int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double a, double c_s, double c_n,
              uintptr_t out) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    affine_noise_impl<T, decltype(dc)::value, false>(
        ptr<T>(x), ptr<T>(score), ptr<T>(extra_drift), nullptr, ptr<T>(noise), B, static_cast<int>(D), seed,
        offset, chain_offset, static_cast<T>(a), static_cast<T>(c_s), T(0), T(0), static_cast<T>(c_n), ptr<T>(out));
  });
}

void guided_sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t score_shift, uintptr_t v,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double a, double c_s, double c_v, double c_diff, double c_n, uintptr_t out) {
  dispatch_dtype_d(dtype, D, [&](auto tag, auto dc) {
    using T = decltype(tag);
    affine_noise_impl<T, decltype(dc)::value, true>(
        ptr<T>(x), ptr<T>(score), ptr<T>(v), ptr<T>(score_shift), ptr<T>(noise), B, static_cast<int>(D), seed,
        offset, chain_offset, static_cast<T>(a), static_cast<T>(c_s), static_cast<T>(c_v), static_cast<T>(c_diff),
        static_cast<T>(c_n), ptr<T>(out));
  });
}

}  // namespace cpu
}  // namespace fastsamp
