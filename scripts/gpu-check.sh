#!/usr/bin/env bash
# GPU correctness and speed in one table, run on a machine with an NVIDIA GPU
# from binaries built elsewhere (no Rust needed there):
#
#   # on the build machine (no GPU needed):
#   scripts/build-gpu.sh
#   # on the GPU machine, in a copy of the repository holding target/cuda
#   # and target/cudnn:
#   scripts/gpu-check.sh --quick
#
# Steps: (1) correctness, CUDA vs CPU: the PyTorch interop checkpoint's logits
# (≤ 1e-4 f32, ≤ 1e-3 TF32), Lovász and combined-loss values and gradients on
# 8×3×512×512 (examples/gpu_check.rs), without and (if built) with cuDNN;
# (2) speed: training step and eval forward of the default model at
# 8×3×512×512, f32 and TF32, and the data loader alone; (3) PyTorch's same
# step on the same GPU when a python3 with torch is found (PYTHON, else
# /opt/torch/.venv/bin/python3, else python3); (4) a short training of the
# default example on the GPU. It prints one table and exits 1 when a
# correctness check fails.
#
# Without a GPU (no working nvidia-smi) it runs the same steps on the CPU at
# small sizes from CPU binaries (target/release/examples; built with cargo
# when cargo is there), so the script itself can be tested anywhere.
#
# --quick (the prepared GPU run of docs/CUDA.md, a few minutes): the per-op
# harness (examples/gpu_ops.rs: every op's timing with candle's and kseg's
# ops, and its correctness rows, f32 and TF32), gpu_check with candle's ops
# and with kseg's (KSEG_GPU_OPS=kseg), the GPU unit tests of kseg-model and
# kseg-loss (target/cudnn/gpu-tests, from scripts/build-gpu.sh: the
# cuDNN convolution, BatchNorm and loss kernels against the CPU ops), and
# PyTorch's step; no training run.
# It writes $OUT/run.json (card, driver, date, commit, every row) for
# docs/gpu-runs/ beside the Markdown tables.
#
# Environment: KSEG_CUDA_BIN (default target/cuda/release/examples),
# KSEG_CUDNN_BIN (default target/cudnn/release/examples), KSEG_CPU_BIN
# (default target/release/examples), KSEG_GPU_TESTS (default
# target/cudnn/gpu-tests), OUT (default gpu-check-out: logs, run folder,
# table.md), TRAIN_STEPS (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument '$arg' (known: --quick)" >&2; exit 2 ;;
    esac
done
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
table="$out/table.md"
fail=0

if nvidia-smi -L >/dev/null 2>&1; then
    gpu=1
    card="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
    bin="${KSEG_CUDA_BIN:-target/cuda/release/examples}"
    cudnn_bin="${KSEG_CUDNN_BIN:-target/cudnn/release/examples}"
    dev=cuda batch=8 size=512 model=default steps=5
    train_steps="${TRAIN_STEPS:-300}"
else
    gpu=0
    card="none (CPU fallback: $(nproc) cores)"
    bin="${KSEG_CPU_BIN:-target/release/examples}"
    cudnn_bin=""
    dev=cpu batch=2 size=128 model=small steps=3
    train_steps="${TRAIN_STEPS:-20}"
    if [ ! -x "$bin/gpu_check" ] || [ ! -x "$bin/train_kits19" ] || [ ! -x "$bin/gpu_ops" ]; then
        if command -v cargo >/dev/null; then
            cargo build --release --example gpu_check --example train_kits19 --example gpu_ops || exit 1
        else
            echo "gpu-check.sh: no GPU and no CPU binaries in $bin (and no cargo to build them)" >&2
            exit 1
        fi
    fi
fi

# Python with torch: for PyTorch's step, and its nvidia/* wheels carry the
# CUDA 13 libraries (cudart, cublas, curand, cudnn) the binaries load.
py=""
for p in "${PYTHON:-}" /opt/torch/.venv/bin/python3 python3; do
    if [ -n "$p" ] && "$p" -c "import torch" >/dev/null 2>&1; then py="$p"; break; fi
