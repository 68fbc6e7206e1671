#!/usr/bin/env python3
"""Time nibabel loading the same synthetic case the volume bench decodes.

Usage (not part of CI; needs numpy and nibabel, e.g. `pip install nibabel`):

    cargo run --release -- synth --out /tmp/kseg-bench --cases 1 --size 512 512 --slices 200 200
    python3 benches/compare/nibabel_load.py /tmp/kseg-bench/case_00000

It prints the median of 5 loads of imaging (as float32, like kseg's
read_volume) plus labels, and the throughput in MB/s of int16 imaging, the
unit docs/PERFORMANCE.md uses.
"""
import statistics
import sys
import time

import nibabel as nib
import numpy as np

case = sys.argv[1] if len(sys.argv) > 1 else "/tmp/kseg-bench/case_00000"


def load():
    img = nib.load(f"{case}/imaging.nii.gz").get_fdata(dtype=np.float32)
    seg = np.asanyarray(nib.load(f"{case}/segmentation.nii.gz").dataobj)
    return img, seg


img, seg = load()
times = []
for _ in range(5):
    t = time.perf_counter()
    load()
    times.append(time.perf_counter() - t)
med = statistics.median(times)
mb = img.size * 2 / 1e6
print(f"nibabel {nib.__version__}: shape {img.shape}, median {med:.3f} s, {mb / med:.0f} MB/s of int16")
