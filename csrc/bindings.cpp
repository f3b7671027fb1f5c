// fastsamp._C: one extension module for the C++ CPU kernels and, when built
// with nvcc, the CUDA kernels. Arguments are data pointers, sizes and scalars
// (see docs/backend-contract.md): no torch C++ types, so no torch ABI tie.
#include <pybind11/pybind11.h>

#include "common/cpu_math.h"

namespace py = pybind11;

void register_cpu_ops(py::module_& m);      // csrc/cpu/register.cpp
#ifdef FASTSAMP_WITH_CUDA
void register_cuda_ops(py::module_& m);     // csrc/cuda/register.cpp
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastsamp compiled kernels (C++ CPU; CUDA when built with nvcc)";
  register_cpu_ops(m);
#ifdef FASTSAMP_WITH_CUDA
  register_cuda_ops(m);
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
  m.def("build_info", []() {
    py::dict d;
    d["cxx"] = FASTSAMP_CXX;
    d["cxx_flags"] = FASTSAMP_CXX_FLAGS;
    d["cuda_flags"] = FASTSAMP_CUDA_FLAGS;
    d["cpu_threads"] = "fastsamp pool (std::thread), no OpenMP runtime";
    d["simd_bytes"] = FASTSAMP_NATIVE_BYTES;  // the fused MLP engine's vector: 64 AVX-512, 32 AVX2, 16 else
    return d;
  });
}
