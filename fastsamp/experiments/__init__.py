"""Experiments and paper reproductions built on the fastsamp core (not part of the library API). Each
command-line verb lives in one module, with its options (`add_arguments`), its cross-option checks
(`check`) and `main(args)`; fastsamp/cli.py only maps verbs to modules:

    annealed_mixture  `fastsamp sample` (the main job): annealed score-MH MALA on a Gaussian mixture
    bench             `fastsamp bench`: every op on every backend against eager PyTorch and torch.compile
    composition       `fastsamp compose`: products of 2-D mixtures and of trained score MLPs
    tilting           `fastsamp importance`: training-free importance sampling with exact answers
    offpolicy         `fastsamp train`: off-policy diffusion samplers on benchmark targets, the resumable table
    offpolicy_released  the released gfn-diffusion estimator and training steps, written out for the table's checks
    sampler_checks    a saved diffusion sampler's evaluation draws and fused-against-eager loss and gradient (checks)
    lgcp_reference    a reference log Z of the LGCP target (Laplace, AIS) and saved models against it
                      (`python benchmarks/offpolicy_checks.py lgcp`)
    outsourced        `fastsamp outsourced`: posterior sampling in the noise space of the digit generators
    product2d         `fastsamp product2d`: the MCMC-correction paper's 2-D product of trained ring × bar models
    guided_digits     classifier-guided composition p_t(x)·p_t(y|x)^λ on the 8×8 digits
                      (`python benchmarks/guided_digits.py`)
    digits            the 8×8 digit data, generators, classifiers, rewards and metrics behind `outsourced`
    options           argparse types (counts, positive numbers, devices, name lists) and shared options
    reporting         strict JSON results and per-seed mean ± sd summaries
    training          pieces shared by the experiments' training loops (the weights' EMA)
"""
