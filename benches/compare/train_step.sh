#!/usr/bin/env bash
# kseg's training step and eval forward beside PyTorch's (see train_step.py).
#
#     benches/compare/train_step.sh [--cases small,default] [--threads N]
#
# Sets up PyTorch from PyPI in $KSEG_COMPARE_VENV (default .venv-compare,
# git-ignored) the first time: PyPI's Linux torch wheel is the CUDA build,
# about 5 GB with its nvidia-* dependencies, and runs on the CPU as well.
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${KSEG_COMPARE_VENV:-.venv-compare}"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "train_step.sh: installing torch into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check torch numpy
fi
cargo build --release --example train_step
exec "$venv/bin/python" benches/compare/train_step.py "$@"
