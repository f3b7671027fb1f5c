// pybind11 bindings of the C++ CPU kernels: fastsamp._C.cpu_<op>(dtype, ...).
// Tensors arrive as data pointers (python ints), optional tensors as 0;
// seeds and offsets as uint64. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include "cpu/ops.h"

namespace py = pybind11;
using namespace pybind11::literals;

void register_cpu_ops(py::module_& m) {
  namespace c = fastsamp::cpu;
  using rel = py::call_guard<py::gil_scoped_release>;
  m.def("cpu_gmm_score", &c::gmm_score, rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "B"_a, "D"_a, "K"_a, "alpha"_a, "sigma2"_a, "score"_a, "logp"_a,
        "Score and log-density of the Gaussian mixture (op 1).");
  m.def("cpu_gmm_mala", &c::gmm_mala, rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "step_size"_a, "B"_a, "D"_a, "K"_a, "n_steps"_a, "n_trapezoid"_a, "alpha"_a, "sigma2"_a, "seed"_a,
        "offset"_a, "chain_offset"_a, "mh"_a, "x_out"_a, "accept_rate"_a, "Fused whole-move MALA on the mixture (op 7).");
  m.def("cpu_gmm_hmc", &c::gmm_hmc, rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "step_size"_a, "B"_a, "D"_a, "K"_a, "n_steps"_a, "n_leapfrog"_a, "alpha"_a, "sigma2"_a, "seed"_a,
        "offset"_a, "chain_offset"_a, "mh"_a, "damping"_a, "x_out"_a, "accept_rate"_a, "Fused whole-move HMC on the mixture (op 8).");
  m.def("cpu_sde_step", &c::sde_step, rel(), "dtype"_a, "x"_a, "score"_a, "extra_drift"_a, "noise"_a, "B"_a,
        "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "a"_a, "c_s"_a, "c_n"_a, "out"_a,
        "x_new = a x + c_s (score + extra_drift) + c_n xi (op 2).");
  m.def("cpu_guided_sde_step", &c::guided_sde_step, rel(), "dtype"_a, "x"_a, "score"_a, "score_shift"_a, "v"_a,
        "noise"_a, "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "a"_a, "c_s"_a, "c_v"_a, "c_diff"_a, "c_n"_a, "out"_a,
        "x_new = a x + c_s (score + c_v v + c_diff (score_shift - score)) + c_n xi (op 2b).");
  m.def("cpu_mala_propose", &c::mala_propose, rel(), "dtype"_a, "x"_a, "score"_a, "step_size"_a, "noise"_a,
        "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "out"_a, "MALA proposal (op 3).");
  m.def("cpu_line_points", &c::line_points, rel(), "dtype"_a, "x"_a, "x_prop"_a, "B"_a, "D"_a, "n"_a,
        "out"_a, "Interior trapezoid points (op 4).");
  m.def("cpu_score_mh_accept", &c::score_mh_accept, rel(), "dtype"_a, "x"_a, "x_prop"_a, "score"_a,
        "score_prop"_a, "step_size"_a, "u"_a, "interior"_a, "m"_a, "B"_a, "D"_a, "x_new"_a, "score_new"_a,
        "accepted"_a, "log_alpha"_a, "Score-based MH accept (op 5).");
  m.def("cpu_leapfrog", &c::leapfrog, rel(), "dtype"_a, "x"_a, "p"_a, "score"_a, "step_size"_a, "B"_a, "D"_a,
        "x_next"_a, "p_half"_a, "Half kick and drift (op 6a).");
  m.def("cpu_leapfrog_finish", &c::leapfrog_finish, rel(), "dtype"_a, "x"_a, "x_next"_a, "p_half"_a,
        "score"_a, "score_next"_a, "step_size"_a, "delta_logp"_a, "B"_a, "D"_a, "p_next"_a,
        "delta_logp_next"_a, "Second half kick and trapezoid segment (op 6b).");
  m.def("cpu_hmc_accept", &c::hmc_accept, rel(), "dtype"_a, "x"_a, "x_prop"_a, "score"_a, "score_prop"_a,
        "p"_a, "p_prop"_a, "delta_logp"_a, "u"_a, "B"_a, "D"_a, "x_new"_a, "score_new"_a, "accepted"_a,
        "log_alpha"_a, "HMC accept (op 6c).");
  m.def("cpu_momentum_refresh", &c::momentum_refresh, rel(), "dtype"_a, "p"_a, "damping"_a, "noise"_a, "B"_a,
        "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "out"_a, "Partial momentum refresh (op 6d).");
  m.def("cpu_em_step_logprob", &c::em_step_logprob, rel(), "dtype"_a, "x"_a, "drift"_a, "log_var"_a, "x_next"_a,
        "noise"_a, "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "h"_a, "s2"_a, "e2"_a, "c"_a, "b2"_a, "y"_a, "log_pf"_a,
        "log_pb"_a, "Euler-Maruyama step with its forward / backward log-densities (op 9).");
  m.def("cpu_em_step_logprob_backward", &c::em_step_logprob_backward, rel(), "dtype"_a, "x"_a, "drift"_a,
        "log_var"_a, "x_next"_a, "g_x_next"_a, "g_log_pf"_a, "g_log_pb"_a, "B"_a, "D"_a, "h"_a, "s2"_a, "e2"_a,
        "c"_a, "b2"_a, "reparam"_a, "g_x"_a, "g_drift"_a, "g_log_var"_a, "g_x_next_out"_a,
        "Gradients of em_step_logprob (op 9).");
}
