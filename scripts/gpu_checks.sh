#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one device call (`device` tool: command "bash scripts/gpu_checks.sh",
# carry [".devsite"]; see scripts/device_site.sh): the GPU tests (nf4 and int8 load, answer like bf16,
# in less memory), then serve_bench on Llama 3.2 Vision at its real dimensions with random weights
# (built once into /tmp/mllama-real, reused by later calls on the same machine) in nf4 and bf16, each
# against plain HF `generate` for the same model in the same run, then BLIP VQA at its real dimensions
# (built into /tmp/blip-real) in nf4, int8 and bf16 the same way. Each step has its own time limit, so
# one that runs long still leaves the others their figures; logs (and Llama's JSON) land in $OUT: 8
# files, the device tool's most.
# Arguments: the seconds each Llama 3.2 Vision run may take, and each BLIP run. GPU_TESTS=0 skips the
# tests (run them beside a training run instead, as scripts/train_gpu.sh's header shows).
set -uo pipefail
limit=${1:-150} blip_limit=${2:-50}
out=${OUT:?set by the device tool}
source scripts/device_site.sh
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
[ "${GPU_TESTS:-1}" = 0 ] || timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/serving/test_gpu.py 2>&1 \
  | tee "$out/gpu-tests.log" | tail -n 5
for q in nf4 none; do
  timeout "$limit" python3 benchmarks/serve_bench.py --family mllama --size real --device cuda --quantization "$q" \
    --family-dir /tmp/mllama-real --users 1 16 --turns 2 --baseline-users 1 --heat-convs 2 --json "$out/mllama-$q.json" 2>&1 \
    | grep -av "Loading weights\|Writing model\|torchvision" | tee "$out/mllama-$q.log"
done
for q in nf4 int8 none; do
  timeout "$blip_limit" python3 benchmarks/serve_bench.py --family blip --size real --device cuda --quantization "$q" \
    --family-dir /tmp/blip-real --users 1 16 --turns 2 --baseline-users 1 --heat-convs 2 2>&1 \
    | grep -av "Loading weights\|Writing model\|torchvision" | tee "$out/blip-$q.log"
done
