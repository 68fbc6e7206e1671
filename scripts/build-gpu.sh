#!/usr/bin/env bash
# Builds, on any Linux machine without a GPU, everything the prepared GPU
# run (scripts/gpu-check.sh --quick, docs/CUDA.md) carries to the GPU
# machine:
#   target/cuda/release/examples/{gpu_check,gpu_ops,train_kits19}
#   target/cudnn/release/examples/{gpu_check,gpu_ops}
#   target/cudnn/gpu-tests/*: the GPU unit tests of kseg-model and
#     kseg-loss (`cuda::` tests; each skips itself without a device)
# About 11 minutes on two cores from clean (most of it nvcc on candle's
# kernels). It sources scripts/cuda-env.sh --cudnn itself (KSEG_CUDA_DIR,
# CUDA_COMPUTE_CAP as there).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cuda-env.sh
source scripts/cuda-env.sh --cudnn
CARGO_TARGET_DIR=target/cuda cargo build --release --locked --features cuda \
    --example gpu_check --example gpu_ops --example train_kits19
CARGO_TARGET_DIR=target/cudnn cargo build --release --locked --features cudnn \
    --example gpu_check --example gpu_ops
# The unit-test executables, named by crate, from cargo's own report.
tests=target/cudnn/gpu-tests
rm -rf "$tests"
mkdir -p "$tests"
CARGO_TARGET_DIR=target/cudnn cargo test --release --locked --no-run --lib \
    -p kseg-model -p kseg-loss --features kseg-model/cudnn,kseg-loss/cuda \
    --message-format=json |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
        print("gpu test binary:", name)
' "$tests"
du -sh target/cuda/release/examples target/cudnn/release/examples "$tests"
