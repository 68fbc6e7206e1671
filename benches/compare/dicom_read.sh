#!/usr/bin/env bash
# Reading a 300-slice 512x512 CT series (Explicit VR Little Endian, uint16
# plus intercept, file names unrelated to position): `kseg info DIR` (finds
# the series, reads every file, sorts by position along the normal,
# rescales, stacks, and takes min/max/mean) against pydicom plus numpy
# doing the same (dicom_read.py). Not part of CI; needs a release build and
# python3 with numpy and pydicom.
#
#   bash benches/compare/dicom_read.sh [DIR]
set -euo pipefail
dir=${1:-/tmp/kseg-dicom-bench}
root=$(cd "$(dirname "$0")/../.." && pwd)
kseg=$root/target/release/kseg
[ -x "$kseg" ] || cargo build --release --bin kseg --manifest-path "$root/Cargo.toml"
[ -d "$dir" ] || python3 "$root/benches/compare/dicom_read.py" write "$dir"
# Warm the page cache once for both.
cat "$dir"/* > /dev/null
for i in 1 2 3; do
  /usr/bin/time -f "kseg info: %e s, %M KB peak" "$kseg" info "$dir" > "$dir.kseg.json"
done
for i in 1 2 3; do
  /usr/bin/time -f "pydicom+numpy: %e s, %M KB peak" python3 "$root/benches/compare/dicom_read.py" read "$dir"
done
python3 -c "import json,sys; v=json.load(open(sys.argv[1]))['volume']; print('kseg:', v['shape'], 'min', v['min'], 'max', v['max'], 'mean', round(v['mean'], 4))" "$dir.kseg.json"
