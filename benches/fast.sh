#!/usr/bin/env bash
# What `kseg predict --fast` costs in Dice and saves in time (issue #29):
# a preset's model (trained here unless --checkpoint names one), predicted
# with and without the fast mode (mirroring off, f32) on two held-out sets
# of 16 synthetic cases (seed 7, the preset generator's settings, never
# seen in training): the preset's own scans (150-260 mm along the body,
# the kidneys' region: they span most slices) and whole-abdomen scans of
# the same cases' kind (`--slices 128 128 --coverage 400 500`: the
# kidneys on about a quarter of the slices, as in a hospital's abdominal
# CT), each scored by `kseg evaluate` with the preset's protocol against
# the truth and timed end to end.
#
#     benches/fast.sh [--preset synthetic-cpu|synthetic-kits23]
#         [--steps N] [--checkpoint CKPT] [--margin MM] [--stride N]
#         [--shrink N] [--runs N] [--out DIR]
#
# --margin, --stride and --shrink are predict's --fast-margin,
# --fast-stride and --fast-shrink (default: predict's, 120 mm, 8 and 1);
# --runs N (default 1) predicts each set N times, the full and the fast
# pass interleaved, and prints every time; DIR
# (default target/bench-fast/PRESET) keeps the model and the cases, so a
# second run reuses them. Prints a Markdown table. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=synthetic-cpu
steps=""
out=""
ckpt=""
margin=""
stride=""
shrink=""
runs=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --preset) preset=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --checkpoint) ckpt=$2; shift 2 ;;
        --margin) margin=$2; shift 2 ;;
        --stride) stride=$2; shift 2 ;;
        --shrink) shrink=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "fast.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=heldout.sh
source benches/heldout.sh
preset_protocol fast.sh "$preset"
out="${out:-target/bench-fast/$preset}"
cargo build --release --locked --bin kseg
k=target/release/kseg
mkdir -p "$out"
preset_model "$k" "$preset" "$out" "$steps" "$ckpt"
make_heldout "$k" "$out/heldout"
make_heldout "$k" "$out/heldout-long" --slices 128 128 --coverage 400 500
echo "model: $ckpt; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "| scans | fast | Dice ($protocol) | predict s (16 cases) |"
echo "|---|---|---|---|"
for set in heldout heldout-long; do
    declare -A secs=()
    for ((run = 1; run <= runs; run++)); do
        for fast in no yes; do
            dir="$out/pred/${set}_fast-$fast"
            rm -rf "$dir"
            mkdir -p "$dir"
            flags=()
            if [[ $fast == yes ]]; then
                flags=(--fast ${margin:+--fast-margin "$margin"} ${stride:+--fast-stride "$stride"}
                    ${shrink:+--fast-shrink "$shrink"})
            fi
            t0=$(date +%s.%N)
            $k predict --checkpoint "$ckpt" --input "$out/$set" --output "$dir" --device cpu \
                --mirror false "${flags[@]}" > "$dir.log" 2>&1
            t1=$(date +%s.%N)
            secs[$fast]+="${secs[$fast]:+, }$(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")"
        done
    done
    for fast in no yes; do
        dir="$out/pred/${set}_fast-$fast"
        $k evaluate --pred "$dir" --truth "$out/$set" --protocol "$protocol" \
            --out "$dir.json" > "$dir.csv" 2> "$dir.eval"
        name=$([[ $set == heldout ]] && echo "preset's (32-64 slices, 150-260 mm)" \
            || echo "whole abdomen (128 slices, 400-500 mm)")
        printf '| %s | %s | %s | %s |\n' "$name" "$fast" "$(tail -n 1 "$dir.eval")" "${secs[$fast]}"
    done
    unset secs
done
