// Python bindings of the CUDA launchers (compiled by g++ with pybind11; the
// kernels themselves live in csrc/cuda/*.cu). Pointers arrive as python ints
// (tensor.data_ptr(), 0 = not given), dtype first (0 float32, 1 float64),
// the CUDA stream (torch.cuda.current_stream().cuda_stream) last. Launches are
// asynchronous; launch errors raise RuntimeError, bad sizes ValueError.
// Nothing here touches the CUDA runtime at import time.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cuda/launch.h"

namespace py = pybind11;

namespace {

inline const void* cptr(uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* mptr(uintptr_t p) { return reinterpret_cast<void*>(p); }

}  // namespace

void register_cuda_ops(py::module_& m) {
  namespace fc = fastsamp::cuda;
  // Same arguments, in the same order, as the cpu_<op> functions of
  // csrc/cpu/register.cpp, plus the stream last.

  m.def(
      "cuda_gmm_score",
      [](int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
         int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
         uintptr_t logp, uintptr_t stream) {
        fc::launch_gmm_score(dtype, cptr(x), cptr(means), cptr(log_weights), cptr(variances),
                             mptr(score), mptr(logp), B, D, K, alpha, sigma2, mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("means"), py::arg("log_weights"),
      py::arg("variances"), py::arg("B"), py::arg("D"), py::arg("K"), py::arg("alpha"),
      py::arg("sigma2"), py::arg("score"), py::arg("logp"), py::arg("stream"),
      "Score and log-density of the Gaussian mixture (op 1), CUDA, async on `stream`.");

  m.def(
      "cuda_gmm_mala",
      [](int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
         uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps,
         int64_t n_trapezoid, double alpha, double sigma2, uint64_t seed, uint64_t offset,
         uint64_t chain_offset, int mh,
         uintptr_t x_out, uintptr_t accept_rate, uintptr_t stream) {
        fc::launch_gmm_mala(dtype, cptr(x), cptr(means), cptr(log_weights), cptr(variances),
                            cptr(step_size), mptr(x_out), mptr(accept_rate), B, D, K, n_steps,
                            n_trapezoid, alpha, sigma2, seed, offset, chain_offset, mh, mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("means"), py::arg("log_weights"),
      py::arg("variances"), py::arg("step_size"), py::arg("B"), py::arg("D"), py::arg("K"),
      py::arg("n_steps"), py::arg("n_trapezoid"), py::arg("alpha"), py::arg("sigma2"),
      py::arg("seed"), py::arg("offset"), py::arg("chain_offset"), py::arg("mh"), py::arg("x_out"),
      py::arg("accept_rate"), py::arg("stream"),
      "Fused whole-move MALA on the mixture (op 7), CUDA, async on `stream`. D <= 1024.");

  m.def(
      "cuda_sde_step",
      [](int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise,
         int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double a, double c_s,
         double c_n,
         uintptr_t out, uintptr_t stream) {
        fc::launch_sde_step(dtype, cptr(x), cptr(score), cptr(extra_drift), cptr(noise),
                            mptr(out), B, D, seed, offset, chain_offset, a, c_s, c_n, mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("score"), py::arg("extra_drift"), py::arg("noise"),
      py::arg("B"), py::arg("D"), py::arg("seed"), py::arg("offset"), py::arg("chain_offset"), py::arg("a"),
      py::arg("c_s"), py::arg("c_n"), py::arg("out"), py::arg("stream"),
      "x_new = a x + c_s (score + extra_drift) + c_n xi (op 2), CUDA, async on `stream`.");

  m.def(
      "cuda_score_mh_accept",
      [](int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
         uintptr_t step_size, uintptr_t u, uintptr_t interior, int64_t n_interior, int64_t B,
         int64_t D, uintptr_t x_new, uintptr_t score_new, uintptr_t accepted,
         uintptr_t log_alpha, uintptr_t stream) {
        fc::launch_score_mh_accept(dtype, cptr(x), cptr(x_prop), cptr(score), cptr(score_prop),
                                   cptr(step_size), cptr(u), cptr(interior), n_interior,
                                   mptr(x_new), mptr(score_new), mptr(accepted),
                                   mptr(log_alpha), B, D, mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("x_prop"), py::arg("score"), py::arg("score_prop"),
      py::arg("step_size"), py::arg("u"), py::arg("interior"), py::arg("m"), py::arg("B"),
      py::arg("D"), py::arg("x_new"), py::arg("score_new"), py::arg("accepted"),
      py::arg("log_alpha"), py::arg("stream"),
      "Score-based MH accept (op 5), CUDA, async on `stream`.");
  m.def(
      "cuda_em_step_logprob",
      [](int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next, uintptr_t noise,
         int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double h, double s2,
         double e2, double c,
         double b2, uintptr_t y, uintptr_t log_pf, uintptr_t log_pb, uintptr_t stream) {
        fc::launch_em_step_logprob(dtype, cptr(x), cptr(drift), cptr(log_var), cptr(x_next), cptr(noise),
                                   mptr(y), mptr(log_pf), mptr(log_pb), B, D, seed, offset, chain_offset, h, s2, e2, c,
                                   b2,
                                   mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("drift"), py::arg("log_var"), py::arg("x_next"),
      py::arg("noise"), py::arg("B"), py::arg("D"), py::arg("seed"), py::arg("offset"), py::arg("chain_offset"),
      py::arg("h"),
      py::arg("s2"), py::arg("e2"), py::arg("c"), py::arg("b2"), py::arg("y"), py::arg("log_pf"),
      py::arg("log_pb"), py::arg("stream"),
      "Euler-Maruyama step with its forward / backward log-densities (op 9), CUDA, async on `stream`.");

  m.def(
      "cuda_em_step_logprob_backward",
      [](int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next, uintptr_t g_x_next,
         uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D, double h, double s2, double e2,
         double c, double b2, bool reparam, uintptr_t g_x, uintptr_t g_drift, uintptr_t g_log_var,
         uintptr_t g_x_next_out, uintptr_t stream) {
        fc::launch_em_step_logprob_backward(dtype, cptr(x), cptr(drift), cptr(log_var), cptr(x_next),
                                            cptr(g_x_next), cptr(g_log_pf), cptr(g_log_pb), mptr(g_x),
                                            mptr(g_drift), mptr(g_log_var), mptr(g_x_next_out), B, D, h, s2,
                                            e2, c, b2, reparam, mptr(stream));
      },
      py::arg("dtype"), py::arg("x"), py::arg("drift"), py::arg("log_var"), py::arg("x_next"),
      py::arg("g_x_next"), py::arg("g_log_pf"), py::arg("g_log_pb"), py::arg("B"), py::arg("D"),
      py::arg("h"), py::arg("s2"), py::arg("e2"), py::arg("c"), py::arg("b2"), py::arg("reparam"),
      py::arg("g_x"), py::arg("g_drift"), py::arg("g_log_var"), py::arg("g_x_next_out"),
      py::arg("stream"), "Gradients of em_step_logprob (op 9), CUDA, async on `stream`.");
}
