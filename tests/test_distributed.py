"""Distributed sampling and training on Gloo with 2 CPU processes against the 1-process run.

Each test spawns 2 processes (torch.multiprocessing, free port, a deadline on the join) that run a
worker of this module under an initialised process group and save what they return; the parent
compares with the same call in one process. The CLI test launches `torchrun -m fastsamp sample`.
"""
import datetime
import functools
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastsamp import distributed as fdist
from fastsamp.models import GaussianMixture, ScoreModel
from fastsamp.samplers import annealed_mcmc
from fastsamp.samplers.diffusion import DiffusionSampler, TrainConfig, train
from fastsamp.samplers.importance import importance_sde
from fastsamp.targets import get_target

pytestmark = pytest.mark.distributed

WORLD = 2
DEADLINE_S = 240


def _mixture():
    return GaussianMixture(torch.tensor([[-2.0, 0.5], [2.0, -0.5], [0.0, 2.5]], dtype=torch.float64),
                           torch.log(torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)),
                           torch.tensor([0.4, 0.3, 0.6], dtype=torch.float64))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, port, out_dir, worker):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.save(worker(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_two(worker, tmp_path):
    """Run worker() on 2 Gloo ranks; returns what each rank returned. Fails the test on a deadline."""
    ctx = mp.start_processes(_entry, args=(_free_port(), str(tmp_path), worker), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"distributed workers still running after {DEADLINE_S} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


ANNEALED_CASES = [dict(corrector="mala", mh="score", n_trapezoid=2, fused=True, adapt=True),
                  dict(corrector="mala", mh="score", n_trapezoid=2, fused=False, adapt=True),
                  dict(corrector="hmc", mh="score", n_leapfrog=2, fused=True),
                  dict(corrector="uhmc", mh="none", n_leapfrog=2, fused=False)]


def _annealed(**kw):
    return annealed_mcmc(_mixture(), 37, n_levels=6, n_corrector_steps=3, step_size=0.2, seed=3,
                         dtype=torch.float64, **kw)


def _annealed_worker():
    return [_annealed(**kw) for kw in ANNEALED_CASES]


def _importance(**kw):
    def log_weight(x):
        return 1.2 * x[:, 0] + 0.4 * x[:, 1]
    return importance_sde(_mixture(), log_weight, 41, n_steps=15, corrector="mala", n_corrector_steps=3, seed=2,
                          dtype=torch.float64, **kw)


def _train(objective, batch_size, iterations=20):
    torch.manual_seed(0)
    sampler = DiffusionSampler(get_target("25gmm"), sigma=2.0, n_steps=10, hidden=16, n_harmonics=8)
    cfg = TrainConfig(objective=objective, iterations=iterations, batch_size=batch_size, seed=1)
    train(sampler, cfg, progress=False)
    return {k: v.detach().clone() for k, v in sampler.state_dict().items()}


def _train_worker():
    return [_train("tb", 8), _train("vargrad", 8)]


def _offpolicy_run(batch_size, **kw):
    from fastsamp.experiments import offpolicy
    return offpolicy.run("25gmm", "tb", iterations=4, batch_size=batch_size, hidden=16, n_steps=10, eval_samples=16,
                         progress=False, **kw)


def _offpolicy_worker(out_dir):
    return _offpolicy_run(8, out_dir=out_dir, checkpoint_every=2)


def _diverging_worker():
    """TB training whose loss is NaN on rank 1 from iteration 3 on: (iteration, message, parameters finite) of its
    TrainingDiverged."""
    from fastsamp.samplers.diffusion import TrainingDiverged
    real, calls = DiffusionSampler.loss, [0]

    def loss(self, *args, **kw):
        value = real(self, *args, **kw)
        calls[0] += 1
        return value * float("nan") if dist.get_rank() == 1 and calls[0] > 3 else value
    DiffusionSampler.loss = loss
    torch.manual_seed(0)
    sampler = DiffusionSampler(get_target("25gmm"), sigma=2.0, n_steps=10, hidden=16, n_harmonics=8)
    try:
        train(sampler, TrainConfig(objective="tb", iterations=10, batch_size=8, seed=1), progress=False)
    except TrainingDiverged as e:
        return e.iteration, str(e), all(bool(torch.isfinite(p).all()) for p in sampler.parameters())
    return None


def _failing_worker():
    def score(x, t):
        if dist.get_rank() == 1 and t < 0.5:
            raise ValueError("boom on rank 1")
        return -x
    return annealed_mcmc(ScoreModel(score, 2), 10, n_levels=8, corrector="mala", mh="score", n_corrector_steps=1,
                         seed=0)


def test_shard_splits_unevenly():
    assert [fdist.shard(10, r, 3) for r in range(3)] == [(0, 4), (4, 3), (7, 3)]
    assert [fdist.shard(2, r, 4) for r in range(4)] == [(0, 1), (1, 1), (2, 0), (2, 0)]


def _per_value_column(values):
    """The column LevelSums.totals makes, one value at a time (each tensor to the first tensor's device)."""
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    return torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) if isinstance(v, torch.Tensor)
                        else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])


