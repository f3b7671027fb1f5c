"""The command line through fastsamp.cli.main: bad arguments are argparse errors (exit status 2) before
any work, outputs are checked up front, JSON results are strict JSON with the thread count, and the
tables show no spread for one seed. Tiny sizes throughout."""
import json
import math

import pytest
import torch
from conftest import load_benchmark

from fastsamp.cli import main
from fastsamp.experiments.reporting import write_json


def exit_code(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def strict_json(path):
    """Parse as strict JSON: NaN, Infinity and -Infinity literals are errors."""
    def reject(literal):
        raise ValueError(f"non-standard JSON literal {literal}")
    with open(path) as f:
        return json.loads(f.read(), parse_constant=reject)


@pytest.mark.parametrize("argv,message", [
    (["sample", "--levels", "1"], "--levels: must be >= 2"),
    (["sample", "--levels", "0"], "--levels: must be >= 2"),
    (["sample", "--chains", "-5"], "--chains: must be >= 1"),
    (["sample", "--moves", "4294967297"], "--moves: must be <= 2147483647"),
    (["sample", "--chains", "2147483648"], "--chains: must be <= 2147483647"),
    (["sample", "--step-scale", "nan"], "--step-scale: must be finite and > 0"),
    (["sample", "--dim", "two"], "--dim: expected an integer"),
    (["sample", "--backend", "bogus"], "--backend: invalid choice"),
    (["train", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", "--iterations", "-1"], "--iterations: must be >= 1"),
    (["train", "--eval-samples", "0"], "--eval-samples: must be >= 2"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every: must be >= 0"),
    (["train", "--checkpoint-every", "5"], "--checkpoint-every needs --out"),
    (["train", "--device", "tpu"], "--device: device must be 'cpu' or 'cuda\\[:N\\]', got 'tpu'"),
    (["sample", "--device", "xla"], "--device: device must be"),
    (["bench", "--ops", "bogus"], "--ops: unknown op"),
    (["bench", "--min-time", "0"], "--min-time: must be finite and > 0"),
    (["compose", "--budget", "0"], "--budget: must be >= 3"),
    (["compose", "--seeds", "0"], "--seeds: must be >= 1"),
    (["importance", "--seeds", "0"], "--seeds: must be >= 1"),
    (["importance", "--steps", "0"], "--steps: must be >= 1"),
    (["outsourced", "--budget", "0"], "--budget: must be >= 1"),
    (["outsourced", "--priors", "vae,dcgan"], "--priors: expected a comma-separated list"),
    (["outsourced", "--digit", "10"], "--digit: must be <= 9"),
    (["outsourced", "--samples", "256", "--budget", "300"], "--budget 300 is below what the samplers need"),
    (["guided-digits", "--seeds", "0"], "--seeds: must be >= 1"),
    (["guided-digits", "--methods", "LA (nothing)"], "--methods: invalid choice"),
    (["guided-digits", "--add"], "--add needs --methods"),
    (["guided-digits", "--add", "--methods", "LA (energy)", "--out", "/nonexistent"], "--add: .* does not exist"),
    (["sample", "--step-scale", "1e300"], "--step-scale 1e\\+300: the step sizes it gives overflow float32"),
    (["train", "--out", "/dev/null"], "--out /dev/null: is not a directory"),
    (["sample", "--save", "/dev/null/x.pt"], "--save /dev/null/x.pt: /dev/null is not a directory"),
])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and __import__("re").search(message, err), err


def test_fewer_chains_than_ranks_names_chains(monkeypatch, capsys):
    """Under torchrun with 4 ranks, `sample --chains 3` is an argparse error naming --chains, before any process
    group is set up (the environment alone: nothing is initialised or communicated)."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert exit_code(["sample", "--chains", "3"]) == 2
    assert "--chains 3: must be >= the number of ranks (4)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu_is_an_argparse_error(capsys):
    assert exit_code(["sample", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--json", "--png"])
def test_unwritable_outputs_fail_before_the_run(tmp_path, flag, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = ["compose", "--samples", "10", "--seeds", "1", "--mlp-iters", "1"]
    assert exit_code(argv + [flag, str(blocker / "out")]) == 2  # a file where a directory should be
    assert "is not a directory" in capsys.readouterr().err
    assert exit_code(argv + [flag, str(tmp_path)]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err


def test_sample_reports_non_finite_chains(tmp_path, capsys):
    """A step that sends every chain to inf: exit status 1, the count of non-finite chains on stderr (the summary said
    nothing: acceptance 1.000 and a mode TV of the non-finite samples), the header naming the MH rule run."""
    out = tmp_path / "s.json"
    argv = ["sample", "--chains", "64", "--levels", "3", "--moves", "1", "--dim", "2", "--components", "2", "--mh",
            "none", "--step-scale", "1e30", "--json", str(out)]
    assert main(argv) == 1
    text = capsys.readouterr()
    assert "64 of 64 chains ended non-finite" in text.err and "annealed MALA + no MH test (ULA)" in text.out
    assert strict_json(out)["nonfinite_chains"] == 64


def test_importance_png_goes_to_a_new_directory(tmp_path):
    out = tmp_path / "new" / "dir" / "importance.png"
    assert main(["importance", "--samples", "20", "--steps", "1", "--seeds", "1", "--png", str(out)]) == 0
    assert out.stat().st_size > 0


def test_sample_writes_strict_json_with_threads(tmp_path, capsys):
    out = tmp_path / "new_dir" / "sample.json"
    assert main(["sample", "--chains", "64", "--dim", "2", "--components", "3", "--levels", "3", "--moves", "2",
                 "--json", str(out)]) == 0
    result = strict_json(out)
    assert result["threads"] == torch.get_num_threads() and result["chains"] == 64 and result["finite"]
    assert "chain-moves/s" in capsys.readouterr().out


@pytest.mark.parametrize("argv,threads", [([], 1), (["--threads", "2"], 2)])
def test_train_time_runs_on_one_thread_unless_told(argv, threads, monkeypatch, capsys):
    """`fastsamp train --time` times on one thread by default, like every timing command, and says so."""
    from fastsamp.experiments import offpolicy
    seen = []
    monkeypatch.setattr(offpolicy, "time_fused_vs_eager", lambda *a, **kw: seen.append(torch.get_num_threads())
                        or {"fused_ms": 1.0})
    n = torch.get_num_threads()
    try:
        assert main(["train", "--time", *argv]) == 0
    finally:
        torch.set_num_threads(n)
    assert seen == [threads] and json.loads(capsys.readouterr().out) == {"threads": threads, "fused_ms": 1.0}


def test_write_json_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "r.json"
    write_json(str(path), {"a": math.nan, "b": [math.inf, 1.5], "c": torch.tensor([2.0, -math.inf])})
    assert strict_json(path) == {"threads": torch.get_num_threads(), "a": None, "b": [None, 1.5], "c": [2.0, None]}
    write_json(str(path), [{"x": 1}])
    assert strict_json(path) == {"threads": torch.get_num_threads(), "rows": [{"x": 1}]}


def test_compose_one_seed_prints_one_table_without_spread(tmp_path, capsys):
    out = tmp_path / "compose.json"
    assert main(["compose", "--samples", "40", "--budget", "3", "--levels", "2", "--seeds", "1",
                 "--mlp-iters", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("sliced W2") == 1 and "±" not in text
    assert text.count("MALA score-MH") == 2  # one row per factor model (mixtures, score MLPs)
    result = strict_json(out)
    assert result["threads"] == torch.get_num_threads() and result["rows"][0]["sliced_w2_sd"] is None


def test_compose_several_seeds_show_the_spread(capsys):
    assert main(["compose", "--samples", "40", "--budget", "3", "--levels", "2", "--seeds", "2",
                 "--mlp-iters", "2"]) == 0
    assert "±" in capsys.readouterr().out


def test_importance_one_seed_has_no_spread(tmp_path, capsys):
    out = tmp_path / "importance.json"
    assert main(["importance", "--samples", "40", "--steps", "2", "--seeds", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "±" not in text and text.count("sliced W2") == 1
    result = strict_json(out)
    assert result["threads"] == torch.get_num_threads() and result["rows"][0]["mode_tv_sd"] is None


def test_info_says_what_is_built_and_what_runs_here(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = info["backends"]
    assert set(rows) == {"torch", "cpp", "triton", "cuda"} and info["threads"] == torch.get_num_threads()
    assert rows["torch"]["built"] and rows["torch"]["runs_here"]
    if not torch.cuda.is_available():
        assert not rows["cuda"]["runs_here"]
        assert rows["triton"]["runs_here"] == (rows["triton"]["built"] and
                                               __import__("fastsamp").backends.triton_interpreted())


@pytest.mark.parametrize("cmd", ["sample", "bench", "compose", "importance", "train", "outsourced", "info"])
def test_every_subcommand_help_has_a_description_and_defaults(cmd, capsys):
    assert exit_code([cmd, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n\n") >= 2  # usage, description, options
    if cmd != "info":
        assert "(default:" in text


@pytest.mark.slow  # trains the tiny priors (~30 s on a busy 2-core machine); test_outsourced covers it fast
def test_outsourced_tiny_warns_and_stays_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSAMP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "outsourced.json"
    with pytest.warns(UserWarning, match="tiny' is for tests only"):
        assert main(["outsourced", "--size", "tiny", "--priors", "vae", "--samplers", "prior,mala,hmc",
                     "--samples", "32", "--budget", "1000", "--no-progress", "--json", str(out)]) == 0
    result = strict_json(out)
    assert result["threads"] == torch.get_num_threads()
    calls = {r["sampler"]: r["reward_calls"] for r in result["rows"]}
    assert calls["prior"] == 0 and 1000 - 4 * 32 < calls["hmc"] <= 1000 and 1000 - 2 * 32 < calls["mala"] <= 1000


def test_reproduce_script_maps_results_to_cli_commands():
    """benchmarks/reproduce.py: each recorded result is one fastsamp verb writing under benchmarks/results/."""
    import os

    reproduce = load_benchmark("reproduce.py", "reproduce")
    results = reproduce.RESULTS
    assert reproduce.command("composition", ["--seeds", "1"]) == [
        "compose", "--json", os.path.join(results, "composition.json"),
        "--png", os.path.join(results, "composition.png"), "--seeds", "1"]
    for args in (["--device", "cuda"], ["--device=cuda"]):
        assert reproduce.command("ops", args) == ["bench", "--json", os.path.join(results, "ops_cuda.json"), *args]
    assert reproduce.command("ops", [])[2] == os.path.join(results, "ops_cpu.json")
    assert reproduce.command("importance", [])[0] == "importance"
