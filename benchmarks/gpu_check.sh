#!/usr/bin/env bash
# The checks to run when an accelerator is lent: every figure lands in $OUT as JSON.
#   1. the main job (SS-GHS, MLP 784-400-400-10, --shrink, 300 epochs) through the CLI;
#   2. benchmarks/scaling.py: plain SS-GHS, the main job's shrinking and node-wise BMR + shrinking
#      on the real device(s), resident and streamed, 20 Fashion-MNIST epochs each;
#   3. benchmarks/step_time.py: an SVI step against a deterministic step of the same network;
#   4. LeNet-5-Caffe SS-GHS on Fashion-MNIST, with whatever time is left.
# Usage (from the repository root, Fashion-MNIST's IDX files in $SPARSE_BNN_DATA):
#   OUT=results-folder bash benchmarks/gpu_check.sh
# Environment: OUT (required), PYTHON (default python3), LENET_EPOCHS (default 150).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="${PYTHONPATH:-.}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
WORK="$(mktemp -d)"
started=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - started )) s] $*"; }

stamp "devices"
"$PYTHON" -c "import jax, flax, numpyro, optax; print(jax.__version__, flax.__version__, numpyro.__version__, optax.__version__); print(jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

stamp "main job"
timeout 150 "$PYTHON" -m sparse_bnn fit --data fashion-mnist --net mlp --widths 400,400 --prior ss-ghs \
    --validation-fraction 0.1 --epochs 300 --batch-size 1024 --lr 3e-3 --indicator-lr 1e-2 --rho-init -3 \
    --shrink --seed 0 --out "$WORK/main_job" --quiet 2>&1 | tail -25
for f in metrics report; do cp "$WORK/main_job/$f.json" "$OUT/main_job_$f.json" 2>/dev/null; done

stamp "scaling"
timeout 170 "$PYTHON" benchmarks/scaling.py --schemes plain shrink bmr-shrink --devices 1 2 4 8 \
    --data fashion-mnist --n-data 60000 --epochs 20 --output "$OUT/scaling_gpu.json" 2>&1 | tail -12

stamp "step time"
timeout 80 "$PYTHON" benchmarks/step_time.py --priors ss-ghs ss-gl flat gaussian --out "$OUT/step_time_gpu.json" 2>&1 | tail -12

stamp "LeNet-5-Caffe"
timeout 150 "$PYTHON" benchmarks/fmnist.py --nets lenet5-caffe --priors ss-ghs --epochs "${LENET_EPOCHS:-150}" \
    --sigma0 0.3 --lr-schedule cosine --runs-dir "$WORK/runs" --results-dir "$WORK/results" --tag gpu 2>&1 | tail -8
cp "$WORK"/results/*.json "$OUT/" 2>/dev/null
stamp "done"
ls -la "$OUT"