done
libs=""
for root in ${py:+"$("$py" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)"} .cuda/site .cuda/cudnn-site; do
    [ -d "$root/nvidia" ] || continue
    for d in $(find "$root/nvidia" -name 'lib*.so*' -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u); do
        libs="$libs:$d"
    done
done
[ -n "${CUDA_HOME:-}" ] && libs="$libs:$CUDA_HOME/lib64:$CUDA_HOME/lib"
export LD_LIBRARY_PATH="${libs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "# kseg gpu-check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "card: $card; torch: $([ -n "$py" ] && "$py" -c 'import torch; print(torch.__version__)' || echo 'not found') ${py:+($py)}"
    echo
    echo "| build | check | value | limit / rate | ok |"
    echo "|---|---|---|---|---|"
} > "$table"

# gpu_check BUILD-LABEL BIN-DIR ARGS...: its rows, prefixed with the build.
gpu_check() {
    local label="$1" dir="$2"
    shift 2
    local log="$out/gpu_check-$label.log"
    if [ ! -x "$dir/gpu_check" ]; then
        echo "| $label | gpu_check | not built ($dir/gpu_check) | | |" >> "$table"
        return
    fi
    "$dir/gpu_check" --device "$dev" --batch "$batch" --size "$size" --model "$model" --steps "$steps" "$@" > "$log" 2>&1
    local rc=$?
    grep '^| ' "$log" | grep -v '^| check ' | sed "s/^| /| $label | /" >> "$table"
    if [ $rc -ne 0 ]; then
        fail=1
        echo "| $label | gpu_check exited $rc | see $log | | FAIL |" >> "$table"
    fi
}

# The per-op harness: candle's ops and kseg's, f32 and (GPU) TF32.
ops_md="$out/ops.md"
: > "$ops_md"
if [ $quick = 1 ]; then
    ops_bin="$bin"; [ -n "$cudnn_bin" ] && [ -x "$cudnn_bin/gpu_ops" ] && ops_bin="$cudnn_bin"
    if [ -x "$ops_bin/gpu_ops" ]; then
        precs="f32"; [ $gpu = 1 ] && precs="f32 tf32"
        case $model in default) obase=32 ;; *) obase=8 ;; esac
        for prec in $precs; do
            log="$out/gpu_ops-$prec.log"
            "$ops_bin/gpu_ops" --device "$dev" --batch "$batch" --size "$size" --base $obase \
                --json "$out/ops-$prec.json" $([ $prec = tf32 ] && echo --tf32) > "$log" 2>&1
            rc=$?
            { echo "## per-op harness, $prec"; echo; grep '^|' "$log"; echo; } >> "$ops_md"
            if [ $rc -ne 0 ]; then
                fail=1
                echo "| gpu_ops | $prec exited $rc | see $log | | FAIL |" >> "$table"
            else
                echo "| gpu_ops | per-op table, $prec | $out/ops-$prec.json | | |" >> "$table"
            fi
        done
    else
        echo "| gpu_ops | not built ($ops_bin/gpu_ops) | | | |" >> "$table"
    fi
fi

if [ $gpu = 1 ]; then
    if [ $quick = 1 ] && [ -x "$cudnn_bin/gpu_check" ]; then
        KSEG_GPU_OPS=kseg gpu_check cudnn-kseg "$cudnn_bin"
    fi
    gpu_check cuda "$bin" --loader 50 \
        --set data.synthetic.generator.height=512 --set data.synthetic.generator.width=512 \
        --set 'augment.out_size=[512,512]'
    if [ -x "$cudnn_bin/gpu_check" ]; then gpu_check cudnn "$cudnn_bin"; fi
else
    gpu_check cpu "$bin" --loader 50
fi

