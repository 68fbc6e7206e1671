#!/usr/bin/env bash
# `kseg info --labels` against nibabel plus numpy on a label file the size
# of KiTS19's largest (case_00151: 1059 x 512 x 512 uint8). Not part of CI;
# needs a release build, python3 with nibabel and numpy, GNU time, ~3 GB.
#
#   bash benches/compare/info_labels.sh [DIR]
#
# Prints, for each tool, the wall time and peak memory of 3 runs, and checks
# that both count the same voxels.
set -euo pipefail
dir=${1:-/tmp/kseg-info-bench}
root=$(cd "$(dirname "$0")/../.." && pwd)
kseg=$root/target/release/kseg
[ -x "$kseg" ] || cargo build --release --bin kseg --manifest-path "$root/Cargo.toml"
seg=$dir/case_00000/segmentation.nii.gz
if [ ! -f "$seg" ]; then
  "$kseg" synth --out "$dir" --cases 1 --size 512 512 --slices 1059 1059 --fov 240 280
fi
for i in 1 2 3; do
  /usr/bin/time -f "kseg info --labels: %e s, %M KB peak" "$kseg" info --labels "$seg" > "$dir/kseg.json"
done
for i in 1 2 3; do
  /usr/bin/time -f "nibabel+numpy: %e s, %M KB peak" python3 "$root/benches/compare/info_labels.py" "$seg" > "$dir/numpy.json"
done
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
k = json.load(open(f"{d}/kseg.json"))
n = json.load(open(f"{d}/numpy.json"))
assert k["label_counts"] == n["label_counts"], (k["label_counts"], n["label_counts"])
assert k["shape"] == n["shape"] and k["min"] == n["min"] and k["max"] == n["max"]
assert abs(k["mean"] - n["mean"]) < 1e-9, (k["mean"], n["mean"])
print("same counts, range and mean:", k["label_counts"])
PY
