#!/usr/bin/env bash
# One device session: build with nvcc, run the GPU tests, the GPU benchmarks and the
# main job on the GPU. Writes logs and JSON under $OUT (default ./gpu_out). Every step that starts
# a process heavier than echo/grep/tail runs under a timeout: nvidia-smi 5 s, build 140, versions
# and info 20, tests 75 + 160, energy training 45 + 30, bench 55, mlp_product 45 + its summary 5, main
# job 15: 595 s in all, inside one device call (600 s at most; what runs between them takes milliseconds). The stage
# budgets are estimates: this script has never run on a GPU.
# Without an NVIDIA GPU (no nvidia-smi, or it lists none) it stops before the build, exit status 1.
#   bash benchmarks/gpu_run.sh [pytest -k expression]
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! timeout 5 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$OUT/device.txt" 2>&1 || [ "$(wc -l < "$OUT/device.txt")" -lt 2 ]; then
  echo "gpu_run.sh: no NVIDIA GPU here (nvidia-smi: $(head -c 200 "$OUT/device.txt")): nothing run" >&2
  exit 1
fi
date -u >> "$OUT/device.txt"; cat "$OUT/device.txt"
SECONDS=0
FASTSAMP_CUDA_ARCHS=90 timeout 140 python3 -m pip install --no-build-isolation --no-deps -e . -q > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: ${SECONDS}s"
timeout 20 python3 -c "import sys, triton; from fastsamp import cli; print('triton', triton.__version__, file=sys.stderr); \
sys.exit(cli.main(['info']))" > "$OUT/info.json" 2>> "$OUT/device.txt"  # info: the torch version, CUDA, backends
grep -m1 '^triton ' "$OUT/device.txt"; grep -E -A5 '"torch"|backends' "$OUT/info.json"
SECONDS=0
timeout "${TEST_TIMEOUT:-75}" python3 -m pytest -q -p no:cacheprovider -n 8 \
  tests/test_gmm.py tests/test_mh.py tests/test_sde.py tests/test_hmc.py tests/test_random.py tests/test_trajectory.py \
  tests/test_oracles.py tests/test_sampling.py tests/test_chain_offset.py tests/test_validation.py tests/test_cuda_graphs.py \
  tests/test_seed_tensors.py tests/test_validation_switch.py tests/test_triton_inductor.py tests/test_offpolicy_table.py \
  -k "${1:-cuda or (triton and (gmm or accept or philox or sde_step or normals or out_views))}" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? ${SECONDS}s"; grep -E "passed|failed|Error" "$OUT/pytest.log" | tail -15
SECONDS=0  # the Triton network engine (issue 11): score and energy networks, the shared move kernels on every
# evaluator, hidden widths 129-256 on the tiled path (its slow-marked cases too: -m), CUDA-resident ScoreMLPs /
# EnergyMLPs in annealed_mcmc; its own budget, ~70 kernel variants to compile
timeout "${MLP_TEST_TIMEOUT:-160}" python3 -m pytest -q -p no:cacheprovider -n 8 -m "slow or not slow" \
  tests/test_mlp_triton.py > "$OUT/pytest_mlp.log" 2>&1
echo "pytest mlp rc=$? ${SECONDS}s"; grep -E "passed|failed|Error" "$OUT/pytest_mlp.log" | tail -15
SECONDS=0  # the Triton energy training op (issue 11 item 4, kernels/mlp_train.py): its tests against autograd's
# double backward (~8 kernel variants), then one op call (loss + every gradient) timed against the reference's
timeout "${TRAIN_TEST_TIMEOUT:-45}" python3 -m pytest -q -p no:cacheprovider -n 8 tests/test_mlp_train_energy.py \
  -k triton > "$OUT/pytest_train_energy.log" 2>&1
echo "pytest train energy rc=$? ${SECONDS}s"; grep -E "passed|failed|Error" "$OUT/pytest_train_energy.log" | tail -8
SECONDS=0
timeout "${TRAIN_TIMEOUT:-30}" python3 - "$OUT/train_energy_cuda.json" > "$OUT/train_energy.log" 2>&1 <<'PY'
import datetime, json, statistics, sys, time
import torch
from fastsamp import ops
g = torch.Generator(device="cuda").manual_seed(0)
B, D, H, O, L = 4096, 34, 128, 2, 3  # an EnergyMLP of D = 2 (16 frequencies), hidden 128, 3 hidden layers
def rand(*shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, device="cuda")
ws = [rand(H, D, scale=D ** -0.5)] + [rand(H, H, scale=H ** -0.5) for _ in range(L)] + [rand(O, H, scale=H ** -0.5)]
bs = [rand(w.shape[0], scale=0.1) for w in ws]
ps = [t.requires_grad_(True) for t in ws + bs]
x, c, z = rand(B, D), rand(B, O), rand(B, O)
v, sigma = torch.rand(B, generator=g, device="cuda") + 0.3, torch.rand(B, generator=g, device="cuda") + 0.3
def step(backend):
    return torch.autograd.grad(ops.mlp_net_energy_lsq(x, ws, bs, c, v, sigma, z, backend=backend), ps)
got, want = step("triton"), step("torch")
err = max(((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in zip(got, want))
times = {"triton": [], "torch": []}
for _ in range(15):
    for backend in times:
        torch.cuda.synchronize(); t0 = time.perf_counter(); step(backend); torch.cuda.synchronize()
        times[backend].append(time.perf_counter() - t0)
med = {k: statistics.median(t[2:]) for k, t in times.items()}
out = dict(device=torch.cuda.get_device_name(), date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
           shape=dict(B=B, D_in=D, H=H, O=O, L=L), dtype="float32", median_s=med, speedup=med["torch"] / med["triton"],
           max_rel_grad_err_vs_torch=err)
json.dump(out, open(sys.argv[1], "w"), indent=1); print(out)
PY
echo "train energy rc=$? ${SECONDS}s"; tail -3 "$OUT/train_energy.log"
SECONDS=0
timeout "${BENCH_TIMEOUT:-55}" python3 -m fastsamp.cli bench --device cuda --min-time 0.2 \
  --ops 'gmm_mala[compact],gmm_mala[separated],sde_step,sde_step(out=),gmm_score[separated],score_mh_accept,mala_propose,line_points' \
  --json "$OUT/bench_cuda.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$? ${SECONDS}s"; tail -28 "$OUT/bench.log"
SECONDS=0  # the Triton score-network engine: annealed MCMC on a Product of two ScoreMLPs, fused vs generic (issue 11)
timeout "${MLP_TIMEOUT:-45}" python3 benchmarks/mlp_product.py --device cuda --repeats 1 \
  --json "$OUT/mlp_product_cuda.json" > "$OUT/mlp_product.log" 2>&1
echo "mlp_product rc=$? ${SECONDS}s"
timeout 5 python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print({k: round(r[k]['wall_s'], 4) for k in \
('kernel', 'fused', 'generic')}, 'fused/generic speedup', r['speedup'], 'kernel frac of fp32 GEMM', \
r['kernel']['frac_gemm'])" "$OUT/mlp_product_cuda.json" || tail -20 "$OUT/mlp_product.log"
SECONDS=0
timeout 15 python3 -m fastsamp.cli sample --device cuda --chains 1048576 --json "$OUT/sample_cuda.json" 2>&1 | tail -4
echo "sample rc=${PIPESTATUS[0]} ${SECONDS}s"
