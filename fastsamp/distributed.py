"""Sampling and training across processes with torch.distributed (torchrun, NCCL on GPUs, Gloo on CPUs).

Chains are sharded over the ranks: rank r of N runs the global chains start_r .. start_r + count_r − 1
(`shard`: counts differ by at most one), and every op draws its Philox noise with
`chain_offset = start_r`, so chain i sees exactly the noise it sees in a one-process run of all
chains: the samples are bit-identical to the one-process run, whatever N. Statistics that steer or
summarise a sampler (mean acceptance, log Z, ESS) are reduced once per level by `Comm.level`, one
small all_reduce whose last element is a failure flag: a rank whose level raises still joins that
all_reduce, so every rank learns of the failure at once and raises `RankFailedError` with the
failing rank's message (no rank is left waiting). Collectives also carry a timeout (`init`).

    comm = Comm.resolve(group)          # None outside torch.distributed: one process, no communication
    start, count = comm.shard(n)        # this rank's global chains
    with comm.level(2) as lv:           # one all_reduce of [sum, sum, failed]
        lv.values[:] = [...]
    totals = lv.result
    sums = comm.level_sums(2)           # per-level sums read once after the last level
    for i in range(n_levels):
        with sums.level() as values:    # distributed: comm.level; one process: nothing per level
            values[:] = [...]
    table = sums.totals()               # (n_levels, 2) float64
    x_all = comm.gather(x_local)        # rank 0: all chains in global order; other ranks: None
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import os

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 120.0


class RankFailedError(RuntimeError):
    """Raised on every rank when another rank's step failed."""


def launched_by_torchrun() -> bool:
    """True when the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init(backend=None, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Initialise the default process group from the torchrun environment (once).

    backend: "nccl" when CUDA is available, else "gloo" (default). Collectives that wait longer
    than `timeout_s` raise instead of hanging. With CUDA, this rank's device is LOCAL_RANK.
    Returns the `Comm` of the default group."""
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise RuntimeError("fastsamp.distributed.init needs the torchrun environment (RANK, WORLD_SIZE, "
                               "MASTER_ADDR, MASTER_PORT); launch with torchrun or pass group=")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        # a group left to the interpreter's teardown can abort the process ("terminate called without an
        # active exception" from its worker threads): destroy what we created before that
        atexit.register(_destroy_default_group)
    return Comm(dist.group.WORLD)


def resolved_world_size() -> int:
    """The number of ranks `Comm.resolve()` gives, found without initialising anything: the default group's
    size, else torchrun's WORLD_SIZE, else 1 (a command line checks its chain count against it up front)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if dist.is_available() and launched_by_torchrun():
        return int(os.environ["WORLD_SIZE"])
    return 1


def _destroy_default_group():
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """(start, count) of rank's contiguous share of n items: counts n // N or n // N + 1, the
    larger ones first."""
    base, extra = divmod(int(n), int(world_size))
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class _Level:
    """The values this rank contributes to one level's all_reduce; `result` after the level."""

    def __init__(self, n: int):
        self.values = [0.0] * n
        self.result = None


class LevelSums:
    """A sampler's per-level statistics summed over the ranks, read once after the last level.

    `level()` is one level's context yielding the list to fill with n_values floats or one-element
    tensors. Distributed, it is `Comm.level` (one all_reduce with the failure flag per level); in one
    process it runs nothing: the values are kept as they are, with no torch op and no host
    synchronisation per level, and `totals()` stacks them once. In one process the yielded list is
    kept by reference and may be filled any time before `totals()`; distributed it must be filled
    inside the context (its values are reduced on exit)."""

    def __init__(self, comm: Comm, n_values: int, op: str = "sum"):
        self.comm, self.n_values, self.op = comm, n_values, op
        self.rows = []

    def level(self):
        if self.comm.distributed:
            return self._reduced_level()
        values = [0.0] * self.n_values
        self.rows.append(values)
        return contextlib.nullcontext(values)

    @contextlib.contextmanager
    def _reduced_level(self):
        with self.comm.level(self.n_values, self.op) as lv:
            yield lv.values
        self.rows.append(lv.result)

    def totals(self) -> torch.Tensor:
        """The (n_levels, n_values) float64 table of the levels' values, summed over the ranks (on the
        device of the values' tensors)."""
        if not self.rows:
            return torch.zeros(0, self.n_values, dtype=torch.float64)
        if self.comm.distributed:
            return torch.stack(self.rows)
        columns = [_float64_vector(values) for values in zip(*self.rows)]
        dev = next((c.device for c in columns if c.device.type != "cpu"), torch.device("cpu"))
        return torch.stack([c.to(dev) for c in columns], 1)


