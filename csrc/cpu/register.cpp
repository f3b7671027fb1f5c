// pybind11 bindings of the C++ CPU kernels: fastsamp._C.cpu_<op>(dtype, ...).
// Tensors arrive as data pointers (python ints), optional tensors as 0;
// seeds and offsets as uint64. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu/ops.h"
#include "cpu/runtime.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {
// The kernel f with a last argument n_threads: the threads it may use (torch.get_num_threads()
// from the glue), under FTZ/DAZ on the calling thread (cpu/runtime.h).
template <typename... A>
auto threaded(void (*f)(A...)) {
  return [f](A... a, int64_t n_threads) {
    const fastsamp::cpu::KernelScope scope(n_threads);
    f(a...);
  };
}

// MXCSR of the calling thread (x86; -1 elsewhere): lets tests check that a call leaves it as it was.
int64_t fp_control_word() {
#if defined(__x86_64__) || defined(__i386__)
  return static_cast<int64_t>(_mm_getcsr());
#else
  return -1;
#endif
}
}  // namespace

void register_cpu_ops(py::module_& m) {
  namespace c = fastsamp::cpu;
  using rel = py::call_guard<py::gil_scoped_release>;
  m.def("cpu_pool_stats", [] {
    const c::PoolStats st = c::pool_stats();
    py::dict d;
    d["jobs"] = st.jobs;
    d["workers"] = st.workers;
    d["spin_us"] = st.spin_us;
    return d;
  }, "Thread pool of the CPU kernels: jobs run on it so far, its worker threads, the spin bound (us).");
  m.def("cpu_fp_control_word", &fp_control_word, "MXCSR of the calling thread (x86), -1 elsewhere.");
  m.def("cpu_set_flush_denormals", &c::set_flush_denormals, "on"_a,
        "Whether kernels set FTZ/DAZ (default True; False only to measure what flushing buys). Returns the "
        "previous setting.");
  m.def("cpu_gmm_score", threaded(&c::gmm_score), rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "B"_a, "D"_a, "K"_a, "alpha"_a, "sigma2"_a, "score"_a, "logp"_a, "n_threads"_a,
        "Score and log-density of the Gaussian mixture (op 1).");
  m.def("cpu_gmm_mala", threaded(&c::gmm_mala), rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "step_size"_a, "B"_a, "D"_a, "K"_a, "n_steps"_a, "n_trapezoid"_a, "alpha"_a, "sigma2"_a, "seed"_a,
        "offset"_a, "chain_offset"_a, "mh"_a, "x_out"_a, "accept_rate"_a, "n_threads"_a, "Fused whole-move MALA on the mixture (op 7).");
  m.def("cpu_gmm_hmc", threaded(&c::gmm_hmc), rel(), "dtype"_a, "x"_a, "means"_a, "log_weights"_a, "variances"_a,
        "step_size"_a, "B"_a, "D"_a, "K"_a, "n_steps"_a, "n_leapfrog"_a, "alpha"_a, "sigma2"_a, "seed"_a,
        "offset"_a, "chain_offset"_a, "mh"_a, "damping"_a, "x_out"_a, "accept_rate"_a, "n_threads"_a, "Fused whole-move HMC on the mixture (op 8).");
  m.def("cpu_sde_step", threaded(&c::sde_step), rel(), "dtype"_a, "x"_a, "score"_a, "extra_drift"_a, "noise"_a, "B"_a,
        "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "a"_a, "c_s"_a, "c_n"_a, "out"_a, "n_threads"_a,
        "x_new = a x + c_s (score + extra_drift) + c_n xi (op 2).");
  m.def("cpu_guided_sde_step", threaded(&c::guided_sde_step), rel(), "dtype"_a, "x"_a, "score"_a, "score_shift"_a, "v"_a,
        "noise"_a, "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "a"_a, "c_s"_a, "c_v"_a, "c_diff"_a, "c_n"_a, "out"_a, "n_threads"_a,
        "x_new = a x + c_s (score + c_v v + c_diff (score_shift - score)) + c_n xi (op 2b).");
  m.def("cpu_mala_propose", threaded(&c::mala_propose), rel(), "dtype"_a, "x"_a, "score"_a, "step_size"_a, "noise"_a,
        "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "out"_a, "n_threads"_a, "MALA proposal (op 3).");
  m.def("cpu_line_points", threaded(&c::line_points), rel(), "dtype"_a, "x"_a, "x_prop"_a, "B"_a, "D"_a, "n"_a,
        "out"_a, "n_threads"_a, "Interior trapezoid points (op 4).");
  m.def("cpu_score_mh_accept", threaded(&c::score_mh_accept), rel(), "dtype"_a, "x"_a, "x_prop"_a, "score"_a,
        "score_prop"_a, "step_size"_a, "u"_a, "seed"_a, "offset"_a, "chain_offset"_a, "interior"_a, "m"_a, "B"_a,
        "D"_a, "x_new"_a, "score_new"_a, "accepted"_a, "log_alpha"_a, "n_threads"_a,
        "Score-based MH accept (op 5); u = 0: drawn (seed, offset).");
  m.def("cpu_energy_mh_accept", threaded(&c::energy_mh_accept), rel(), "dtype"_a, "x"_a, "x_prop"_a, "score"_a,
        "score_prop"_a, "logp"_a, "logp_prop"_a, "step_size"_a, "u"_a, "seed"_a, "offset"_a, "chain_offset"_a,
        "B"_a, "D"_a, "x_new"_a, "score_new"_a, "logp_new"_a, "accepted"_a, "log_alpha"_a, "n_threads"_a,
        "Exact-energy MALA MH accept; u = 0: drawn (seed, offset).");
  m.def("cpu_normal", threaded(&c::normal), rel(), "dtype"_a, "seed"_a, "offset"_a, "chain_offset"_a, "B"_a, "D"_a,
        "out"_a, "n_threads"_a, "Standard normals (B, D) of draw (seed, offset) (ops.normal).");
  m.def("cpu_uniform", threaded(&c::uniform), rel(), "dtype"_a, "seed"_a, "offset"_a, "chain_offset"_a, "B"_a,
        "out"_a, "n_threads"_a, "MH uniforms (B,) of draw (seed, offset) (ops.uniform).");
  m.def("cpu_leapfrog", threaded(&c::leapfrog), rel(), "dtype"_a, "x"_a, "p"_a, "score"_a, "step_size"_a, "B"_a, "D"_a,
        "x_next"_a, "p_half"_a, "n_threads"_a, "Half kick and drift (op 6a).");
  m.def("cpu_leapfrog_finish", threaded(&c::leapfrog_finish), rel(), "dtype"_a, "x"_a, "x_next"_a, "p_half"_a,
        "score"_a, "score_next"_a, "step_size"_a, "delta_logp"_a, "B"_a, "D"_a, "p_next"_a,
        "delta_logp_next"_a, "n_threads"_a, "Second half kick and trapezoid segment (op 6b).");
  m.def("cpu_hmc_accept", threaded(&c::hmc_accept), rel(), "dtype"_a, "x"_a, "x_prop"_a, "score"_a, "score_prop"_a,
        "p"_a, "p_prop"_a, "delta_logp"_a, "u"_a, "seed"_a, "offset"_a, "chain_offset"_a, "B"_a, "D"_a,
        "x_new"_a, "score_new"_a, "accepted"_a, "log_alpha"_a, "n_threads"_a,
        "HMC accept (op 6c); u = 0: drawn (seed, offset).");
  m.def("cpu_momentum_refresh", threaded(&c::momentum_refresh), rel(), "dtype"_a, "p"_a, "damping"_a, "noise"_a, "B"_a,
        "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "out"_a, "n_threads"_a, "Partial momentum refresh (op 6d).");
  m.def("cpu_em_step_logprob", threaded(&c::em_step_logprob), rel(), "dtype"_a, "x"_a, "drift"_a, "log_var"_a, "x_next"_a,
        "noise"_a, "B"_a, "D"_a, "seed"_a, "offset"_a, "chain_offset"_a, "h"_a, "s2"_a, "e2"_a, "c"_a, "b2"_a, "y"_a, "log_pf"_a,
        "log_pb"_a, "n_threads"_a, "Euler-Maruyama step with its forward / backward log-densities (op 9).");
  m.def("cpu_em_step_logprob_backward", threaded(&c::em_step_logprob_backward), rel(), "dtype"_a, "x"_a, "drift"_a,
        "log_var"_a, "x_next"_a, "g_x_next"_a, "g_log_pf"_a, "g_log_pb"_a, "B"_a, "D"_a, "h"_a, "s2"_a, "e2"_a,
        "c"_a, "b2"_a, "reparam"_a, "g_x"_a, "g_drift"_a, "g_log_var"_a, "g_x_next_out"_a, "n_threads"_a,
        "Gradients of em_step_logprob (op 9).");
  m.def("cpu_mlp_score", threaded(&c::mlp_score), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a, "dims"_a,
        "scalars"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a, "mix_sigma2"_a, "score"_a,
        "n_threads"_a, "Score of a sum of ScoreMLP networks (and a Gaussian mixture).");
  m.def("cpu_mlp_mala", threaded(&c::mlp_mala), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a, "dims"_a,
        "scalars"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a, "mix_sigma2"_a,
        "step_size"_a, "n_steps"_a, "n_trapezoid"_a, "seed"_a, "offset"_a, "chain_offset"_a, "mh"_a, "x_out"_a,
        "accept_rate"_a, "n_threads"_a, "Fused whole-move MALA on a sum of ScoreMLP scores (and a mixture).");
  m.def("cpu_mlp_hmc", threaded(&c::mlp_hmc), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a, "dims"_a,
        "scalars"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a, "mix_sigma2"_a,
        "step_size"_a, "n_steps"_a, "n_leapfrog"_a, "seed"_a, "offset"_a, "chain_offset"_a, "mh"_a, "damping"_a,
        "x_out"_a, "accept_rate"_a, "n_threads"_a, "Fused whole-move HMC on a sum of ScoreMLP scores (and a mixture).");
  m.def("cpu_mlp_energy", threaded(&c::mlp_energy), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a, "dims"_a,
        "scalars"_a, "energy"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a, "mix_sigma2"_a,
        "score"_a, "logp"_a, "n_threads"_a, "Score and log-density of a sum of EnergyMLP networks (and a mixture).");
  m.def("cpu_mlp_energy_mala", threaded(&c::mlp_energy_mala), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a,
        "dims"_a, "scalars"_a, "energy"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a,
        "mix_sigma2"_a, "step_size"_a, "n_steps"_a, "n_trapezoid"_a, "seed"_a, "offset"_a, "chain_offset"_a, "mh"_a,
        "x_out"_a, "accept_rate"_a, "n_threads"_a,
        "Fused whole-move MALA (score, exact energy or no MH) on a sum of score and energy networks (and a mixture).");
  m.def("cpu_mlp_energy_hmc", threaded(&c::mlp_energy_hmc), rel(), "dtype"_a, "x"_a, "B"_a, "D"_a, "ptrs"_a,
        "dims"_a, "scalars"_a, "energy"_a, "means"_a, "log_weights"_a, "variances"_a, "K"_a, "mix_alpha"_a,
        "mix_sigma2"_a, "step_size"_a, "n_steps"_a, "n_leapfrog"_a, "seed"_a, "offset"_a, "chain_offset"_a, "mh"_a,
        "damping"_a, "x_out"_a, "accept_rate"_a, "n_threads"_a,
        "Fused whole-move HMC (score, exact energy or no MH) on a sum of score and energy networks (and a mixture).");
  m.def("cpu_mlp_net", threaded(&c::mlp_net), rel(), "dtype"_a, "x"_a, "B"_a, "Din"_a, "H"_a, "O"_a, "params"_a,
        "act"_a, "out"_a, "n_threads"_a, "One MLP's output on its input rows (the training pass's forward).");
  m.def("cpu_mlp_net_train", threaded(&c::mlp_net_train), rel(), "dtype"_a, "x"_a, "B"_a, "Din"_a, "H"_a, "O"_a,
        "params"_a, "act"_a, "out"_a, "act_hidden"_a, "n_threads"_a,
        "mlp_net's output and the hidden activations its backward reads (the training pass's forward).");
  m.def("cpu_mlp_net_backward", threaded(&c::mlp_net_backward), rel(), "dtype"_a, "x"_a, "B"_a, "Din"_a, "H"_a,
        "O"_a, "params"_a, "act"_a, "g_out"_a, "act_hidden"_a, "g_x"_a, "g_params"_a, "n_threads"_a,
        "Gradients of sum(g_out * out) of mlp_net w.r.t. every weight and bias (and its input), from "
        "mlp_net_train's act_hidden when given (else the forward is recomputed).");
  m.def("cpu_mlp_net_lsq", threaded(&c::mlp_net_lsq), rel(), "dtype"_a, "x"_a, "B"_a, "Din"_a, "H"_a, "O"_a,
        "params"_a, "act"_a, "c"_a, "k"_a, "loss"_a, "g_params"_a, "n_threads"_a,
        "The rows' |c + k out|^2 of mlp_net and the gradients of their mean w.r.t. every weight and bias.");
  m.def("cpu_mlp_net_energy_lsq", threaded(&c::mlp_net_energy_lsq), rel(), "dtype"_a, "x"_a, "B"_a, "Din"_a, "H"_a,
        "O"_a, "params"_a, "act"_a, "c"_a, "v"_a, "sigma"_a, "z"_a, "loss"_a, "g_params"_a, "n_threads"_a,
        "The rows' |sigma s + z|^2 of the energy network's score s and the gradients of their mean w.r.t. every "
        "weight and bias.");
  // the policy kernels take n_threads themselves (before their outputs), and the Langevin term last
  py::class_<c::LangevinArgs>(m, "PolicyLangevin", "The Langevin term of the policy kernels (default: none).")
      .def(py::init([](uintptr_t lgv, int64_t width, double lgv_clip, uintptr_t scores, int64_t target_kind,
                       uintptr_t target_means, int64_t target_K, double target_param) {
             return c::LangevinArgs{lgv, width, lgv_clip, scores, target_kind, target_means, target_K, target_param};
           }),
           "lgv"_a = 0, "width"_a = 0, "lgv_clip"_a = 0.0, "scores"_a = 0, "target_kind"_a = 0, "target_means"_a = 0,
           "target_K"_a = 0, "target_param"_a = 0.0);
  m.def("cpu_policy_rollout", &c::policy_rollout, rel(), "dtype"_a, "x0"_a, "temb"_a, "ws"_a, "bs"_a, "hw"_a, "hb"_a,
        "wo"_a, "bo"_a, "ts"_a, "B"_a, "D"_a, "H"_a, "T"_a, "sigma"_a, "h"_a, "explore"_a, "clip"_a, "seed"_a,
        "chain_offset"_a, "n_threads"_a, "states"_a, "log_pf"_a, "log_pb"_a, "act_hidden"_a = 0,
        "langevin"_a = c::LangevinArgs(),
        "Whole-trajectory rollout of the DriftNet policy with Euler-Maruyama steps and their log p_F / log p_B.");
  m.def("cpu_policy_log_pf", &c::policy_log_pf, rel(), "dtype"_a, "states"_a, "temb"_a, "ws"_a, "bs"_a, "hw"_a,
        "hb"_a, "wo"_a, "bo"_a, "B"_a, "D"_a, "H"_a, "T"_a, "sigma"_a, "h"_a, "clip"_a, "n_threads"_a, "log_pf"_a,
        "langevin"_a = c::LangevinArgs(),
        "log p_F (B, T) of every transition of given trajectories under the DriftNet policy.");
  m.def("cpu_policy_log_pf_backward", &c::policy_log_pf_backward, rel(), "dtype"_a, "states"_a, "temb"_a, "ws"_a,
        "bs"_a, "hw"_a, "hb"_a, "wo"_a, "bo"_a, "g_log_pf"_a, "B"_a, "D"_a, "H"_a, "T"_a, "sigma"_a, "h"_a, "clip"_a,
        "n_threads"_a, "g_temb"_a, "g_ws"_a, "g_bs"_a, "g_hw"_a, "g_hb"_a, "g_wo"_a, "g_bo"_a,
        "langevin"_a = c::LangevinArgs(), "g_lgv"_a = 0, "act_hidden"_a = 0,
        "Gradients of sum(g_log_pf * log_pf) w.r.t. temb and every weight and bias of the policy.");
  m.def("cpu_policy_reparam_backward", &c::policy_reparam_backward, rel(), "dtype"_a, "states"_a, "temb"_a, "ws"_a,
        "bs"_a, "hw"_a, "hb"_a, "wo"_a, "bo"_a, "ts"_a, "g_states"_a, "g_log_pb"_a, "B"_a, "D"_a, "H"_a, "T"_a,
        "sigma"_a, "h"_a, "clip"_a, "n_threads"_a, "g_temb"_a, "g_ws"_a, "g_bs"_a, "g_hw"_a, "g_hb"_a, "g_wo"_a,
        "g_bo"_a, "langevin"_a = c::LangevinArgs(), "g_lgv"_a = 0,
        "Gradients through the reparameterised policy rollout (PIS) w.r.t. temb and every weight and bias.");
}
