#!/usr/bin/env bash
# What `kseg predict --precision int8|bf16` costs in Dice and buys in
# time (issue #29): a preset's model (trained here unless --checkpoint
# names one), 16 held-out synthetic cases (seed 7, the preset generator's
# settings, never seen in training), predicted in f32, int8 and bf16 with
# mirroring off and on, each scored by `kseg evaluate` with the preset's
# protocol against the truth and, for int8 and bf16, against f32's own
# labels (the agreement), and timed end to end.
#
#     benches/precision.sh [--preset synthetic-cpu|synthetic-kits23]
#         [--steps N] [--checkpoint CKPT] [--out DIR]
#
# --steps shortens the training (default: the preset's); DIR (default
# target/bench-precision/PRESET) keeps the model and the cases, so a second
# run reuses them. Prints a Markdown table. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=synthetic-cpu
steps=""
out=""
ckpt=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --preset) preset=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --checkpoint) ckpt=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "precision.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=heldout.sh
source benches/heldout.sh
preset_protocol precision.sh "$preset"
out="${out:-target/bench-precision/$preset}"
cargo build --release --locked --bin kseg
k=target/release/kseg
mkdir -p "$out"
preset_model "$k" "$preset" "$out" "$steps" "$ckpt"
held="$out/heldout"
make_heldout "$k" "$held"
echo "model: $ckpt; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
    "AVX-512 VNNI: $(grep -qw avx512_vnni /proc/cpuinfo && echo yes || echo no);" \
    "AVX512-BF16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no); $(date -u +%F)"
echo "| precision | mirror | Dice against the truth ($protocol) | Dice against f32's labels | predict s (16 cases) |"
echo "|---|---|---|---|---|"
for mirror in false true; do
    f32dir=""
    for precision in f32 int8 bf16; do
        dir="$out/pred/${precision}_mirror-$mirror"
        rm -rf "$dir" "$dir.agree"
        mkdir -p "$dir"
        t0=$(date +%s.%N)
        $k predict --checkpoint "$ckpt" --input "$held" --output "$dir" --device cpu \
            --mirror "$mirror" --precision "$precision" > "$dir.log" 2>&1
        t1=$(date +%s.%N)
        $k evaluate --pred "$dir" --truth "$held" --protocol "$protocol" \
            --out "$dir.json" > "$dir.csv" 2> "$dir.eval"
        agree="—"
        if [[ -n $f32dir ]]; then
            # f32's labels as a truth folder (case_X/segmentation.nii.gz).
            mkdir -p "$dir.agree"
            for p in "$f32dir"/case_*.nii.gz; do
                c=$(basename "$p" .nii.gz)
                mkdir -p "$dir.agree/$c"
                ln -s "$(realpath "$p")" "$dir.agree/$c/segmentation.nii.gz"
            done
            $k evaluate --pred "$dir" --truth "$dir.agree" --protocol "$protocol" \
                --out "$dir.agree.json" > "$dir.agree.csv" 2> "$dir.agree.eval"
            agree=$(tail -n 1 "$dir.agree.eval")
        fi
        printf '| %s | %s | %s | %s | %.1f |\n' "$precision" "$mirror" \
            "$(tail -n 1 "$dir.eval")" "$agree" "$(awk "BEGIN { print $t1 - $t0 }")"
        if [[ $precision == f32 ]]; then f32dir="$dir"; fi
    done
done
