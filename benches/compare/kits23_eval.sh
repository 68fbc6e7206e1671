#!/usr/bin/env bash
# `kseg evaluate --protocol kits23` against the official KiTS23 evaluation
# code on a 600 x 512 x 512 case pair (a synthetic case with cysts and a
# prediction made by shifting its labels by (1, 3, -2) voxels). Not part of
# CI; needs a release build, python3 with numpy, nibabel, SimpleITK, scipy,
# batchgenerators, and the official packages installed from their
# repositories (no network needed if you have them):
#
#   pip install numpy nibabel SimpleITK scipy batchgenerators
#   pip install --no-deps <google-deepmind/surface-distance checkout>
#   pip install --no-deps <neheller/kits23 checkout>
#
#   bash benches/compare/kits23_eval.sh [DIR]
#
# Prints both tools' wall times (3 runs each) and checks that they agree
# within 1e-6.
set -euo pipefail
dir=${1:-/tmp/kseg-kits23-bench}
root=$(cd "$(dirname "$0")/../.." && pwd)
kseg=$root/target/release/kseg
[ -x "$kseg" ] || cargo build --release --bin kseg --manifest-path "$root/Cargo.toml"
truth=$dir/truth/case_00000/segmentation.nii.gz
pred=$dir/pred/case_00000.nii.gz
if [ ! -f "$truth" ]; then
  "$kseg" synth --out "$dir/truth" --cases 1 --size 512 512 --slices 600 600 --fov 240 280 --cysts
fi
if [ ! -f "$pred" ]; then
  mkdir -p "$dir/pred"
  python3 - "$truth" "$pred" <<'PY'
import sys
import nibabel as nib
import numpy as np
t = nib.load(sys.argv[1])
p = np.roll(np.asanyarray(t.dataobj), (1, 3, -2), axis=(0, 1, 2))
nib.save(nib.Nifti1Image(p.astype(np.uint8), t.affine, t.header), sys.argv[2])
PY
fi
for i in 1 2 3; do
  /usr/bin/time -f "kseg evaluate --protocol kits23: %e s, %M KB peak" \
    "$kseg" evaluate --protocol kits23 --pred "$dir/pred" --truth "$dir/truth" --out "$dir/kseg.json" > /dev/null
done
for i in 1 2 3; do
  /usr/bin/time -f "official KiTS23 code: %e s, %M KB peak" \
    python3 "$root/benches/compare/kits23_eval.py" "$pred" "$truth" > "$dir/official.json"
done
python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
k = json.load(open(f"{d}/kseg.json"))
o = json.load(open(f"{d}/official.json"))
for r in ["kidney_and_mass", "mass", "tumor"]:
    for m in ["dice", "surface_dice"]:
        a, b = k["cases"][0][r][m], o[m][r]
        assert abs(a - b) < 1e-6, (r, m, a, b)
print("kseg and the official code agree within 1e-6; official compute_metrics_for_case alone:",
      round(o["seconds"], 2), "s")
PY
