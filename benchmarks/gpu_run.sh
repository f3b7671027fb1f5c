#!/usr/bin/env bash
# One device session: build with nvcc, run the GPU tests, the GPU benchmarks and the
# main job on the GPU. Writes logs and JSON under $OUT (default ./gpu_out).
#   bash benchmarks/gpu_run.sh [pytest -k expression]
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
FASTSAMP_CUDA_ARCHS=90 python3 -m pip install --no-build-isolation --no-deps -e . -q > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m fastsamp.cli info | tee -a "$OUT/device.txt"
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_ops.py tests/test_oracles.py tests/test_sampling.py \
  -k "${1:-cuda or triton}" 2>&1 | tee "$OUT/pytest.log" | tail -25
timeout 200 python3 -m fastsamp.cli bench --device cuda --min-time 0.3 --json "$OUT/bench_cuda.json" 2>&1 \
  | tee "$OUT/bench.log" | tail -30
timeout 60 python3 -m fastsamp.cli sample --device cuda --chains 1048576 --json "$OUT/sample_cuda.json" 2>&1 | tail -5
