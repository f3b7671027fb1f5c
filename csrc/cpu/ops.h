// Entry points of the C++ CPU kernels (bound as fastsamp._C.cpu_<op> in
// csrc/cpu/register.cpp). Tensors are passed as data pointers (uintptr_t),
// `dtype` is 0 = float32, 1 = float64; optional tensors are pointer 0. `chain_offset` is the global
// index of chain 0 (the Philox chain word of row b is chain_offset + b).
// See docs/backend-contract.md for the math of each op.
#pragma once
#include <cstdint>
#include <vector>

namespace fastsamp {
namespace cpu {

void gmm_score(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
               int64_t B, int64_t D, int64_t K, double alpha, double sigma2, uintptr_t score,
               uintptr_t logp);

void gmm_mala(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
              uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_trapezoid,
              double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
              uintptr_t x_out,
              uintptr_t accept_rate);

void gmm_hmc(int dtype, uintptr_t x, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
             uintptr_t step_size, int64_t B, int64_t D, int64_t K, int64_t n_steps, int64_t n_leapfrog,
             double alpha, double sigma2, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh, double damping,
             uintptr_t x_out, uintptr_t accept_rate);

void sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t extra_drift, uintptr_t noise, int64_t B,
              int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, double a, double c_s, double c_n,
              uintptr_t out);

void guided_sde_step(int dtype, uintptr_t x, uintptr_t score, uintptr_t score_shift, uintptr_t v,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double a, double c_s, double c_v, double c_diff, double c_n, uintptr_t out);

void mala_propose(int dtype, uintptr_t x, uintptr_t score, uintptr_t step_size, uintptr_t noise, int64_t B,
                  int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out);

void line_points(int dtype, uintptr_t x, uintptr_t x_prop, int64_t B, int64_t D, int64_t n, uintptr_t out);

// The accepts read u (B,), or draw it when u is 0: the MH uniforms of (seed, offset) for chains
// chain_offset + b (ops.uniform's bits). score_mh_accept's m interior score sets are `interior` (m, B, D), or
// with interior 0 the m sets after score_prop's first B rows (score_prop then (m + 1) B rows: one batch's scores).
void score_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                     uintptr_t step_size, uintptr_t u, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     uintptr_t interior, int64_t m, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                     uintptr_t accepted, uintptr_t log_alpha);

void energy_mh_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop,
                      uintptr_t logp, uintptr_t logp_prop, uintptr_t step_size, uintptr_t u, uint64_t seed,
                      uint64_t offset, uint64_t chain_offset, int64_t B, int64_t D, uintptr_t x_new,
                      uintptr_t score_new, uintptr_t logp_new, uintptr_t accepted, uintptr_t log_alpha);

void leapfrog(int dtype, uintptr_t x, uintptr_t p, uintptr_t score, uintptr_t step_size, int64_t B,
              int64_t D, uintptr_t x_next, uintptr_t p_half);

void leapfrog_finish(int dtype, uintptr_t x, uintptr_t x_next, uintptr_t p_half, uintptr_t score,
                     uintptr_t score_next, uintptr_t step_size, uintptr_t delta_logp, int64_t B, int64_t D,
                     uintptr_t p_next, uintptr_t delta_logp_next);

void hmc_accept(int dtype, uintptr_t x, uintptr_t x_prop, uintptr_t score, uintptr_t score_prop, uintptr_t p,
                uintptr_t p_prop, uintptr_t delta_logp, uintptr_t u, uint64_t seed, uint64_t offset,
                uint64_t chain_offset, int64_t B, int64_t D, uintptr_t x_new, uintptr_t score_new,
                uintptr_t accepted, uintptr_t log_alpha);

// ops.normal (B, D) and ops.uniform (B,) of draw (seed, offset) for chains chain_offset + b.
void normal(int dtype, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t B, int64_t D, uintptr_t out);
void uniform(int dtype, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t B, uintptr_t out);

void momentum_refresh(int dtype, uintptr_t p, double damping, uintptr_t noise, int64_t B, int64_t D,
                      uint64_t seed, uint64_t offset, uint64_t chain_offset, uintptr_t out);

// Op 9. x, drift, log_var (nullable), x_next (nullable: sample), noise (nullable: Philox) (B, D)
//  -> y (B, D; not written when x_next is given), log_pf, log_pb (B,).
void em_step_logprob(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                     uintptr_t noise, int64_t B, int64_t D, uint64_t seed, uint64_t offset, uint64_t chain_offset,
                     double h, double s2, double e2, double c, double b2, uintptr_t y, uintptr_t log_pf, uintptr_t log_pb);

// Op 9 backward. g_x_next nullable (0); g_log_var written when log_var is given, g_x_next_out when
// not null.
void em_step_logprob_backward(int dtype, uintptr_t x, uintptr_t drift, uintptr_t log_var, uintptr_t x_next,
                              uintptr_t g_x_next, uintptr_t g_log_pf, uintptr_t g_log_pb, int64_t B, int64_t D,
                              double h, double s2, double e2, double c, double b2, bool reparam, uintptr_t g_x,
                              uintptr_t g_drift, uintptr_t g_log_var, uintptr_t g_x_next_out);

