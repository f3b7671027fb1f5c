#!/usr/bin/env bash
# One device call: build with nvcc, then the GPU measurements and tests of one mode.
#   bash benchmarks/gpu_run.sh wheels   (here, before the call: the Python packages the GPU image lacks, as wheels
#                                        in .whl/, which .gitignore keeps out of git; the call carries them)
#   bash benchmarks/gpu_run.sh [main|extra] [pytest -k expression of main's GPU tests (extra: ignored, said so)]
# From a session: `bash benchmarks/gpu_run.sh wheels`, then the device tool's run with command
# "bash benchmarks/gpu_run.sh main", carry [".whl"] and timeout_s=600 (the whole run's deadline below, 580 s, leaves
# the call's limit 20 s for the last bundle). Wheels in .whl/ are installed (no index, no dependencies) into
# /tmp/site, put on PYTHONPATH: POT (its W2 in the off-policy evaluation; 0.9.5, a 0.9 MB wheel: 0.9.7's is 33 MB,
# over the call's 64 MiB with this tree). A rerun on the machine while it is still warm (30 s after a call) gets
# only the device time left: set GPU_RUN_BUDGET under it (status's budget_left_s minus about 30 s) and a stage's
# budget variable to 0 to skip that stage, e.g.
#   GPU_RUN_BUDGET=200 BUILD_TIMEOUT=0 GRAPH_TIMEOUT=0 GVH_TIMEOUT=0 PROFILE_TIMEOUT=0 OFFPOLICY_TIMEOUT=0 \
#     BENCH_TIMEOUT=0 bash benchmarks/gpu_run.sh main 'cuda'
# (BUILD_TIMEOUT=0 only on the same warm machine, which keeps the first call's install and build outputs: a fresh
# one has no fastsamp._C, and the tests then skip the CUDA backend; leave it unset after a change to csrc/).
# Stage budgets (each a `timeout`, in s), most valuable first; both modes start with nvidia-smi 5, build 150 and
# info 15 (170 s). Measured on an H200 (2026-12-04): build 96-124 s, info 9-14.
#   main:  cuda_graph_level 25 (issue 10: a level captured in a CUDA graph, replay vs eager, fresh noise; took
#          13 s), generic_vs_hand 30 (issue 10: generic annealed_mcmc / hand loop / ops loop; 11 s with two
#          sides, three since the twenty-fifth session), profile_network 20 (issue 10: the share outside the network;
#          10 s), offpolicy timing 65 (issue 13: ms per training iteration, 25GMM TB and PIS; 52 s), GPU tests 215
#          (cuda graphs included; 198 s at -n 8, now -n 16), bench 130 (35 s before the (out=) and energy_mh_accept
#          cases and the mixture ops' matrix-product baselines, two more compiled graphs per mixture case: an
#          estimate), sample 12 (9-13 s), vmap_ops 20 (not yet run on a GPU: an estimate): 517 s, 687 s in all; then LGCP TB + Expl. + LP + LS timing 60
#          (issue 13: whether a seed fits a device call) in what is left before the deadline (the stages above
#          took 314 s in all on the H200, so in practice it runs).
#   extra: generic_vs_hand with its compiled sides 90 (issue 10: against the hand loop under torch.compile), the
#          Triton network engine's tests 160 (issue 11), the Triton ops of one MLP: tests 75 and their timing 30,
#          FusedMLP 40, mlp_product 45 + its summary 5: 615 s in all (not yet run on a GPU: estimates; the last
#          stages are skipped at the deadline, and say so).
# What runs between the stages takes about a second in all. A stage never runs past the whole run's deadline,
# GPU_RUN_BUDGET (default 580 s from the start: the machine's start, 1-2 min, must fit in the 15 min of device
# time with it); a stage with under 5 s left is skipped, and says so. Each stage runs under
# `timeout -k 5` (killed 5 s after its TERM). A stage's budget of 0 (or less) skips it, and says so: a chosen skip,
# not a failure.
# Every stage's log and JSON go to a work folder, bundled after each stage into $OUT/gpu_run_<mode>.tar.gz (what
# finished is kept if the call is cut; the device returns at most 8 files from $OUT). $OUT defaults to ./gpu_out.
# Exit status: 1 no NVIDIA GPU (no nvidia-smi, or it lists none: stopped before the build); 2 the build failed
# (stopped there); 3 a later stage failed, timed out or was skipped at the deadline (listed at the end); 4 usage.
set -uo pipefail
MODE=${1:-main}
case "$MODE" in main|extra|wheels) ;; *) echo "usage: bash benchmarks/gpu_run.sh [wheels|main|extra] [pytest -k expression]" >&2
  exit 4 ;; esac