def _float64_vector(values, device=None) -> torch.Tensor:
    """Floats or one-element tensors as one float64 vector on `device` (default: the first tensor's device; CPU
    when none is a tensor), in a few ops whatever the length: one torch.tensor of the floats, one stack of the
    values and one cast to float64 (values of mixed dtypes: a stack that casts each straight into float64; a
    tensor on another device or of another shape is moved or reshaped first). Detached: no autograd history."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    if len(tensors) < len(values):
        floats = torch.tensor([float(v) for v in values if not isinstance(v, torch.Tensor)], dtype=torch.float64,
                              device=device)
        if not tensors:
            return floats
        floats = iter(floats)  # the floats as 0-d views of one tensor, in their places
        values = [v if isinstance(v, torch.Tensor) else next(floats) for v in values]
    scalars = [v if v.dim() == 0 and v.device == device else v.reshape(()).to(device) for v in values]
    with torch.no_grad():
        if len({v.dtype for v in scalars}) == 1:
            return torch.stack(scalars).to(torch.float64)
        # mixed dtypes: stack's promotion could round (int64 with float32 is float32); cast each into float64
        return torch.stack(scalars, out=torch.empty(len(scalars), dtype=torch.float64, device=device))


class Comm:
    """The processes a sampler runs on: a torch.distributed group, or one process (group None)."""

    def __init__(self, group=None):
        self.group = group
        self.distributed = group is not None and dist.get_world_size(group) > 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.world_size = dist.get_world_size(group) if group is not None else 1

    @classmethod
    def resolve(cls, group=None) -> Comm:
        """`group` if given; else the default group when torch.distributed is initialised (or the
        torchrun environment is set: then it is initialised); else one process."""
        if group is not None:
            return group if isinstance(group, Comm) else cls(group)
        if dist.is_available() and dist.is_initialized():
            return cls(dist.group.WORLD)
        if dist.is_available() and launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            return init()
        return cls(None)

    def shard(self, n: int) -> tuple[int, int]:
        """(chain_offset, count) of this rank's global chains out of n; distributed, every rank must
        get at least one chain (n >= the number of ranks), else ValueError."""
        if self.distributed and n < self.world_size:
            raise ValueError(f"n_samples ({n}) must be >= the number of ranks ({self.world_size})")
        return shard(n, self.rank, self.world_size)

    def _device(self):
        backend = dist.get_backend(self.group)
        return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def all_reduce(self, values, op: str = "sum", error: BaseException | None = None) -> torch.Tensor:
        """Sum (or max) over the ranks of `values` (floats or one-element tensors) as a float64 tensor,
        by one all_reduce with a failure flag appended: when any rank passes an `error`, every rank
        raises (its own error, or RankFailedError naming the failing rank and its message). In one
        process nothing is communicated and tensors stay on their device (no host synchronisation)."""
        flag = 1.0 if error is not None else 0.0
        buf = _float64_vector((*values, flag), self._device() if self.distributed else None)
        if not self.distributed:
            if error is not None:
                raise error
            return buf[:-1]
        dist.all_reduce(buf, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group)
        if float(buf[-1]) > 0:
            messages = [None] * self.world_size
            mine = None if error is None else f"{type(error).__name__}: {error}"
            dist.all_gather_object(messages, mine, group=self.group)
            if error is not None:
                raise error
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            raise RankFailedError("; ".join(f"rank {r} failed: {m}" for r, m in failed))
        return buf[:-1]

    @contextlib.contextmanager
    def level(self, n_values: int, op: str = "sum"):
        """One level of a sampler: the body fills `lv.values` (n_values floats or one-element
        tensors); on exit one all_reduce gives `lv.result` (a float64 tensor). An exception in the body is shared with
        every rank through that same all_reduce, so that all of them raise."""
        lv = _Level(n_values)
        try:
            yield lv
        except Exception as e:
            self.all_reduce([0.0] * n_values, op, error=e)
            raise
        lv.result = self.all_reduce(lv.values, op)

    def level_sums(self, n_values: int, op: str = "sum") -> LevelSums:
        """Per-level statistics that are read only after the last level (see `LevelSums`)."""
        return LevelSums(self, n_values, op)

    def chain_offset(self, local_count: int) -> int:
        """The global index of this rank's first chain when rank r holds local_count_r chains (an
        exclusive prefix sum, one all_gather)."""
        if not self.distributed:
            return 0
        counts = [None] * self.world_size
        dist.all_gather_object(counts, int(local_count), group=self.group)
        return sum(counts[: self.rank])

    def log_sum_exp(self, values: torch.Tensor) -> float:
        """log Σ exp(values) over the values of every rank (two all_reduces: max, then the sum)."""
        v = values.detach().double()
        m_local = float(v.max()) if v.numel() else -float("inf")
        m = float(self.all_reduce([m_local], "max")[0])
        if m == -float("inf") or m != m:
            return m
        s = float(self.all_reduce([float(torch.exp(v - m).sum())])[0])
        return m + float(torch.log(torch.tensor(s, dtype=torch.float64)))

    def gather(self, x: torch.Tensor):
        """Rank 0: the rows of every rank concatenated in rank order (the global chain order of
        `shard`); other ranks: None. One process: x itself."""
        if not self.distributed:
            return x
        counts = [None] * self.world_size
        dist.all_gather_object(counts, int(x.shape[0]), group=self.group)
        width = max(counts)
        dev = self._device()
        pad = torch.zeros((width,) + tuple(x.shape[1:]), dtype=x.dtype, device=dev)
        pad[: x.shape[0]] = x.to(dev)
        bufs = [torch.empty_like(pad) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(pad, bufs, dst=0, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([b[:c] for b, c in zip(bufs, counts)]).to(x.device)

    def save(self, x: torch.Tensor, path: str, *, shards: bool = False) -> str | None:
        """Write the samples: gathered to rank 0 as one `path` (.pt), or with shards=True each rank's
        own rows to `path` with `.rank{r}` before the suffix (no communication). Returns the path
        written by this rank (None on ranks that write nothing)."""
        if shards and self.distributed:
            root, ext = os.path.splitext(path)
            own = f"{root}.rank{self.rank}{ext or '.pt'}"
            torch.save(x.detach().cpu(), own)
            return own
        full = self.gather(x)
        if full is None:
            return None
        torch.save(full.detach().cpu(), path)
        return path

    def barrier(self):
        if self.distributed:
            dist.barrier(group=self.group)
