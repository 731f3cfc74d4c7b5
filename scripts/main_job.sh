#!/usr/bin/env bash
# The README's main job, on a fresh machine:
#   1. create .venv (if missing) and install sparse_bnn into it (pip install -e .);
#   2. get Fashion-MNIST: Debian's dataset-fashion-mnist package when apt-get is there and we are
#      root, else the loader's md5-checked download, else stop with a message naming the offline
#      fallback (--data digits);
#   3. fit SS-GHS on Fashion-MNIST with an MLP 784-400-400-10, shrinking the network while it
#      trains (a few minutes on 2 CPU cores), ending with the compression table.
#
# Usage: scripts/main_job.sh            (again after an interruption: it resumes)
# Settings (docs/tuning.md, "Settings that prune"): posterior scales start at softplus(-3), weights
# learn at Adam 3e-3 and the indicators at 1e-2, so units are decided within ~60 epochs; with
# --shrink the switched-off units are removed and the rest of the run trains a network of a few
# dozen units. 300 epochs; peak resident memory about 1.5 GB.
# DATA=digits (offline: sklearn's 8x8 digits, 1,437 training images) trains an MLP 64-100-100-10
# with other settings: there the fast indicators above switch the network off (1 + 2 units, 45%
# test accuracy). One Adam rate of 1e-2 for weights and indicators, 600 epochs of batch 128 and
# 100 fine-tuning epochs of the kept units give >= 94% test accuracy, BMA and compact (measured,
# seeds 0 / 1 / 2: BMA 95.0 / 96.4 / 96.4%, compact 96.4 / 96.9 / 96.7%, 17 / 14 / 15 units kept;
# under two minutes on 2 CPU cores).
# Environment: EPOCHS (default 300; 600 for digits), OUT (default runs/fashion-mnist-ss-ghs, or
# runs/DATA-ss-ghs), DATA (default fashion-mnist; DATA=digits runs offline), PYTHON (interpreter
# that creates .venv), INSTALL=0 (skip the pip install into an existing .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${DATA:-fashion-mnist}"
if [ "$DATA" = "fashion-mnist" ]; then EPOCHS="${EPOCHS:-300}"; else EPOCHS="${EPOCHS:-600}"; fi
OUT="${OUT:-runs/$DATA-ss-ghs}"
PYTHON="${PYTHON:-python3}"

# 1. environment -----------------------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
fi
if [ "${INSTALL:-1}" = 1 ]; then
    echo "== installing sparse_bnn into .venv"
    .venv/bin/python -m pip install --quiet -e .
fi
BNN=(.venv/bin/python -m sparse_bnn)

# 2. data ------------------------------------------------------------------------------------
if [ "$DATA" = "fashion-mnist" ]; then
    if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 \
            && [ "$(id -u)" = 0 ]; then
        echo "== installing Debian's dataset-fashion-mnist"
        (apt-get update && apt-get install -y dataset-fashion-mnist) \
            || echo "   (apt-get failed; trying the download instead)"
    fi
    # finds the files (system folder, \$SPARSE_BNN_DATA, cache) or downloads them into the cache
    if ! .venv/bin/python -c "from sparse_bnn.data.locate import find_idx_folder as f; print('== Fashion-MNIST in', f('fashion-mnist'))"; then
        cat >&2 <<'EOF'
Fashion-MNIST is not available: no Debian package (dataset-fashion-mnist) and the download failed.
Put the four IDX .gz files into a folder and set SPARSE_BNN_DATA=FOLDER, or run offline on a
bundled data set:   DATA=digits scripts/main_job.sh   (or: sparse-bnn fit --data digits ...)
EOF
        exit 2
    fi
fi

# 3. the run ---------------------------------------------------------------------------------
if [ -f "$OUT/metrics.json" ]; then
    echo "== $OUT already holds a finished run (delete it to train again)"
    "${BNN[@]}" report "$OUT"
    exit 0
fi
WIDTHS=400,400
BATCH=1024
RATES=(--lr 3e-3 --indicator-lr 1e-2)  # docs/tuning.md, "Settings that prune"
if [ "$DATA" != "fashion-mnist" ]; then  # the offline sets are small: a smaller net and batch, and
    WIDTHS=100,100                      # indicators no faster than the weights (see the top)
    BATCH=128
    RATES=(--lr 1e-2 --fine-tune-epochs 100)
fi
RESUME=""  # --resume continues an interrupted run; a fresh --out has nothing to resume
if [ -e "$OUT/config.json" ] || [ -e "$OUT/checkpoint" ]; then
    RESUME=--resume
fi
echo "== fitting SS-GHS on $DATA, MLP widths $WIDTHS, $EPOCHS epochs -> $OUT${RESUME:+ (resuming)}"
# a 10% validation split puts the accuracy in the progress bar next to loss and kept units;
# the table at the end says WARNING when the run collapsed (docs/guide/fitting.md)
"${BNN[@]}" fit --data "$DATA" --net mlp --widths "$WIDTHS" --prior ss-ghs --validation-fraction 0.1 \
    --epochs "$EPOCHS" --batch-size "$BATCH" "${RATES[@]}" --rho-init -3 --shrink \
    --seed 0 --out "$OUT" $RESUME
echo "== the compact model is in $OUT/compact; predict new examples (in the data set's units, e.g. pixel"
echo "   values 0-255 for Fashion-MNIST) with"
echo "   .venv/bin/python -m sparse_bnn predict $OUT IMAGES.npy --out predictions.csv"
