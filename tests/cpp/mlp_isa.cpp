// The fused MLP engine (csrc/cpu/mlp.h) built for an instruction set other than the extension's: its vectors are
// one native register (vm::VNative: 64 bytes with AVX-512, 32 with AVX2, 16 below), and with them the register
// tiles, the padded layouts and the horizontal sums change. tests/test_mlp_isa.py builds this program with the
// extension's compiler and flags and another -march, and compares what it computes with the PyTorch reference.
//
//   mlp_isa CASES OUT    prints FASTSAMP_NATIVE_BYTES; for each case of CASES (int64 dtype, B, Din, H, O, L, act;
//                        then, in the dtype: x (B, Din), the packed params of csrc/cpu/mlp_net.cpp, g_out (B, O),
//                        and mlp_net_energy_lsq's c (B, O), v (B), sigma (B), z (B, O)) writes mlp_net's out,
//                        mlp_net_backward's g_x and g_params, and mlp_net_energy_lsq's loss and g_params, in that
//                        order, to OUT. The backward runs from mlp_net_train's kept activations (in a vector-aligned
//                        buffer: read in place where H is whole vectors) and again recomputing the forward, and
//                        mlp_net_train's out is mlp_net's: both bit for bit, else a kernel error.
// Exit status: 0 done, 2 a bad file, 1 a kernel error (printed).
#include "cpu/mlp_net.cpp"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <stdexcept>
#include <vector>

namespace {

template <typename T>
bool run_case(std::FILE* in, std::FILE* out, const int64_t (&h)[7]) {
  const int64_t B = h[1], Din = h[2], H = h[3], O = h[4], L = h[5], act = h[6];
  std::vector<int64_t> sizes = {H * Din, H, O * H, O};
  for (int64_t k = 0; k < L; ++k) sizes.insert(sizes.end(), {H * H, H});
  std::vector<T> x(B * Din), g_out(B * O), y(B * O), g_x(B * Din), c(B * O), v(B), sigma(B), z(B * O), loss(B);
  std::vector<std::vector<T>> params, grads, energy_grads;
  for (int64_t n : sizes) {
    params.emplace_back(n);
    grads.emplace_back(n);
    energy_grads.emplace_back(n);
  }
  auto read = [&](std::vector<T>& a) { return std::fread(a.data(), sizeof(T), a.size(), in) == a.size(); };
  bool ok = read(x);
  for (auto& p : params) ok = ok && read(p);
  if (!(ok && read(g_out) && read(c) && read(v) && read(sigma) && read(z))) return false;
  auto addr = [](std::vector<T>& a) { return reinterpret_cast<uintptr_t>(a.data()); };
  std::vector<uintptr_t> pp, gp, ep;
  for (size_t k = 0; k < params.size(); ++k) {
    pp.push_back(addr(params[k]));
    gp.push_back(addr(grads[k]));
    ep.push_back(addr(energy_grads[k]));
  }
  const int dtype = sizeof(T) == 4 ? 0 : 1;
  {
    fastsamp::cpu::KernelScope scope(1);
    fastsamp::cpu::mlp_net(dtype, addr(x), B, Din, H, O, pp, act, addr(y));
    const size_t kept_bytes = (2 * (L + 1) * B * H * sizeof(T) + 63) / 64 * 64;
    std::unique_ptr<T, decltype(&std::free)> kept(static_cast<T*>(std::aligned_alloc(64, kept_bytes)), &std::free);
    std::vector<T> y_train(B * O), g_x_again(B * Din);
    std::vector<std::vector<T>> grads_again;
    std::vector<uintptr_t> gp_again;
    for (int64_t n : sizes) gp_again.push_back(addr(grads_again.emplace_back(n)));
    fastsamp::cpu::mlp_net_train(dtype, addr(x), B, Din, H, O, pp, act, addr(y_train),
                                 reinterpret_cast<uintptr_t>(kept.get()));
    fastsamp::cpu::mlp_net_backward(dtype, addr(x), B, Din, H, O, pp, act, addr(g_out),
                                    reinterpret_cast<uintptr_t>(kept.get()), addr(g_x), gp);
    fastsamp::cpu::mlp_net_backward(dtype, addr(x), B, Din, H, O, pp, act, addr(g_out), 0, addr(g_x_again),
                                    gp_again);
    if (y_train != y || g_x_again != g_x || grads_again != grads)
      throw std::runtime_error("mlp_net_train or the backward from its kept activations differs from mlp_net or the "
                               "recomputing backward");
    fastsamp::cpu::mlp_net_energy_lsq(dtype, addr(x), B, Din, H, O, pp, act, addr(c), addr(v), addr(sigma), addr(z),
                                      addr(loss), ep);
  }
  for (auto* a : {&y, &g_x}) std::fwrite(a->data(), sizeof(T), a->size(), out);
  for (auto& g : grads) std::fwrite(g.data(), sizeof(T), g.size(), out);
  std::fwrite(loss.data(), sizeof(T), loss.size(), out);
  for (auto& g : energy_grads) std::fwrite(g.data(), sizeof(T), g.size(), out);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("%d\n", FASTSAMP_NATIVE_BYTES);
  if (argc != 3) return 2;
  std::FILE* in = std::fopen(argv[1], "rb");
  std::FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 2;
  int64_t h[7];
  try {
    while (std::fread(h, sizeof(int64_t), 7, in) == 7) {
      const bool ok = h[0] == 0 ? run_case<float>(in, out, h) : run_case<double>(in, out, h);
      if (!ok) return 2;
    }
  } catch (const std::exception& e) {
    std::printf("%s\n", e.what());
    return 1;
  }
  return std::fclose(out) == 0 ? 0 : 2;
}