WHEELS=(pot==0.9.5)  # the GPU image's Python is 3.12 (KINDS.md: python3 at /opt/torch/.venv)
if [ "$MODE" = wheels ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "${WHEELS[@]}" || exit 1
  # what the call sends: tracked and untracked-not-ignored files, plus the carried .whl; at most 64 MiB
  bytes=$( (git ls-files -co --exclude-standard -z; find .whl -type f -print0) | du -cb --files0-from=- | tail -1 | cut -f1)
  echo "gpu_run.sh wheels: the call would send $((bytes / 1048576)) MiB of 64"
  if [ "$bytes" -gt $((64 * 1048576)) ]; then
    echo "gpu_run.sh wheels: over 64 MiB: move the largest results aside for the call (they need not travel), e.g." \
      "mv benchmarks/results/product2d/full/models /tmp/, and back after it" >&2
    exit 1
  fi
  exit 0
fi
if [ "$MODE" = extra ] && [ $# -ge 2 ]; then
  echo "gpu_run.sh extra: the pytest -k expression '$2' is main's only: ignored" >&2
fi
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
W=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run_$MODE.XXXXXX")
DEADLINE=$(( $(date +%s) + ${GPU_RUN_BUDGET:-580} ))
export PYTHONUNBUFFERED=1
if ! timeout 5 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$W/device.txt" 2>&1 || [ "$(wc -l < "$W/device.txt")" -lt 2 ]; then
  echo "gpu_run.sh: no NVIDIA GPU here (nvidia-smi: $(head -c 200 "$W/device.txt")): nothing run" >&2
  rm -r "$W"
  exit 1
fi
date -u >> "$W/device.txt"; cat "$W/device.txt"
if compgen -G ".whl/*.whl" > /dev/null; then  # carried wheels (`bash benchmarks/gpu_run.sh wheels` made them)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && echo "wheels: $(ls .whl)" \
    || echo "gpu_run.sh: installing the carried wheels failed; the tests that need them fail" >&2
else
  echo "gpu_run.sh: no .whl/ carried (bash benchmarks/gpu_run.sh wheels, then carry .whl): POT's tests fail" >&2
fi

bundle() {  # the work folder as one file in $OUT (written as .part in $OUT, then renamed there: never half a file
  # under the final name)
  tar -czf "$OUT/gpu_run_$MODE.tar.gz.part" -C "$W" . && mv -f "$OUT/gpu_run_$MODE.tar.gz.part" \
    "$OUT/gpu_run_$MODE.tar.gz"
}

FAILED=()  # the stages that failed, timed out or were skipped
stage() {  # stage NAME BUDGET COMMAND...: COMMAND under timeout (BUDGET, or less to the deadline), output in
  # $W/NAME.log; prints and records (stages.txt) its exit status and seconds; returns the status. BUDGET <= 0: skipped
  # (returns 0, not a failure)
  local name=$1 budget=$2 rc; shift 2
  if [ "$budget" -le 0 ]; then
    echo "$name: skipped, its budget is ${budget}s" | tee -a "$W/stages.txt" > "$W/$name.log"
    bundle; return 0
  fi
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 5 ]; then
    echo "$name: skipped, ${left}s left before the deadline" | tee -a "$W/stages.txt" > "$W/$name.log"
    FAILED+=("$name"); bundle; return 124
  fi
  [ "$left" -lt "$budget" ] && budget=$left
  SECONDS=0
  timeout -k 5 "$budget" "$@" > "$W/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc ${SECONDS}s (timeout ${budget}s)" | tee -a "$W/stages.txt"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
  bundle
  return $rc
}

if ! FASTSAMP_CUDA_ARCHS=90 stage build "${BUILD_TIMEOUT:-150}" python3 -m pip install --no-build-isolation --no-deps -e . -q; then
  tail -40 "$W/build.log"; exit 2
fi
stage info 15 python3 -c "import sys, triton; from fastsamp import cli; print('triton', triton.__version__, \
file=sys.stderr); sys.exit(cli.main(['info']))"  # the torch version, CUDA, backends
grep -m1 '^triton ' "$W/info.log"; grep -E -A5 '"torch"|backends' "$W/info.log"

if [ "$MODE" = main ]; then
  # issue 10: one annealing level (5 MALA moves, score-MH trapezoid, one network call per move, a reverse-SDE step)
  # of an 8-D MLP score captured once in a CUDA graph, replayed with offset += 6: replay vs eager, fresh noise
  stage cuda_graph_level "${GRAPH_TIMEOUT:-25}" python3 benchmarks/cuda_graph_level.py --device cuda \
    --chains 2048 262144 --json "$W/cuda_graph_level.json"
  tail -4 "$W/cuda_graph_level.log"
  # issue 10 item 7: the generic annealed_mcmc against the hand-written loop, same network calls (goal <= 0.9)
  # (the compiled sides, which compile for a while, run in extra mode)
  stage generic_vs_hand "${GVH_TIMEOUT:-30}" python3 benchmarks/generic_vs_hand.py --device cuda --no-compile \
    --json "$W/generic_vs_hand_cuda.json"
  tail -4 "$W/generic_vs_hand.log"
  # issue 10: the share of annealed_mcmc's wall time outside the network calls (goal <= 10 %)
  stage profile_network "${PROFILE_TIMEOUT:-20}" python3 benchmarks/profile_network.py --device cuda \
    --json "$W/profile_network_cuda.json"
  grep -E -A4 '^unprofiled|^profile:' "$W/profile_network.log"
  # issue 13 item 5: ms per training iteration on the GPU, fused against eager (the CPU's are in offpolicy_full/)
  stage offpolicy_timing "${OFFPOLICY_TIMEOUT:-65}" python3 benchmarks/offpolicy.py timing --device cuda \
    --out "$W/offpolicy" --targets 25gmm --methods tb pis --iterations 40 --segment 20
  tail -3 "$W/offpolicy_timing.log"
  stage pytest "${TEST_TIMEOUT:-215}" python3 -m pytest -q -p no:cacheprovider -n 16 \
    tests/test_gmm.py tests/test_mh.py tests/test_sde.py tests/test_hmc.py tests/test_random.py \
    tests/test_trajectory.py tests/test_oracles.py tests/test_sampling.py tests/test_chain_offset.py \
    tests/test_validation.py tests/test_cuda_graphs.py tests/test_seed_tensors.py tests/test_validation_switch.py \
    tests/test_triton_inductor.py tests/test_offpolicy_table.py tests/test_vmap.py tests/test_export_deploy.py tests/test_autocast.py \
    -k "${2:-cuda or (triton and (gmm or accept or philox or sde_step or normals or out_views))}"
  grep -E "passed|failed|Error" "$W/pytest.log" | tail -15
  stage bench "${BENCH_TIMEOUT:-130}" python3 -m fastsamp.cli bench --device cuda --min-time 0.2 \
    --ops 'gmm_mala[compact],gmm_mala[separated],sde_step,gmm_score[separated],score_mh_accept,mala_propose,line_points,energy_mh_accept' \
    --json "$W/bench_cuda.json"
  tail -48 "$W/bench.log"
  stage sample 12 python3 -m fastsamp.cli sample --device cuda --chains 1048576 --json "$W/sample_cuda.json"
  tail -4 "$W/sample.log"
  # issue 10: torch.func.vmap of the public ops (the batching rules' fold) against the per-slice calls and the hand fold
  stage vmap_ops "${VMAP_TIMEOUT:-20}" python3 benchmarks/vmap_ops.py --device cuda --repeats 11 --calls 10 \
    --json "$W/vmap_ops_cuda.json"
  tail -10 "$W/vmap_ops.log"
  # issue 13 item 4, last (whatever time is left): LGCP TB + Expl. + LP + LS per training iteration on the GPU. On
  # the CPU it is 2.5 s (7 CPU-hours a seed, with a 773 MB checkpoint that cannot stay in git): if the GPU takes
  # well under 60 ms, a seed fits one device call. The point pattern does not change the cost (synthetic here).
  stage lgcp_timing "${LGCP_TIMEOUT:-60}" python3 benchmarks/offpolicy.py timing --device cuda --out "$W/offpolicy" \
    --targets lgcp --methods tb+expl+lp+ls --iterations 20 --segment 10
  tail -2 "$W/lgcp_timing.log"
else
  # issue 10 against the best PyTorch: the generic annealed_mcmc and the hand loop with torch.compile (the hand loop's
  # move and predictor, and the network for annealed_mcmc), besides the eager sides
  stage generic_vs_hand_compiled "${GVHC_TIMEOUT:-90}" python3 benchmarks/generic_vs_hand.py --device cuda \
    --repeats 5 --json "$W/generic_vs_hand_compiled_cuda.json"
  tail -9 "$W/generic_vs_hand_compiled.log"
  # the Triton network engine (issue 11): score and energy networks, the shared move kernels on every evaluator,
  # hidden widths 129-256 on the tiled path (its slow-marked cases too: -m), CUDA-resident ScoreMLPs / EnergyMLPs
  # in annealed_mcmc; ~70 kernel variants to compile
  stage pytest_mlp "${MLP_TEST_TIMEOUT:-160}" python3 -m pytest -q -p no:cacheprovider -n 8 -m "slow or not slow" \
    tests/test_mlp_triton.py
  grep -E "passed|failed|Error" "$W/pytest_mlp.log" | tail -15
  # the Triton ops of one MLP (kernels/mlp_train.py: mlp_net, its backward, mlp_net_lsq, the energy training op
  # mlp_net_energy_lsq): their tests against the reference (~20 kernel variants) and FusedMLP's on CUDA tensors, then
  # one call of each (forward + backward to every weight; the losses with every gradient) timed against the
  # reference's
  stage pytest_train "${TRAIN_TEST_TIMEOUT:-75}" python3 -m pytest -q -p no:cacheprovider -n 8 \
    tests/test_mlp_train_energy.py tests/test_mlp_train.py tests/test_fused_mlp.py -k "triton or cuda"
  grep -E "passed|failed|Error" "$W/pytest_train.log" | tail -8
  stage train_ops "${TRAIN_TIMEOUT:-30}" python3 - "$W/train_ops_cuda.json" <<'PY'
import datetime, json, statistics, sys, time
import torch
from fastsamp import ops
g = torch.Generator(device="cuda").manual_seed(0)
B, D, H, O, L = 4096, 34, 128, 2, 3  # a ScoreMLP / EnergyMLP of D = 2 (16 frequencies), hidden 128, 3 hidden layers
def rand(*shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, device="cuda")
ws = [rand(H, D, scale=D ** -0.5)] + [rand(H, H, scale=H ** -0.5) for _ in range(L)] + [rand(O, H, scale=H ** -0.5)]
bs = [rand(w.shape[0], scale=0.1) for w in ws]
ps = [t.requires_grad_(True) for t in ws + bs]
x, c, z, g_out = rand(B, D), rand(B, O), rand(B, O), rand(B, O)
v, sigma = torch.rand(B, generator=g, device="cuda") + 0.3, torch.rand(B, generator=g, device="cuda") + 0.3
STEPS = {  # one call with every parameter's gradient
    "mlp_net_energy_lsq": lambda b: torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, c, v, sigma, z, backend=b), ps),
    "mlp_net_lsq": lambda b: torch.autograd.grad(ops.mlp_net_lsq(x, ws, bs, c, sigma, backend=b), ps),
    "mlp_net forward + backward": lambda b: torch.autograd.grad(ops.mlp_net(x, ws, bs, backend=b), ps, g_out)}
out = dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
           shape=dict(B=B, D_in=D, H=H, O=O, L=L), dtype="float32", ops={})
for name, step in STEPS.items():
    got, want = step("triton"), step("torch")
    err = max(((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in zip(got, want))
    times = {"triton": [], "torch": []}
    for _ in range(15):
        for backend in times:
            torch.cuda.synchronize(); t0 = time.perf_counter(); step(backend); torch.cuda.synchronize()
            times[backend].append(time.perf_counter() - t0)
    med = {k: statistics.median(t[2:]) for k, t in times.items()}
    out["ops"][name] = dict(median_s=med, speedup=med["torch"] / med["triton"], max_rel_grad_err_vs_torch=err)
    print(name, out["ops"][name])
json.dump(out, open(sys.argv[1], "w"), indent=1)
PY
  tail -3 "$W/train_ops.log"
  # FusedMLP (a user's Sequential through ops.mlp_net, now the Triton kernel on a GPU) against the Sequential in
  # eager and compiled, per pass and in an annealed_mcmc run
  stage fused_mlp "${FUSED_MLP_TIMEOUT:-40}" python3 benchmarks/fused_mlp.py --device cuda --repeats 5 \
    --json "$W/fused_mlp_cuda.json"
  tail -12 "$W/fused_mlp.log"
  # the Triton score-network engine: annealed MCMC on a Product of two ScoreMLPs, fused vs generic (issue 11)
  stage mlp_product "${MLP_TIMEOUT:-45}" python3 benchmarks/mlp_product.py --device cuda --repeats 1 \
    --json "$W/mlp_product_cuda.json"
  stage mlp_product_summary 5 python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print({k: \
round(r[k]['wall_s'], 4) for k in ('kernel', 'fused', 'generic')}, 'fused/generic speedup', r['speedup'], \
'kernel frac of fp32 GEMM', r['kernel']['frac_gemm'])" "$W/mlp_product_cuda.json"
  cat "$W/mlp_product_summary.log"; [ -s "$W/mlp_product_cuda.json" ] || tail -20 "$W/mlp_product.log"
fi
echo "gpu_run.sh $MODE: $(( ${GPU_RUN_BUDGET:-580} - DEADLINE + $(date +%s) ))s; results in $OUT/gpu_run_$MODE.tar.gz"
cat "$W/stages.txt"
[ ${#FAILED[@]} -eq 0 ] || { echo "gpu_run.sh $MODE: failed, timed out or skipped: ${FAILED[*]}" >&2; exit 3; }
