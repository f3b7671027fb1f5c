// pybind11 bindings of the CUDA kernels: fastsamp._C.cuda_<op>(dtype, ..., stream), compiled by
// g++ (the kernels themselves are in csrc/cuda/*.cu, declared in launch.h). The arguments are
// those of the cpu_<op> functions (csrc/cpu/register.cpp), in the same order, with the CUDA
// stream (torch.cuda.current_stream().cuda_stream) last instead of n_threads: data pointers as
// python ints (0 = not given), dtype first (0 float32, 1 float64); each seed / offset / chain offset is a
// pair (value, pointer of a one-element int64 device tensor read by the kernel instead, or 0). Launches are
// asynchronous;
// launch errors raise RuntimeError, bad sizes ValueError. Nothing here touches the CUDA runtime
// at import time.
#include <pybind11/pybind11.h>

#include "cuda/launch.h"

namespace py = pybind11;
using namespace pybind11::literals;

void register_cuda_ops(py::module_& m) {
  namespace fc = fastsamp::cuda;
  m.def("cuda_gmm_score", &fc::gmm_score, "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a, "B"_a,
        "D"_a, "K"_a, "alpha"_a, "sigma2"_a, "score"_a, "logp"_a, "stream"_a,
        "Score and log-density of the Gaussian mixture (op 1), CUDA, async on `stream`.");
  m.def("cuda_gmm_mala", &fc::gmm_mala, "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "step_size"_a, "B"_a, "D"_a, "K"_a, "n_steps"_a, "n_trapezoid"_a, "alpha"_a, "sigma2"_a, "seed"_a, "seed_t"_a,
        "offset"_a, "offset_t"_a, "chain_offset"_a, "chain_offset_t"_a, "mh"_a, "x_out"_a, "accept_rate"_a, "stream"_a,
        "Fused whole-move MALA on the mixture (op 7), CUDA, async on `stream`. D <= 1024.");
  m.def("cuda_score_mh_accept", &fc::score_mh_accept, "dtype"_a, "x"_a, "x_prop"_a, "score"_a, "score_prop"_a,
        "step_size"_a, "u"_a, "seed"_a, "seed_t"_a, "offset"_a, "offset_t"_a, "chain_offset"_a, "chain_offset_t"_a,
        "interior"_a, "m"_a, "B"_a, "D"_a, "x_new"_a,
        "score_new"_a, "accepted"_a, "log_alpha"_a, "stream"_a,
        "Score-based MH accept (op 5; u = 0: drawn (seed, offset)), CUDA, async on `stream`.");
  m.def("cuda_normal", &fc::normal, "dtype"_a, "seed"_a, "seed_t"_a, "offset"_a, "offset_t"_a, "chain_offset"_a,
  "chain_offset_t"_a, "B"_a, "D"_a, "out"_a,
        "stream"_a, "Standard normals (B, D) of draw (seed, offset) (ops.normal), CUDA, async on `stream`.");
  m.def("cuda_uniform", &fc::uniform, "dtype"_a, "seed"_a, "seed_t"_a, "offset"_a, "offset_t"_a, "chain_offset"_a,
  "chain_offset_t"_a, "B"_a, "out"_a,
        "stream"_a, "MH uniforms (B,) of draw (seed, offset) (ops.uniform), CUDA, async on `stream`.");
  m.def("cuda_sde_step", &fc::sde_step, "dtype"_a, "x"_a, "score"_a, "extra_drift"_a, "noise"_a, "B"_a, "D"_a,
        "seed"_a, "seed_t"_a, "offset"_a, "offset_t"_a, "chain_offset"_a, "chain_offset_t"_a, "a"_a, "c_s"_a, "c_n"_a,
        "out"_a, "stream"_a,
        "x_new = a x + c_s (score + extra_drift) + c_n xi (op 2), CUDA, async on `stream`.");
  m.def("cuda_em_step_logprob", &fc::em_step_logprob, "dtype"_a, "x"_a, "drift"_a, "log_var"_a, "x_next"_a,
        "noise"_a, "B"_a, "D"_a, "seed"_a, "seed_t"_a, "offset"_a, "offset_t"_a, "chain_offset"_a, "chain_offset_t"_a,
        "h"_a, "s2"_a, "e2"_a, "c"_a, "b2"_a,
        "y"_a, "log_pf"_a, "log_pb"_a, "stream"_a,
        "Euler-Maruyama step with its forward / backward log-densities (op 9), CUDA, async on `stream`.");
  m.def("cuda_em_step_logprob_backward", &fc::em_step_logprob_backward, "dtype"_a, "x"_a, "drift"_a,
        "log_var"_a, "x_next"_a, "g_x_next"_a, "g_log_pf"_a, "g_log_pb"_a, "B"_a, "D"_a, "h"_a, "s2"_a, "e2"_a,
        "c"_a, "b2"_a, "reparam"_a, "g_x"_a, "g_drift"_a, "g_log_var"_a, "g_x_next_out"_a, "stream"_a,
        "Gradients of em_step_logprob (op 9), CUDA, async on `stream`.");
}
