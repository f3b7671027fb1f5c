"""Experiments and paper reproductions built on the fastsamp core (not part of the library API):

    bench        `fastsamp bench`: every op on every backend against eager PyTorch and torch.compile
    composition  `fastsamp compose`: products of 2-D mixtures and of trained score MLPs
    tilting      `fastsamp importance`: training-free importance sampling with exact answers
    offpolicy    `fastsamp train`: off-policy diffusion samplers on benchmark targets, the resumable table
    outsourced   `fastsamp outsourced`: posterior sampling in the noise space of the digit generators
    digits       the 8×8 digit data, generators, classifiers, rewards and metrics behind `outsourced`
"""
