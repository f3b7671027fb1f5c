// The in-kernel normals (GroupNormals, csrc/cpu/normals.h) built for an instruction set other than the extension's:
// the Philox and the Box–Muller have an AVX-512 path, an AVX2 path (32-byte vectors) and the lane loops below.
// tests/test_normals_isa.py builds this program with the extension's compiler and flags and another -march, and
// compares its draws with the extension's ops.normal.
//
//   normals_isa OUT SEED OFFSET CHAIN0 NB D ...   for each case (five numbers), writes draw_rows_normals' NB x D
//                                                 normals in float, then in double, to OUT.
// Exit status: 0 done, 2 bad arguments or file.
#include "cpu/normals.h"

#include <cstdio>
#include <cstdlib>

namespace {

template <typename T>
void draw(std::FILE* out, uint64_t seed, uint64_t offset, uint64_t chain0, int64_t nb, int D) {
  fastsamp::cpu::Buf<T> xi(fastsamp::cpu::normals_capacity(nb, D));
  fastsamp::cpu::draw_rows_normals<T>(seed, offset, chain0, nb, D, xi.p);
  std::fwrite(xi.p, sizeof(T), static_cast<size_t>(nb * D), out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (argc - 2) % 5 != 0) return 2;
  std::FILE* out = std::fopen(argv[1], "wb");
  if (!out) return 2;
  for (int a = 2; a < argc; a += 5) {
    const uint64_t seed = std::strtoull(argv[a], nullptr, 10), offset = std::strtoull(argv[a + 1], nullptr, 10);
    const uint64_t chain0 = std::strtoull(argv[a + 2], nullptr, 10);
    const int64_t nb = std::strtoll(argv[a + 3], nullptr, 10);
    const int D = static_cast<int>(std::strtol(argv[a + 4], nullptr, 10));
    draw<float>(out, seed, offset, chain0, nb, D);
    draw<double>(out, seed, offset, chain0, nb, D);
  }
  return std::fclose(out) == 0 ? 0 : 2;
}
