#!/usr/bin/env bash
# The data.spacing_mm experiment of docs/PERFORMANCE.md: two models trained
# on the synthetic default (about 2 mm pixels) for 2,000 steps, natively and
# at 2.0 mm, each segmenting synthetic test sets of about 2.0, 1.56 and
# 2.6 mm pixels. Not part of CI; needs a release build; about 5 minutes on
# 2 cores.
#
#   bash benches/compare/spacing_experiment.sh [DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-/tmp/kseg-spacing}
mkdir -p "$dir" && cd "$dir"
cargo build --release --bin kseg --example train_kits19 --manifest-path "$root/Cargo.toml"
K=$root/target/release/kseg
T=$root/target/release/examples/train_kits19
for set in "same 240 280" "fine 195 205" "coarse 328 338"; do
  read -r name a b <<< "$set"
  [ -d "test_$name" ] || $K synth --out "test_$name" --cases 8 --seed 100 --size 128 128 \
    --slices 32 64 --fov "$a" "$b" --tumour-radius 14 36 2>/dev/null
done
$T --out run_native --steps 2000 > native.log 2>&1
$T --out run_spacing --steps 2000 --set data.spacing_mm=2.0 > spacing.log 2>&1
for m in native spacing; do
  for t in same fine coarse; do
    $K predict --checkpoint "run_$m/checkpoints/step_002000" --input "test_$t" \
      --output "pred_${m}_$t" --device cpu 2>/dev/null
    echo "$m on $t: $($K evaluate --pred "pred_${m}_$t" --truth "test_$t" 2>&1 >/dev/null)"
  done
done
