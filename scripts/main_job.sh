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
# Environment: EPOCHS (default 300), OUT (default runs/fashion-mnist-ss-ghs), DATA (default
# fashion-mnist; DATA=digits runs offline), PYTHON (interpreter that creates .venv), INSTALL=0
# (skip the pip install into an existing .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS="${EPOCHS:-300}"
OUT="${OUT:-runs/fashion-mnist-ss-ghs}"
DATA="${DATA:-fashion-mnist}"
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
if [ "$DATA" != "fashion-mnist" ]; then  # the offline sets are small: a smaller net and batch
    WIDTHS=100,100
    BATCH=128
fi
echo "== fitting SS-GHS on $DATA, MLP widths $WIDTHS, $EPOCHS epochs -> $OUT"
# a 10% validation split puts the accuracy in the progress bar next to loss and kept units
"${BNN[@]}" fit --data "$DATA" --net mlp --widths "$WIDTHS" --prior ss-ghs --validation-fraction 0.1 \
    --epochs "$EPOCHS" --batch-size "$BATCH" --lr 3e-3 --indicator-lr 1e-2 --rho-init -3 --shrink \
    --seed 0 --out "$OUT" --resume
echo "== the compact model is in $OUT/compact; predict new examples (in the data set's units, e.g. pixel"
echo "   values 0-255 for Fashion-MNIST) with"
echo "   .venv/bin/python -m sparse_bnn predict $OUT IMAGES.npy --out predictions.csv"
