// score_mh_accept's row lanes against its row form at the same compile-time D (1, 2, 4, 8, 16), float32 and
// float64: the outputs must be the same bits. The extension takes the lanes at D <= 8 wherever AVX-512 or AVX2 with
// FMA is built in (and at float32's D = 16 where the lanes load whole blocks by transposes), so the row form is not
// reachable from Python there; this program includes csrc/cpu/mh.cpp to run both (tests/test_mh.py builds it with
// csrc/cpu/runtime.cpp for each form). Exit status: 0 all equal, 1 a mismatch (printed), 77 no row lanes in this
// build.
#include "cpu/mh.cpp"

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#if FASTSAMP_MH_ROW_LANES
using namespace fastsamp::cpu;

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// The cases run and those whose lanes differ from the row form.
struct Tally {
  int cases = 0;
  int bad = 0;
};

// Random rows (a proposal near x, per-chain steps, m interior score sets, u given or drawn) at B from one
// row to several MhUniforms blocks, partial lane blocks included; counted into `tally`.
template <typename T, int DC>
void compare(std::mt19937_64& gen, Tally& tally) {
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const char* name = sizeof(T) == 4 ? "float32" : "float64";
  for (int64_t B : {1, 7, 8, 15, 16, 17, 255, 256, 257, 1000, 4099}) {
    for (int64_t m : {0, 1, 3}) {
      for (bool u_given : {false, true}) {
        const int64_t N = B * DC;
        std::vector<T> x(N), xp(N), s(N), sp(N), interior(m * N + 1), step(B), u(B);
        for (auto* v : {&x, &s, &sp, &interior})
          for (T& e : *v) e = static_cast<T>(normal(gen));
        for (T& e : step) e = static_cast<T>(0.01 + 0.3 * uniform(gen));
        for (T& e : u) e = static_cast<T>(uniform(gen));
        for (int64_t i = 0; i < N; ++i) {
          const T e = step[i / DC];
          xp[i] = x[i] + T(1.5) * std::sqrt(e) * static_cast<T>(normal(gen)) + e * s[i];
        }
        const MhUniforms<T> un{u_given ? u.data() : nullptr, 99, 5, static_cast<uint64_t>(B)};
        const T* in = m ? interior.data() : nullptr;
        std::vector<T> x_rows(N), s_rows(N), la_rows(B), x_lanes(N), s_lanes(N), la_lanes(B);
        std::vector<uint8_t> acc_rows(B), acc_lanes(B);
        score_mh_accept_rows<T, DC>(x.data(), xp.data(), s.data(), sp.data(), step.data(), un, in, m, B, DC,
                                    x_rows.data(), s_rows.data(), acc_rows.data(), la_rows.data());
        score_mh_accept_lanes<T, DC>(x.data(), xp.data(), s.data(), sp.data(), step.data(), un, in, m, B,
                                     x_lanes.data(), s_lanes.data(), acc_lanes.data(), la_lanes.data());
        ++tally.cases;
        if (!(same_bits(la_rows, la_lanes) && acc_rows == acc_lanes && same_bits(x_rows, x_lanes) &&
              same_bits(s_rows, s_lanes))) {
          ++tally.bad;
          std::printf("%s D=%d B=%ld m=%ld u_given=%d: lanes differ from the row form\n", name, DC,
                      static_cast<long>(B), static_cast<long>(m), static_cast<int>(u_given));
        }
      }
    }
  }
}

int main() {
  std::mt19937_64 gen(7);
  Tally tally;
  compare<float, 1>(gen, tally);
  compare<float, 2>(gen, tally);
  compare<float, 4>(gen, tally);
  compare<float, 8>(gen, tally);
  compare<float, 16>(gen, tally);
  compare<double, 1>(gen, tally);
  compare<double, 2>(gen, tally);
  compare<double, 4>(gen, tally);
  compare<double, 8>(gen, tally);
  compare<double, 16>(gen, tally);
  std::printf("%s row lanes: %d mismatching cases of %d\n", FASTSAMP_MH_ROW_LANES == 512 ? "AVX-512" : "AVX2",
              tally.bad, tally.cases);
  return tally.bad ? 1 : 0;
}
#else
int main() {
  std::printf("no row lanes in this build (needs AVX-512 F, BW, VL, DQ or AVX2 and FMA)\n");
  return 77;
}
#endif
