"""The user's own score network of the network-score benchmarks (cuda_graph_level.py, generic_vs_hand.py,
profile_network.py): a plain `torch.nn.Module`, not a fastsamp model, an MLP with two hidden SiLU layers.

The scripts import it as `from _user_mlp import UserMLP` (`python benchmarks/<script>.py` puts benchmarks/ first on
sys.path; tests' conftest.load_benchmark does the same)."""
from __future__ import annotations

import math

import torch


class UserMLP(torch.nn.Module):
    """s(x, t) = MLP([x, t]) with time_input, else s(x) = MLP(x) (a score at one fixed time: forward(x)); minus_x
    subtracts x (s = MLP(...) - x: the target is standard-normal-like, so a MALA step of 0.5 is accepted about 3 times
    in 4). Weights: torch's default initialisation (the global generator), or with init_seed each weight and bias
    ~ N(0, 1 / fan_in) from its own generator (independent of the global one)."""

    def __init__(self, dim: int, hidden: int, *, time_input: bool = True, minus_x: bool = False,
                 init_seed: int | None = None):
        super().__init__()
        self.dim, self.time_input, self.minus_x = dim, time_input, minus_x
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + time_input, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim))
        if init_seed is not None:
            g = torch.Generator().manual_seed(init_seed)
            with torch.no_grad():
                for p in self.net.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, x, t=None):
        if self.time_input == (t is None):
            raise TypeError("this UserMLP " + ("takes a time: net(x, t)" if self.time_input
                                               else "has no time input (time_input=False): net(x)"))
        # the time column as t · 1 (the bits of full_like's fill): a float t in tensor arithmetic is a graph input to
        # torch.compile, so a compiled network makes one graph for every t instead of one per level
        out = self.net(torch.cat([x, t * torch.ones_like(x[:, :1])], 1) if self.time_input else x)
        return out - x if self.minus_x else out