// The Langevin term of a DriftNet (langevin=True) for the policy kernels (lgv = 0: none):
// drift = clamp(net + lgv[i] ⊙ clamp(score, ±lgv_clip), ±clip), lgv (T, width) with width 1 or D, scores
// (T, B, D) the target's scores at states[:-1]: given, or (target_kind != 0; always in the rollout) computed
// and written there for the target of target_kind: 1 isotropic mixture (target_means (K, D), target_param =
// its variance), 2 funnel (target_param = σ), 3 many-well (cpu/target_score.h).
struct LangevinArgs {
  uintptr_t lgv = 0;
  int64_t width = 0;
  double lgv_clip = 0;
  uintptr_t scores = 0;
  int64_t target_kind = 0;
  uintptr_t target_means = 0;
  int64_t target_K = 0;
  double target_param = 0;
};

// Whole-trajectory kernels of the DriftNet policy (trajectory_policy.cpp): temb (T, H); ws (H, D), bs (H);
// hw, hb: the L hidden (H, H) weights and (H,) biases; wo (2D, H), bo (2D); ts (T,) float64 step times.
// They take n_threads themselves (and set up their KernelScope). Rollout: states (T+1, B, D), log_pf,
// log_pb (B, T); x0 nullable (zeros).
void policy_rollout(int dtype, uintptr_t x0, uintptr_t temb, uintptr_t ws, uintptr_t bs,
                    const std::vector<uintptr_t>& hw, const std::vector<uintptr_t>& hb, uintptr_t wo, uintptr_t bo,
                    uintptr_t ts, int64_t B, int64_t D, int64_t H, int64_t T, double sigma, double h, double explore,
                    double clip, uint64_t seed, uint64_t chain_offset, int64_t n_threads, uintptr_t states,
                    uintptr_t log_pf, uintptr_t log_pb, uintptr_t act_hidden, const LangevinArgs& la);

// log p_F (B, T) of the transitions of given states (T+1, B, D).
void policy_log_pf(int dtype, uintptr_t states, uintptr_t temb, uintptr_t ws, uintptr_t bs,
                   const std::vector<uintptr_t>& hw, const std::vector<uintptr_t>& hb, uintptr_t wo, uintptr_t bo,
                   int64_t B, int64_t D, int64_t H, int64_t T, double sigma, double h, double clip, int64_t n_threads,
                   uintptr_t log_pf, const LangevinArgs& la);

// Kept hidden activations act_hidden (T, 2(L+1), B, H), u_k at [i][k] and act'(z_k) at [i][L+1+k]: written by the
// rollout when given; read by log p_F's backward when given, instead of the forward through the hidden layers.
// Gradients of Σ g_log_pf · log_pf w.r.t. temb, every weight and bias (and lgv: g_lgv) (the states are constants).
void policy_log_pf_backward(int dtype, uintptr_t states, uintptr_t temb, uintptr_t ws, uintptr_t bs,
                            const std::vector<uintptr_t>& hw, const std::vector<uintptr_t>& hb, uintptr_t wo,
                            uintptr_t bo, uintptr_t g_log_pf, int64_t B, int64_t D, int64_t H, int64_t T, double sigma,
                            double h, double clip, int64_t n_threads, uintptr_t g_temb, uintptr_t g_ws, uintptr_t g_bs,
                            const std::vector<uintptr_t>& g_hw, const std::vector<uintptr_t>& g_hb, uintptr_t g_wo,
                            uintptr_t g_bo, const LangevinArgs& la, uintptr_t g_lgv, uintptr_t act_hidden);

// Gradients through the reparameterised rollout (PIS): of a loss with gradients g_states (T+1, B, D) on
// the states and g_log_pb (B, T) on their log p_B (either nullable), w.r.t. temb and every weight and
// bias (and lgv); ts (T,) float64 step times. log p_F has no gradient on a reparameterised path (v = q ξ).
void policy_reparam_backward(int dtype, uintptr_t states, uintptr_t temb, uintptr_t ws, uintptr_t bs,
                             const std::vector<uintptr_t>& hw, const std::vector<uintptr_t>& hb, uintptr_t wo,
                             uintptr_t bo, uintptr_t ts, uintptr_t g_states, uintptr_t g_log_pb, int64_t B, int64_t D,
                             int64_t H, int64_t T, double sigma, double h, double clip, int64_t n_threads,
                             uintptr_t g_temb, uintptr_t g_ws, uintptr_t g_bs, const std::vector<uintptr_t>& g_hw,
                             const std::vector<uintptr_t>& g_hb, uintptr_t g_wo, uintptr_t g_bo, const LangevinArgs& la,
                             uintptr_t g_lgv);

