#!/usr/bin/env python3
"""kseg's ONNX export run by ONNX Runtime (PyPI `onnxruntime`) beside
`kseg predict` on the same CT volume: the labels of both, their agreement,
and the CPU time of each, both with the same thread count.

    python3 -m venv .venv && .venv/bin/pip install onnxruntime nibabel
    cargo build --release --bin kseg
    target/release/kseg export --checkpoint MODEL --onnx model.onnx
    .venv/bin/python benches/compare/onnx_runtime.py --kseg target/release/kseg \
        --checkpoint MODEL --onnx model.onnx --image CASE/imaging.nii.gz --threads 2

The preprocessing is read from the graph's metadata (kseg_meta): the
volume brought to KiTS19's layout (slices first) by nibabel's
orientation, each slice stacked with its neighbours (edges repeated),
clipped, normalised, padded bottom and right with the window's air to a
multiple of 2^depth; argmax over the logits (softmax models). Prints the
voxel agreement of the two label volumes, kseg's wall time end to end
(read, forward, decode, write) and ONNX Runtime's forward time alone.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
import onnxruntime as ort
from infer_cpu import batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kseg", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kseg-ort-")
    pred = os.path.join(work, "kseg.nii.gz")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    subprocess.run([a.kseg, "predict", "--checkpoint", a.checkpoint, "--input", a.image,
                    "--output", pred, "--device", "cpu", "--mirror", "false", "--lcc", "0",
                    "--batch", str(a.batch)], check=True, env=env)
    kseg_s = time.perf_counter() - t0

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.onnx, opts, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["kseg_meta"])
    # The preprocessing of infer_cpu.py (the same stacks, window and padding).
    (d, h, w), tr, xs = batches(a.image, meta, a.batch)
    labels = np.zeros((d, h, w), np.uint8)
    forward_s, k0 = 0.0, 0
    for x in xs:
        t = time.perf_counter()
        logits = sess.run(["logits"], {"image": x})[0]
        forward_s += time.perf_counter() - t
        labels[k0:k0 + len(x)] = logits[:, :, :h, :w].argmax(1)
        k0 += len(x)
    ours = nib.load(pred)
    kv = nib.orientations.apply_orientation(np.asarray(ours.dataobj), tr).astype(np.uint8)
    agree = float((kv == labels).mean())
    print(f"voxels {d}x{h}x{w}; label agreement kseg vs onnxruntime {agree:.6f}")
    print(f"kseg predict end to end {kseg_s:.2f} s; onnxruntime forward alone {forward_s:.2f} s "
          f"({a.threads} threads); ratio {kseg_s / forward_s:.2f}")
    return 0 if agree > 0.999 else 1


if __name__ == "__main__":
    sys.exit(main())
