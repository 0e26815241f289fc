#!/usr/bin/env bash
# Stages what a bare GPU machine needs for bench/gpu_check.sh into one folder of this
# checkout that git ignores (bench/README.md, "Prepared, not yet measured"):
#
#   bench/gpu_stage.sh [DIR]        (default .dev)
#
#   DIR/mnist/              MNIST's four .gz files, from $CAPSNET_MNIST_DIR or
#                           ../shared/data/mnist       -> CAPSNET_MNIST_DIR=DIR/mnist
#   DIR/wheels/             Chainer 7.8.1's wheel (pip wheel, from its cache where it
#                           has one)                   -> WHEELS=DIR/wheels
#   DIR/torch_capsnet.py    the PyTorch peer, from ../shared/peers -> PEER=...
#
# and adds /DIR/ to .git/info/exclude, so that the folder travels only where a call
# names it in `carry`. About 12 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.dev}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$DIR/mnist" "$DIR/wheels"
MNIST=${CAPSNET_MNIST_DIR:-../shared/data/mnist}
cp "$MNIST"/*-ubyte.gz "$DIR/mnist/"
[ -f "$DIR/wheels/chainer-7.8.1-py3-none-any.whl" ] ||
    PIP_CONSTRAINT="$PWD/constraints.txt" "$PY" -m pip wheel -q --no-deps chainer==7.8.1 \
        -w "$DIR/wheels"
cp ../shared/peers/torch_capsnet.py "$DIR/"
mkdir -p .git/info
grep -qx "/$DIR/" .git/info/exclude 2>/dev/null || echo "/$DIR/" >>.git/info/exclude
du -sh "$DIR"
ls "$DIR" "$DIR/mnist" "$DIR/wheels"
