#!/usr/bin/env python3
"""Times the official KiTS23 evaluation on one (prediction, truth) pair.

Usage (not part of CI; see kits23_eval.sh, which makes the pair and sets
up the official code):

    python3 benches/compare/kits23_eval.py PRED TRUTH

Runs `kits23.evaluation.metrics.compute_metrics_for_case` (the official
code, unchanged; it reads both files with SimpleITK and computes Dice and
surface Dice of the three regions with DeepMind's surface-distance code)
and prints its metrics and wall time as JSON.
"""
import json
import sys
import time

from kits23.evaluation.metrics import compute_metrics_for_case

pred, truth = sys.argv[1], sys.argv[2]
t = time.perf_counter()
m = compute_metrics_for_case(pred, truth)
seconds = time.perf_counter() - t
names = ["kidney_and_mass", "mass", "tumor"]
print(json.dumps({
    "seconds": seconds,
    "dice": {n: float(m[i, 0]) for i, n in enumerate(names)},
    "surface_dice": {n: float(m[i, 1]) for i, n in enumerate(names)},
}))