// Score networks (score_mlp.cpp): the sum of the ScoreMLP networks given by the flat lists ptrs / dims /
// scalars and, when K > 0, the Gaussian mixture (means, log_weights, variances; op 1 at mix_alpha,
// mix_sigma2). Per network, in order: ptrs [freq (F), data_mean (D), W_0 (H, D + 2F), b_0, W_out (D, H),
// b_out, W_1, b_1, ..., W_L, b_L], dims [F, H, L, act (0 GELU, 1 SiLU)], scalars [t, alpha, sigma2,
// data_var]. mlp_score: score (B, D). mlp_mala: op 7 on that score with mh 0 (score) or 2 (none).
void mlp_score(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
               const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
               uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
               uintptr_t score);

void mlp_mala(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
              const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
              uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
              uintptr_t step_size, int64_t n_steps, int64_t n_trapezoid, uint64_t seed, uint64_t offset,
              uint64_t chain_offset, int64_t mh, uintptr_t x_out, uintptr_t accept_rate);

// mlp_hmc: op 8 on that score with mh 0 (score) or 2 (none).
void mlp_hmc(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
             const std::vector<int64_t>& dims, const std::vector<double>& scalars, uintptr_t means,
             uintptr_t log_weights, uintptr_t variances, int64_t K, double mix_alpha, double mix_sigma2,
             uintptr_t step_size, int64_t n_steps, int64_t n_leapfrog, uint64_t seed, uint64_t offset,
             uint64_t chain_offset, int64_t mh, double damping, uintptr_t x_out, uintptr_t accept_rate);

// Sums with energy networks (score_mlp.cpp, cpu/mlp_sum.h): the lists above and `energy`, one flag per network
// (1: an EnergyMLP energy network, E = |x − α m − √v f|²/(2v); 0: a score network). mlp_energy: score (B, D)
// and log-density (B,) of a sum of energy networks (and the mixture). mlp_energy_mala / mlp_energy_hmc: op 7 /
// op 8 with mh 0 (score), 1 (exact energy: every factor an energy network or the mixture) or 2 (none).
void mlp_energy(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                int64_t K, double mix_alpha, double mix_sigma2, uintptr_t score, uintptr_t logp);

void mlp_energy_mala(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                     const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                     const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                     int64_t K, double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps,
                     int64_t n_trapezoid, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
                     uintptr_t x_out, uintptr_t accept_rate);

void mlp_energy_hmc(int dtype, uintptr_t x, int64_t B, int64_t D, const std::vector<uintptr_t>& ptrs,
                    const std::vector<int64_t>& dims, const std::vector<double>& scalars,
                    const std::vector<int64_t>& energy, uintptr_t means, uintptr_t log_weights, uintptr_t variances,
                    int64_t K, double mix_alpha, double mix_sigma2, uintptr_t step_size, int64_t n_steps,
                    int64_t n_leapfrog, uint64_t seed, uint64_t offset, uint64_t chain_offset, int64_t mh,
                    double damping, uintptr_t x_out, uintptr_t accept_rate);

// One MLP (mlp_net.cpp), for training: out (B, O) of the input rows x (B, Din) through params = [W_in (H, Din),
// b_in, W_out (O, H), b_out, W_1, b_1, ..., W_L, b_L] with act (0 GELU, 1 SiLU) after every layer but the last.
void mlp_net(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O, const std::vector<uintptr_t>& params,
             int64_t act, uintptr_t out);

// The same forward keeping the hidden activations for the backward: act_hidden (2(L+1), B, H), u_k at [k] and
// act'(z_k) at [L+1+k].
void mlp_net_train(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                   const std::vector<uintptr_t>& params, int64_t act, uintptr_t out, uintptr_t act_hidden);

// Its backward: the gradients of Σ g_out · out w.r.t. every parameter (g_params, shaped as params) and, when
// g_x is not 0, w.r.t. x; from mlp_net_train's act_hidden when it is not 0, else recomputing the forward.
void mlp_net_backward(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                      const std::vector<uintptr_t>& params, int64_t act, uintptr_t g_out, uintptr_t act_hidden,
                      uintptr_t g_x, const std::vector<uintptr_t>& g_params);

// A least-squares loss of it: loss (B,) the rows' |r_b|², r_b = c_b + k_b out_b (c (B, O), k (B,)), and g_params the
// gradients of their mean w.r.t. every parameter, in one pass.
void mlp_net_lsq(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                 const std::vector<uintptr_t>& params, int64_t act, uintptr_t c, uintptr_t k, uintptr_t loss,
                 const std::vector<uintptr_t>& g_params);

// The same loss for the score of an energy network, E = |r|²/(2v), r = c − √v out, s = −∇E = −r/v + J_fᵀ r/√v
// (J_f the Jacobian of out in the first O input columns, O <= Din): loss (B,) the rows' |σ_b s_b + z_b|² (c, z
// (B, O), v, sigma (B,)) and g_params the gradients of their mean w.r.t. every parameter (through J_f: exact).
void mlp_net_energy_lsq(int dtype, uintptr_t x, int64_t B, int64_t Din, int64_t H, int64_t O,
                        const std::vector<uintptr_t>& params, int64_t act, uintptr_t c, uintptr_t v, uintptr_t sigma,
                        uintptr_t z, uintptr_t loss, const std::vector<uintptr_t>& g_params);

}  // namespace cpu
}  // namespace fastsamp
