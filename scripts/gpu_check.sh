#!/usr/bin/env bash
# The GPU checks, as one script for the few minutes a CUDA machine is lent: the CUDA tests, the
# engine and polar-route benchmarks on real matrices, the runtime benchmark, and one whole-model
# run with its time and peak device memory, then the same for COMPOT + GPTQ-4bit (its layers run
# from their packed bytes through the kernels), then healing (one block, and a whole healed run), and end-to-end distillation of the first variant.
# Each step's output goes to $OUT (default ./gpu-check) and one failing step does not stop the others. Needs a CUDA build of torch in .venv
# (`pip install torch` there instead of the CPU wheel) and the offline assets (scripts/setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=.venv/bin/python
step() {  # name command...
    local name=$1
    shift
    echo "== $name"
    local start=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    echo "   rc=$? in $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/gpu.txt"
step tests "$PY" -m pytest -q tests/test_kernel.py tests/test_layer.py tests/test_engine.py tests/test_gptq.py \
    -k "cuda or kernel or layout or gptq"
step polar "$PY" -m benchmarks.bench_polar --device cuda --matrices 7
step engine "$PY" -m benchmarks.bench_engine --device cuda --blocks 3 15 --cr 0.2
step compress "$PY" -c "from zoo.cli import main; main()" -v compress smollm2-135m --cr 0.2 --device cuda \
    --out "$OUT/smollm2-135m-cr0.2"
step runtime "$PY" -m benchmarks.bench_runtime --base smollm2-135m --variant "$OUT/smollm2-135m-cr0.2" --device cuda
step compress-gptq "$PY" -c "from zoo.cli import main; main()" -v compress smollm2-135m --cr 0.32 --quantize gptq-w4 \
    --quantize-group-size 64 --device cuda --out "$OUT/smollm2-135m-cr0.32-gptq-w4"
step runtime-gptq "$PY" -m benchmarks.bench_runtime --base smollm2-135m --variant "$OUT/smollm2-135m-cr0.32-gptq-w4" \
    --device cuda
step heal-block "$PY" -m benchmarks.heal_block --device cuda --block 15 --steps 0 32 64 128 --lr 1e-3
step compress-heal "$PY" -c "from zoo.cli import main; main()" -v compress smollm2-135m --cr 0.2 --heal 64 \
    --device cuda --eval --out "$OUT/smollm2-135m-cr0.2-heal64"
step distill "$PY" -m benchmarks.distill --device cuda --variant "$OUT/smollm2-135m-cr0.2" --steps 0 150 --lr 3e-4 \
    --eval-windows 4 --eval-limit 30
# Several GPUs (NCCL needs one per process): 2 torchrun processes against one, and whether the
# checkpoints match (the single process runs on one GPU, so they should, block for block).
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    step ranks-cuda "$PY" -m benchmarks.bench_ranks --processes 2 --threads 1 -- smollm2-135m --cr 0.2 --device cuda
fi
