"""Off-policy exploration of a DiffusionSampler: the reward-ranked replay buffer of terminal states
and the MALA local search on them."""
from __future__ import annotations

import torch

from ...distributed import Comm
from ...ops import _checks
from ...profiling import phase
from ...protocol import CountingModel
from ..annealed import NonFiniteMonitor, corrector_spec
from ..kernels import ChainState, PhiloxKey, checked_kernel, make_kernel


class ReplayBuffer:
    """FIFO buffer of terminal states with reward-rank prioritised sampling:
    P(i) ∝ 1 / (k·N + rank_i), rank 0 = the highest log R, equal log R ranked oldest first.

    The filled slots are kept in rank order (`order`) as states arrive: `add` merges its sorted batch
    into the kept order (O(N) for a batch of n ≪ N), so `sample` draws a rank from the fixed rank
    weights and looks its slot up, with no sort of the N log R per draw."""

    def __init__(self, capacity: int, dim: int, *, rank_weight: float = 1e-2, dtype=torch.float32, device="cpu"):
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not rank_weight > 0:
            raise ValueError(f"rank_weight must be > 0, got {rank_weight}")
        self.capacity, self.rank_weight = int(capacity), rank_weight
        self.x = torch.empty(self.capacity, dim, dtype=dtype, device=device)
        self.log_r = torch.empty(self.capacity, dtype=dtype, device=device)
        self.size, self.head = 0, 0
        # the filled slots in rank order, and their -log R (ascending, for searchsorted)
        self.order = torch.empty(0, dtype=torch.int64, device=device)
        self._ranked_neg_log_r = torch.empty(0, dtype=dtype, device=device)
        self._rank_weights = None  # (k, N, 1 / (k·N + rank) for rank = 0 .. N-1), N = size, k = rank_weight

    def __len__(self):
        return self.size

    def add(self, x, log_r):
        """Append the states x (n, dim) with their log R (n,), dropping those with a non-finite state or log R
        (in the buffer's dtype); past capacity the oldest are replaced (FIFO)."""
        if x.dim() != 2 or x.shape[1] != self.x.shape[1]:
            raise ValueError(f"x must have shape (n, {self.x.shape[1]}), got {tuple(x.shape)}")
        if log_r.shape != x.shape[:1]:
            raise ValueError(f"log_r must have shape ({x.shape[0]},) like x's rows, got {tuple(log_r.shape)}")
        x = x.detach().to(self.x.device, self.x.dtype)
        log_r = log_r.detach().to(self.log_r.device, self.log_r.dtype)
        keep = torch.isfinite(log_r) & torch.isfinite(x).all(-1)
        x, log_r = x[keep], log_r[keep]
        n = x.shape[0]
        if n > self.capacity:
            x, log_r, n = x[-self.capacity:], log_r[-self.capacity:], self.capacity
        idx = (self.head + torch.arange(n, device=self.x.device)) % self.capacity
        kept, kept_key = self.order, self._ranked_neg_log_r
        if self.size + n > self.capacity:  # the slots idx that are filled are evicted
            evicted = torch.zeros(self.capacity, dtype=torch.bool, device=self.x.device)
            evicted[idx] = True
            at = (~evicted.index_select(0, kept)).nonzero().squeeze(1)  # (index_select: faster than [])
            kept, kept_key = kept.index_select(0, at), kept_key.index_select(0, at)
        self.x[idx] = x
        self.log_r[idx] = log_r
        batch_key, by_rank = torch.sort(-log_r, stable=True)  # the values just written at idx
        self.head = (self.head + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.order, self._ranked_neg_log_r = self._merge(kept, kept_key, idx[by_rank], batch_key)

    @staticmethod
    def _merge(kept, kept_key, batch, batch_key):
        """Merge the slots `kept` and the newer slots `batch`, each in rank order with its -log R
        (ascending): a batch slot goes after the kept ones with -log R ≤ its own (older ties first)."""
        at = torch.arange(batch.numel(), device=batch.device) + torch.searchsorted(kept_key, batch_key, right=True)
        is_kept = torch.ones(kept.numel() + batch.numel(), dtype=torch.bool, device=batch.device)
        is_kept[at] = False
        merged = []
        for k, b in ((kept, batch), (kept_key, batch_key)):
            m = torch.empty(is_kept.numel(), dtype=k.dtype, device=k.device)
            m[at] = b
            merged.append(m.masked_scatter_(is_kept, k))
        return merged

    def state_dict(self):
        """The filled slots (always the first `size`), the FIFO head and the size."""
        return {"x": self.x[:self.size].clone(), "log_r": self.log_r[:self.size].clone(),
                "head": self.head, "size": self.size}

    def load_state_dict(self, state):
        n, head = int(state["size"]), int(state["head"])
        if n > self.capacity or state["x"].shape[1:] != self.x.shape[1:]:
            raise ValueError(f"buffer state of {n} x {tuple(state['x'].shape[1:])} does not fit a buffer of "
                             f"{self.capacity} x {tuple(self.x.shape[1:])}")
        if state["x"].shape[0] != n or state["log_r"].shape != (n,):
            raise ValueError(f"buffer state of size {n} must hold x ({n}, dim) and log_r ({n},), got "
                             f"{tuple(state['x'].shape)} and {tuple(state['log_r'].shape)}")
        if not (0 <= head < self.capacity and (head == n or n == self.capacity)):
            raise ValueError(f"buffer state's head must be its size {n} (not full) or in [0, {self.capacity}) (full), "
                             f"got {head}")
        self.x[:n] = state["x"].to(self.x.device, self.x.dtype)
        self.log_r[:n] = state["log_r"].to(self.log_r.device, self.log_r.dtype)
        self.head, self.size = head, n
        # the rank order from scratch: the slots oldest first (a full buffer's oldest is at head), then a
        # stable sort by -log R
        by_age = torch.arange(n, device=self.x.device)
        if n == self.capacity:
            by_age = torch.roll(by_age, -self.head)
        self._ranked_neg_log_r, by_rank = torch.sort(-self.log_r[by_age], stable=True)
        self.order = by_age[by_rank]

    def sample(self, n: int, generator=None):
        """n states and their log R, drawn with replacement by rank (`slots`)."""
        idx = self.slots(n, generator)
        return self.x[idx], self.log_r[idx]

    def slots(self, n: int, generator=None):
        """The slots of n draws with replacement, P(i) ∝ 1 / (k·N + rank_i)."""
        if self.size == 0:
            raise RuntimeError("the replay buffer is empty")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        k, size = self.rank_weight, self.size
        if self._rank_weights is None or self._rank_weights[:2] != (k, size):
            rank = torch.arange(size, dtype=torch.float64, device=self.x.device)
            self._rank_weights = (k, size, 1.0 / (k * size + rank))
        return self.order[torch.multinomial(self._rank_weights[2], n, replacement=True, generator=generator)]


def local_search(target, x, *, n_steps=200, burn_in=100, step_size=0.1, target_acceptance=0.574,
                 adapt_window=5, adapt_factor=0.01, seed=0):
    """MALA (energy MH, x' = x + ε ∇log R + √(2ε) ξ) from the states x, as gfn-diffusion's
    langevin_dynamics with --ld_schedule: before every move but the first, ε is multiplied by
    1 + adapt_factor if the acceptance rate of the last window exceeds `target_acceptance`, else by
    1 − adapt_factor; the rate is taken over move 0, then over every `adapt_window` moves after it.
    Keeps the accepted proposals of the moves after `burn_in` (moves burn_in + 1 .. n_steps − 1).
    Returns (the kept states (N, D), their log R, final step size). The target is the MCMC model
    itself (fastsamp.protocol: its score and log_prob ignore the time).

    Move m is `mcmc(target, x, mh="energy", n_steps=1, step_size=ε_m, seed=seed, offset=m)` (the same Philox draws,
    kernels and MH test, for a model without a fused corrector: every fastsamp.targets target), but the chains'
    score and log R are carried from move to move (the MH test's kept values) instead of evaluated again at the
    start of each move, and the kept states' log R are those carried values: one score and one log R evaluation per
    move (of the proposals), not two plus a last log R of every kept state. Chains that become non-finite are not
    kept, and reported (as mcmc does) once, at the end."""
    spec = corrector_spec(target, corrector="mala", mh="energy", n_steps=1, n_trapezoid=1, n_leapfrog=1,
                          damping=None)
    x = _checks.state("x", x)
    if x.shape[1] != target.dim:
        raise ValueError(f"x must have shape (B, {target.dim}) for this target, got {tuple(x.shape)}")
    model = CountingModel(target)
    chain0 = Comm.resolve(None).chain_offset(x.shape[0])
    monitor = NonFiniteMonitor(max(n_steps, 1), x.device, "warn")  # n_steps = 0: nothing kept, nothing reported
    kept, kept_log_r, eps, rate, n_accepted, n_proposed = [], [], float(step_size), 0.0, 0, 0
    with phase("corrector"):
        state = ChainState(x, *model.score_and_log_prob(x, 0.0))  # the starting states' score and log R
        finite = torch.isfinite(x).all(1)
        for move in range(n_steps):
            if move > 0:
                eps *= 1 + adapt_factor if rate > target_acceptance else 1 - adapt_factor
            kernel, _, _, key = checked_kernel(make_kernel(model, 0.0, eps, spec), state.x, None,
                                               PhiloxKey(seed, move, chain0), 1)
            state, info = kernel.step(state, key)
            finite = monitor.record(move, state.x, finite)
            accepted = info.accepted & finite
            if move > burn_in:
                kept.append(state.x[accepted])
                kept_log_r.append(state.logp[accepted])
            n_accepted, n_proposed = n_accepted + int(accepted.sum()), n_proposed + accepted.numel()
            if move % adapt_window == 0:
                rate, n_accepted, n_proposed = n_accepted / n_proposed, 0, 0
    monitor.report("local_search", lambda m: (
        f" (move {m} of {n_steps} MALA moves, step size {eps:.3g} at the end)",
        "the step size is too large for this target, or its score or log R is non-finite there"))
    if not kept:
        return state.x[:0], state.logp[:0], eps
    return torch.cat(kept), torch.cat(kept_log_r), eps