# The GPU unit tests (`cuda::` tests of the kernels against the CPU ops).
tests_dir="${KSEG_GPU_TESTS:-target/cudnn/gpu-tests}"
if [ $gpu = 1 ] && [ -d "$tests_dir" ]; then
    for t in "$tests_dir"/*; do
        [ -x "$t" ] || continue
        name="$(basename "$t")"
        log="$out/tests-$name.log"
        timeout 240 "$t" cuda:: --test-threads=1 --nocapture > "$log" 2>&1
        rc=$?
        summary="$(grep -E '^test result:' "$log" | tail -1)"
        if [ $rc -eq 0 ] && ! grep -q 'skipped: no CUDA device' "$log"; then
            echo "| gpu tests | $name | ${summary:-no summary} | | PASS |" >> "$table"
        else
            fail=1
            echo "| gpu tests | $name | exited $rc: ${summary:-see $log} | | FAIL |" >> "$table"
        fi
    done
elif [ $gpu = 1 ]; then
    echo "| gpu tests | not built ($tests_dir: scripts/build-gpu.sh) | | | |" >> "$table"
fi

# PyTorch's same step and eval forward on the same device.
if [ -n "$py" ]; then
    tf32s="0"; [ $gpu = 1 ] && tf32s="0 1"
    case $model in default) base=32 ;; *) base=8 ;; esac
    for tf32 in $tf32s; do
        for mode in train eval; do
            log="$out/torch-$mode-tf32$tf32.log"
            "$py" benches/compare/train_step.py --torch --device "$dev" --base $base --depth 5 \
                --batch "$batch" --size "$size" --steps $((steps + 1)) \
                $([ $tf32 = 1 ] && echo --tf32) $([ $mode = eval ] && echo --eval) > "$log" 2>&1
            med="$(grep -oE '^step [0-9]+: [0-9.]+' "$log" | tail -n +2 | awk '{print $3}' | sort -n \
                | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')"
            what="train step"; [ $mode = eval ] && what="eval forward"
            prec="f32"; [ $tf32 = 1 ] && prec="tf32"
            if [ -n "$med" ]; then
                rate="$(awk -v b="$batch" -v t="$med" 'BEGIN {printf "%.1f samples/s", b / t}')"
                echo "| pytorch | $what $model, ${batch}x3x${size}x${size} ($prec) | $med s | $rate | |" >> "$table"
            else
                echo "| pytorch | $what ($prec) | failed, see $log | | |" >> "$table"
            fi
        done
    done
else
    echo "| pytorch | not found (set PYTHON to a python3 with torch) | | | |" >> "$table"
fi

# A short training of the default example (not in --quick).
run="$out/run"
rm -rf "$run"
if [ $quick = 1 ]; then
    :
elif [ -x "$bin/train_kits19" ]; then
    start=$(date +%s)
    "$bin/train_kits19" --device "$dev" --out "$run" --steps "$train_steps" \
        --set train.validate_every="$train_steps" > "$out/train.log" 2>&1
    rc=$?
    wall=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ] && [ -f "$run/summary.json" ]; then
        s="$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("kidney %.3f, tumour %.3f, %.1f samples/s" % (s["kidney_dice"], s["tumour_dice"], s["samples_per_second"]))' "$run/summary.json")"
        echo "| train_kits19 | $train_steps steps on $dev | ${wall} s | $s | |" >> "$table"
    else
        fail=1
        echo "| train_kits19 | $train_steps steps on $dev | exited $rc | see $out/train.log | FAIL |" >> "$table"
    fi
else
    echo "| train_kits19 | not built ($bin/train_kits19) | | | |" >> "$table"
fi

# Everything as JSON for docs/gpu-runs/.
commit="${KSEG_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
python3 - "$table" "$out" "$card" "$commit" "$quick" <<'PY'
import glob, json, os, sys, datetime
table, out, card, commit, quick = sys.argv[1:6]
rows = [l.strip() for l in open(table) if l.startswith("| ") and not l.startswith("| build ")]
ops = {}
for p in sorted(glob.glob(os.path.join(out, "ops-*.json"))):
    ops[os.path.basename(p)[4:-5]] = json.load(open(p))
json.dump({"date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%MZ"), "card": card,
           "commit": commit, "quick": quick == "1", "table": rows, "ops": ops},
          open(os.path.join(out, "run.json"), "w"), indent=1)
PY
cat "$table"
[ -s "$ops_md" ] && cat "$ops_md"
exit $fail
