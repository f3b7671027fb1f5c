// The mixture kernels (csrc/cpu/gmm.cpp: gmm_score, gmm_mala, gmm_hmc) built for an instruction set other than the
// extension's: their rows are one native register (64 bytes with AVX-512, 32 with AVX2, 16 below), their gathers
// and lane Philox have AVX-512 and AVX2 paths, and lane loops elsewhere. tests/test_gmm_isa.py builds this program
// with gmm.cpp and the extension's compiler and flags at another -march, and compares its results with the
// extension's ops.
//
//   gmm_isa IN OUT   IN holds cases, each: int64 dtype (0 float32, 1 float64), B, D, K, kernel (0 gmm_score,
//                    1 gmm_mala, 2 gmm_hmc), n_steps, n_sub (n_trapezoid / n_leapfrog), mh, seed, offset, chain0;
//                    float64 alpha, sigma2, damping; then x (B, D), means (K, D), log_weights (K), variances (K),
//                    step (B) in the case's dtype. OUT gets, per case in the case's dtype, gmm_score's score (B, D)
//                    and logp (B), or a move kernel's x (B, D) and acceptance rate (B).
// Exit status: 0 done, 2 bad input or file.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/ops.h"

namespace {

template <typename V>
bool read(std::FILE* f, V* p, size_t n) {
  return std::fread(p, sizeof(V), n, f) == n;
}

template <typename T>
bool run_case(std::FILE* in, std::FILE* out, const int64_t* h, const double* fp) {
  const int64_t B = h[1], D = h[2], K = h[3], kernel = h[4], n_steps = h[5], n_sub = h[6], mh = h[7];
  const uint64_t seed = static_cast<uint64_t>(h[8]), offset = static_cast<uint64_t>(h[9]);
  const uint64_t chain0 = static_cast<uint64_t>(h[10]);
  std::vector<T> x(B * D), means(K * D), log_w(K), var(K), step(B), a(B * D), b(B);
  if (!read(in, x.data(), x.size()) || !read(in, means.data(), means.size()) || !read(in, log_w.data(), K) ||
      !read(in, var.data(), K) || !read(in, step.data(), B))
    return false;
  const int dtype = sizeof(T) == 4 ? 0 : 1;
  const auto p = [](auto& v) { return reinterpret_cast<uintptr_t>(v.data()); };
  using namespace fastsamp::cpu;
  if (kernel == 0) {
    gmm_score(dtype, p(x), p(means), p(log_w), p(var), B, D, K, fp[0], fp[1], p(a), p(b));
  } else if (kernel == 1) {
    gmm_mala(dtype, p(x), p(means), p(log_w), p(var), p(step), B, D, K, n_steps, n_sub, fp[0], fp[1], seed, offset,
             chain0, mh, p(a), p(b));
  } else {
    gmm_hmc(dtype, p(x), p(means), p(log_w), p(var), p(step), B, D, K, n_steps, n_sub, fp[0], fp[1], seed, offset,
            chain0, mh, fp[2], p(a), p(b));
  }
  return std::fwrite(a.data(), sizeof(T), a.size(), out) == a.size() &&
         std::fwrite(b.data(), sizeof(T), b.size(), out) == b.size();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::FILE* in = std::fopen(argv[1], "rb");
  std::FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 2;
  int64_t h[11];
  double fp[3];
  while (read(in, h, 11)) {
    if (!read(in, fp, 3)) return 2;
    if (!(h[0] == 0 ? run_case<float>(in, out, h, fp) : run_case<double>(in, out, h, fp))) return 2;
  }
  std::fclose(in);
  return std::fclose(out) == 0 ? 0 : 2;
}
