// Host launchers of the fastsamp CUDA kernels (implemented in csrc/cuda/*.cu,
// wrapped for Python in csrc/cuda/register.cpp). Plain C++: no CUDA or
// pybind11 headers, so g++ can include it.
//
// Conventions (docs/backend-contract.md): dtype 0 = float32, 1 = float64;
// tensors are contiguous device buffers of that dtype (except `accepted`,
// torch.bool = 1 byte); optional tensors are nullptr; `stream` is a
// cudaStream_t. Launches are asynchronous on `stream` and use the device that
// is current for the calling thread. Errors throw std::runtime_error (CUDA
// errors, message includes cudaGetErrorString) or std::invalid_argument
// (unsupported sizes / dtype).
#pragma once

#include <cstdint>

namespace fastsamp {
namespace cuda {

// Op 1. x (B, D), means (K, D), log_weights (K,), variances (K,)
//  -> score (B, D), logp (B,). D <= 4096.
void launch_gmm_score(int dtype, const void* x, const void* means, const void* log_weights,
                      const void* variances, void* score, void* logp, int64_t B, int64_t D,
                      int64_t K, double alpha, double sigma2, void* stream);

// Op 2. x, score, extra_drift (nullable), noise (nullable) (B, D) -> out (B, D).
void launch_sde_step(int dtype, const void* x, const void* score, const void* extra_drift,
                     const void* noise, void* out, int64_t B, int64_t D, uint64_t seed,
                     uint64_t offset, uint64_t chain_offset, double a, double c_s, double c_n, void* stream);

// Op 5. x, x_prop, score, score_prop (B, D); step_size, u (B,);
// interior (m, B, D) or nullptr with m = 0
//  -> x_new, score_new (B, D), accepted (B,) bool, log_alpha (B,).
void launch_score_mh_accept(int dtype, const void* x, const void* x_prop, const void* score,
                            const void* score_prop, const void* step_size, const void* u,
                            const void* interior, int64_t m, void* x_new, void* score_new,
                            void* accepted, void* log_alpha, int64_t B, int64_t D, void* stream);

// Op 7. x (B, D), mixture as op 1, step_size (B,) -> x_out (B, D), accept_rate (B,).
// mh: 0 score (trapezoid), 1 energy, 2 none. D <= 1024.
void launch_gmm_mala(int dtype, const void* x, const void* means, const void* log_weights,
                     const void* variances, const void* step_size, void* x_out, void* accept_rate,
                     int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
                     double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int mh,
                     void* stream);

// Op 9. x, drift, log_var (nullable), x_next (nullable: sample), noise (nullable: Philox) (B, D)
//  -> y (B, D; not written when x_next is given), log_pf, log_pb (B,).
void launch_em_step_logprob(int dtype, const void* x, const void* drift, const void* log_var,
                            const void* x_next, const void* noise, void* y, void* log_pf, void* log_pb,
                            int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double h, double s2,
                            double e2, double c, double b2, void* stream);

// Op 9 backward. g_x_next nullable (0); g_log_var written when log_var is given, g_x_next_out
// when not null.
void launch_em_step_logprob_backward(int dtype, const void* x, const void* drift, const void* log_var,
                                     const void* x_next, const void* g_x_next, const void* g_log_pf,
                                     const void* g_log_pb, void* g_x, void* g_drift, void* g_log_var,
                                     void* g_x_next_out, int64_t B, int64_t D, double h, double s2, double e2,
                                     double c, double b2, bool reparam, void* stream);

// Largest D each mixture kernel supports.
constexpr int64_t kGmmScoreMaxD = 4096;
constexpr int64_t kGmmMalaMaxD = 1024;

}  // namespace cuda
}  // namespace fastsamp
