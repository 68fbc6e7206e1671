#!/usr/bin/env python3
"""Per-case confusion of predicted against true labels, read with nibabel.

Usage (not part of CI; needs numpy and nibabel, e.g. `pip install nibabel`):

    kseg predict --checkpoint RUN/checkpoints/step_003000 --input DATA --output PRED
    python3 benches/compare/confusion.py PRED DATA [--split RUN/split.json]

PRED holds case_XXXXX.nii.gz predictions, DATA the KiTS19-layout case folders
(imaging.nii.gz, segmentation.nii.gz). With --split only the split's
validation cases are counted. For each case it prints the 3x3 voxel counts
(rows: truth background / kidney / tumour; columns: predicted) and the mean
and standard deviation of the imaging HU inside the true kidney and tumour,
which docs/PERFORMANCE.md uses to say where the main job's errors are.
"""
import argparse
import json
import os

import nibabel as nib
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("pred")
ap.add_argument("data")
ap.add_argument("--split", help="a run's split.json: count its validation cases only")
args = ap.parse_args()

if args.split:
    cases = json.load(open(args.split))["val"]
else:
    cases = sorted(f[: -len(".nii.gz")] for f in os.listdir(args.pred) if f.endswith(".nii.gz"))

for case in cases:
    truth = np.asarray(nib.load(f"{args.data}/{case}/segmentation.nii.gz").dataobj)
    pred = np.asarray(nib.load(f"{args.pred}/{case}.nii.gz").dataobj)
    img = np.asarray(nib.load(f"{args.data}/{case}/imaging.nii.gz").dataobj).astype(np.float64)
    if truth.shape != pred.shape:
        raise SystemExit(f"{case}: prediction {pred.shape} and truth {truth.shape} differ")
    cm = [[int(((truth == a) & (pred == b)).sum()) for b in range(3)] for a in range(3)]
    kid, tum = img[truth == 1], img[truth == 2]
    print(
        f"{case}: truth bg/kidney/tumour x predicted {cm}; "
        f"kidney HU {kid.mean():.0f}±{kid.std():.0f}, tumour HU {tum.mean():.0f}±{tum.std():.0f}"
    )
