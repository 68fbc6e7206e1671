#!/usr/bin/env python3
"""What `kseg info --labels FILE` computes, done with nibabel and numpy:
load, per-value counts (bincount), min, max, mean, NaN count.

Usage (not part of CI; needs numpy and nibabel): see info_labels.sh, which
makes KiTS19-sized label files and times both tools on them.

    python3 benches/compare/info_labels.py FILE
"""
import json
import sys
import time

import nibabel as nib
import numpy as np

path = sys.argv[1]
t = time.perf_counter()
img = nib.load(path)
data = np.asanyarray(img.dataobj)
counts = np.bincount(data.ravel())
out = {
    "shape": list(data.shape),
    "min": float(data.min()),
    "max": float(data.max()),
    "mean": float(data.mean(dtype=np.float64)),
    "nan_count": 0,
    "label_counts": {str(i): int(c) for i, c in enumerate(counts) if c},
}
out["seconds"] = time.perf_counter() - t
print(json.dumps(out))