def test_one_process_level_sums_mix_floats_and_tensors():
    """One process: totals() is the (n_levels, n_values) float64 table of the levels' floats and one-element
    tensors (0-d or (1,), float32/float64/int/bool, with grad or not), value for value."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)
    rows = [[0.1 * i, torch.rand((), generator=g, dtype=torch.float64) * i, i, torch.tensor(i % 3 == 0),
             torch.randn(1, generator=g) if i % 2 else 1.5 * i, w * i, torch.tensor(2**40 + i)] for i in range(100)]
    sums = fdist.LevelSums(fdist.Comm(None), len(rows[0]))
    for row in rows:
        with sums.level() as values:
            values[:] = row
    table = sums.totals()
    expected = torch.stack([_per_value_column(column) for column in zip(*rows)], 1)
    assert table.dtype == torch.float64 and table.shape == (100, 7) and not table.requires_grad
    assert torch.equal(table, expected)
    assert fdist.LevelSums(fdist.Comm(None), 3).totals().shape == (0, 3)


class _FourRanks(fdist.Comm):
    """Rank 0 of a 4-process group that is never communicated with: only what happens before the first
    collective (argument checks, sharding) runs."""

    def __init__(self):
        super().__init__(None)
        self.distributed, self.world_size = True, 4


@pytest.mark.parametrize("run", [
    lambda comm: comm.shard(3),
    lambda comm: annealed_mcmc(_mixture(), 3, n_levels=2, group=comm),
    lambda comm: importance_sde(_mixture(), lambda x: x[:, 0], 3, n_steps=2, group=comm),
    lambda comm: DiffusionSampler(get_target("25gmm"), n_steps=2, hidden=4, n_harmonics=2).sample(3, group=comm),
], ids=["Comm.shard", "annealed_mcmc", "importance_sde", "DiffusionSampler.sample"])
def test_fewer_chains_than_ranks_is_an_error(run):
    """Every sampler that shards its chains over the ranks (through Comm.shard) rejects n < ranks with one message."""
    with pytest.raises(ValueError, match=r"n_samples \(3\) must be >= the number of ranks \(4\)"):
        run(_FourRanks())


def test_annealed_mcmc_bit_identical(tmp_path):
    """2-process annealed MCMC = the 1-process samples bit for bit (fused mixture kernels and the
    generic ops path; uneven split 19 + 18), with the same per-level statistics."""
    torch.set_num_threads(1)
    ranks = run_two(_annealed_worker, tmp_path)
    for kw, (x2, st2), (x_other, st_other) in zip(ANNEALED_CASES, ranks[0], ranks[1]):
        x1, st1 = _annealed(**kw)
        assert x_other is None and st_other.n_local == 18 and st_other.chain_offset == 19
        assert torch.equal(x2, x1), f"{kw}: 2-process samples differ from 1-process"
        torch.testing.assert_close(torch.tensor(st2.accept_rate), torch.tensor(st1.accept_rate), rtol=1e-12, atol=0)
        torch.testing.assert_close(torch.tensor(st2.step_size), torch.tensor(st1.step_size), rtol=1e-12, atol=0)
        assert st2.n_score_evals == st1.n_score_evals


def test_importance_sde_log_z(tmp_path):
    torch.set_num_threads(1)
    ranks = run_two(_importance, tmp_path)
    x1, st1 = _importance()
    (x2, st2), (x_other, st_other) = ranks
    assert x_other is None
    assert torch.equal(x2, x1)
    assert st2.log_z == pytest.approx(st1.log_z, rel=1e-12, abs=1e-12)
    assert st_other.log_z == pytest.approx(st1.log_z, rel=1e-12, abs=1e-12)
    assert st2.ess == pytest.approx(st1.ess, rel=1e-12)
    assert st2.corrector_accept == pytest.approx(st1.corrector_accept, rel=1e-12)


def test_ddp_training_matches_one_process(tmp_path):
    """20 iterations of 2-process DDP training with batch 8 per rank = 1-process training with batch
    16 (trajectory balance; VarGrad with its all-reduced batch log Z)."""
    torch.set_num_threads(1)
    ranks = run_two(_train_worker, tmp_path)
    for objective, two, other in zip(("tb", "vargrad"), ranks[0], ranks[1]):
        one = _train(objective, 16)
        for k in one:
            where = f"{objective} {k}"
            torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=lambda m, w=where: f"{w}: {m}")
            assert torch.equal(two[k], other[k]), f"{objective} {k}: ranks disagree"


def test_offpolicy_run_records_the_mean_loss_of_the_ranks(tmp_path):
    """A 2-process off-policy run (batch 8 per rank) records the loss of the whole batch of 16, as one process
    with batch 16 does (TB: the mean of the ranks' batch means), not rank 0's own; with its JSON written, no rank's
    checkpoint (ckpt.rank<r>) is left behind."""
    torch.set_num_threads(1)
    out = tmp_path / "runs"
    two, other = run_two(functools.partial(_offpolicy_worker, str(out)), tmp_path)
    one = _offpolicy_run(16)
    assert other is None
    assert (out / "25gmm_tb_seed0.json").exists() and not list((out / "checkpoints").iterdir())
    for key in ("mean", "min", "max"):
        assert two["loss_curve"][key] == pytest.approx(one["loss_curve"][key], rel=1e-4), key
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)


def test_a_rank_that_diverges_stops_every_rank_at_the_same_iteration(tmp_path):
    """Rank 1's loss goes NaN at iteration 3: both ranks stop there (the all-reduced gradients, which every rank sees
    alike), before the step, with finite parameters; no rank waits for another in a collective."""
    start = time.monotonic()
    ranks = run_two(_diverging_worker, tmp_path)
    assert [r[0] for r in ranks] == [3, 3] and all(r[2] for r in ranks), ranks
    assert all("gradients non-finite on some rank" in r[1] for r in ranks)
    assert "the loss is nan" in ranks[1][1] and "the loss is nan" not in ranks[0][1]
    assert time.monotonic() - start < 50


def test_failing_rank_fails_every_rank_quickly(tmp_path):
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="boom on rank 1"):
        run_two(_failing_worker, tmp_path)
    assert time.monotonic() - start < 50  # well below the 60 s collective timeout


def test_torchrun_cli_sample_equals_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m fastsamp sample --save` writes the 1-process samples."""
    args = ["sample", "--chains", "301", "--levels", "6", "--moves", "2", "--dim", "3", "--components", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, "-m", "fastsamp", *args, "--save", str(one)], check=True, env=env, timeout=120)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                    str(_free_port()), "-m", "fastsamp", *args, "--save", str(two)], check=True, env=env, timeout=180)
    assert torch.equal(torch.load(one), torch.load(two))
