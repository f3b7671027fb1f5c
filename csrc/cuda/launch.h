// Entry points of the fastsamp CUDA kernels, by family: gmm.cu, mh.cu, sde.cu, trajectory.cu
// (bound as fastsamp._C.cuda_<op> in csrc/cuda/register.cpp). Plain C++: no CUDA or pybind11
// headers, so g++ can include it.
//
// Conventions (docs/backend-contract.md): the arguments, in order, of the cpu_<op> functions
// (csrc/cpu/ops.h) plus the CUDA stream (a cudaStream_t as an integer) last. dtype 0 =
// float32, 1 = float64; tensors are data pointers (uintptr_t) of contiguous device buffers of
// that dtype (except `accepted`, torch.bool = 1 byte); optional tensors are 0. Launches are
// asynchronous on `stream` and use the device that is current for the calling thread. Errors
// throw std::runtime_error (CUDA errors, message includes cudaGetErrorString) or
// std::invalid_argument (unsupported sizes / dtype).
#pragma once

#include <cstdint>

namespace fastsamp {
namespace cuda {

// Largest D each mixture kernel supports.
constexpr int64_t kGmmScoreMaxD = 4096;
constexpr int64_t kGmmMalaMaxD = 1024;

// ------------------------------------------------------------------ gmm (gmm.cu)

// Op 1. x (B, D), means (K, D), log_weights (K,), variances (K,)
//  -> score (B, D), logp (B,). D <= kGmmScoreMaxD.
void gmm_score(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
               int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
               uintptr_t logp, uintptr_t stream);

// Op 7. x (B, D), mixture as op 1, step_size (B,) -> x_out (B, D), accept_rate (B,).
// mh: 0 score (trapezoid), 1 energy, 2 none. D <= kGmmMalaMaxD.
void gmm_mala(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
              uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
              double alpha, double sigma2, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t,
              uint64_t chain_offset, uintptr_t chain_offset_t, int mh,
              uintptr_t x_out, uintptr_t accept_rate, uintptr_t stream);

// ------------------------------------------------------------------- mh (mh.cu)

// Op 5. x, x_prop, score, score_prop (B, D); step_size, u (B,); interior (m, B, D), or 0: the m sets after
// score_prop's first B rows (score_prop then (m + 1) B rows)
//  -> x_new, score_new (B, D), accepted (B,) bool, log_alpha (B,).
void score_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                     uintptr_t step_size, uintptr_t u, uint64_t seed, uintptr_t seed_t, uint64_t offset,
                     uintptr_t offset_t, uint64_t chain_offset, uintptr_t chain_offset_t,
                     uintptr_t interior, int64_t m, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                     uintptr_t accepted, uintptr_t log_alpha, uintptr_t stream);

// ---------------------------------------------------- random (random.cu)
void normal(int dtype, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
uintptr_t chain_offset_t, int64_t B, int64_t D, uintptr_t out,
            uintptr_t stream);
void uniform(int dtype, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
uintptr_t chain_offset_t, int64_t B, uintptr_t out,
             uintptr_t stream);

// ------------------------------------------------------------------ sde (sde.cu)

// Op 2. x, score, extra_drift (optional), noise (optional: Philox) (B, D) -> out (B, D).
void sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise, int64_t B,
              int64_t D, uint64_t seed, uintptr_t seed_t, uint64_t offset, uintptr_t offset_t, uint64_t chain_offset,
              uintptr_t chain_offset_t, double a, double c_s, double c_n,
              uintptr_t out, uintptr_t stream);

// ---------------------------------------------------- trajectory (trajectory.cu)

// Op 9. x, drift, log_var (optional), x_next (optional: sample), noise (optional: Philox) (B, D)
//  -> y (B, D; not written when x_next is given), log_pf, log_pb (B,).
void em_step_logprob(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uintptr_t seed_t, uint64_t offset,
                     uintptr_t offset_t,
                     uint64_t chain_offset, uintptr_t chain_offset_t, double h, double s2, double e2, double c,
                     double b2, uintptr_t y,
                     uintptr_t log_pf, uintptr_t log_pb, uintptr_t stream);

// Op 9 backward. g_x_next optional (0); g_log_var written when log_var is given, g_x_next_out
// when not 0.
void em_step_logprob_backward(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                              uintptr_t g_x_next, uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D,
                              double h, double s2, double e2, double c, double b2, bool reparam, uintptr_t g_x,
                              uintptr_t g_drift, uintptr_t g_log_var, uintptr_t g_x_next_out, uintptr_t stream);

}  // namespace cuda
}  // namespace fastsamp
