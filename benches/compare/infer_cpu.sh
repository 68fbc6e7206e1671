#!/usr/bin/env bash
# CPU inference: `kseg predict` beside PyTorch and ONNX Runtime (see
# infer_cpu.py; issue #29).
#
#     benches/compare/infer_cpu.sh [--checkpoint RUN/checkpoints/step_N]
#         [--image CASE/imaging.nii.gz] [--threads 2] [--batch 2]
#         [--skip-graph] [--precision int8|bf16 ...] [--mirrors both|off|on]
#         [--slices 20]
#
# Without --checkpoint: the KiTS19 preset's network (base 32, depth 5),
# trained two steps on small synthetic cases (the weights do not change the
# work; BatchNorm statistics away from 0/1 keep the comparison honest).
# Without --image: one synthetic Nx512x512 case (N: --slices, default 20).
# Both are made once under $KSEG_BENCH_DIR (default target/bench-infer).
#
# Sets up PyTorch, ONNX, ONNX Runtime and nibabel from PyPI in
# $KSEG_COMPARE_VENV (default .venv-compare, git-ignored) the first time:
# PyPI's Linux torch wheel is the CUDA build, about 5 GB with its nvidia-*
# dependencies, and runs on the CPU as well. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${KSEG_COMPARE_VENV:-.venv-compare}"
if ! "$venv/bin/python" -c "import torch, onnx, onnxruntime, nibabel" 2>/dev/null; then
    echo "infer_cpu.sh: installing torch, onnx, onnxruntime and nibabel into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check torch numpy onnx onnxruntime nibabel
fi
cargo build --release --bin kseg
kseg=target/release/kseg
work="${KSEG_BENCH_DIR:-target/bench-infer}"

slices=20
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --slices) slices=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
has() { local a; for a in "${args[@]}"; do [[ $a == "$1" ]] && return 0; done; return 1; }
if ! has --checkpoint; then
    run="$work/run32"
    if [[ ! -d $run/checkpoints ]]; then
        "$kseg" synth --out "$work/train" --cases 3 --size 128 128 --slices 8 8 --seed 1
        "$kseg" train --preset kits19 --data-dir "$work/train" --out "$run" --steps 2 \
            --device cpu --set train.batch_size=2 --set 'augment.out_size=[128,128]' \
            --set data.n_val=1 --set train.val_batch_size=2 --set train.checkpoint_every=2 \
            --set train.overlay_slices=0
    fi
    ckpt=$(find "$run/checkpoints" -mindepth 1 -maxdepth 1 -type d -name 'step_*' | sort | tail -1)
    args+=(--checkpoint "$ckpt")
fi
if ! has --image; then
    big="$work/big$slices"
    if [[ ! -f $big/case_00000/imaging.nii.gz ]]; then
        "$kseg" synth --out "$big" --cases 1 --size 512 512 --slices "$slices" "$slices" --seed 3
    fi
    args+=(--image "$big/case_00000/imaging.nii.gz")
fi
exec "$venv/bin/python" benches/compare/infer_cpu.py --kseg "$kseg" "${args[@]}"
