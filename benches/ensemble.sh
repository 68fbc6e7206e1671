#!/usr/bin/env bash
# What cross-validation's fold ensemble and mirroring buy (issue #27), and
# what predict's fast mode costs and saves (issue #29), on a synthetic
# preset: a 5-fold `kseg cv`, then on 16 held-out synthetic cases (seed 7,
# the preset generator's settings, never seen in training) each fold
# alone and the 5-fold ensemble, mirroring off and on, and fold 0 in fast
# mode, each scored by `kseg evaluate` with the preset's protocol and timed
# end to end.
#
#     benches/ensemble.sh [--preset synthetic-cpu|synthetic-kits23]
#         [--steps N] [--out DIR]
#
# --steps shortens every fold's training (default: the preset's 4000);
# DIR (default target/bench-ensemble/PRESET) keeps the folds, so a second
# run resumes or reuses them. Prints a Markdown table. Not part of CI: the
# preset's cross-validation takes about an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=synthetic-cpu
steps=""
out=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --preset) preset=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "ensemble.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=heldout.sh
source benches/heldout.sh
preset_protocol ensemble.sh "$preset"
out="${out:-target/bench-ensemble/$preset}"
cargo build --release --locked --bin kseg
k=target/release/kseg
mkdir -p "$out"
$k cv --preset "$preset" --folds 5 --out "$out/cv" --device cpu ${steps:+--steps "$steps"}
held="$out/heldout"
make_heldout "$k" "$held"
fold() { echo "$out/cv/fold_$1/checkpoints/best"; }
ensemble=()
for f in 0 1 2 3 4; do ensemble+=(--checkpoint "$(fold "$f")"); done

echo "| model | mirror | fast | Dice (kseg evaluate, $protocol) | predict s (16 cases) |"
echo "|---|---|---|---|---|"
row() {
    local name=$1 mirror=$2 fast=$3
    shift 3
    local dir="$out/pred/${name// /_}_mirror-${mirror}${fast:+_fast}"
    rm -rf "$dir"
    mkdir -p "$dir"
    local t0 t1
    t0=$(date +%s.%N)
    $k predict "$@" --input "$held" --output "$dir" --device cpu --mirror "$mirror" \
        ${fast:+--fast} > "$dir.log" 2>&1
    t1=$(date +%s.%N)
    $k evaluate --pred "$dir" --truth "$held" --protocol "$protocol" \
        --out "$dir.json" > "$dir.csv" 2> "$dir.eval"
    printf '| %s | %s | %s | %s | %.1f |\n' "$name" "$mirror" "${fast:-no}" \
        "$(tail -n 1 "$dir.eval")" "$(awk "BEGIN { print $t1 - $t0 }")"
}
for f in 0 1 2 3 4; do
    row "fold $f" false "" --checkpoint "$(fold "$f")"
done
row "fold 0" true "" --checkpoint "$(fold 0)"
row "5-fold ensemble" false "" "${ensemble[@]}"
row "5-fold ensemble" true "" "${ensemble[@]}"
row "fold 0" false yes --checkpoint "$(fold 0)"
row "5-fold ensemble" false yes "${ensemble[@]}"
