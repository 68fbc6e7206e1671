#!/usr/bin/env python3
"""Reads kseg's DICOM Segmentation back with two independent readers and
checks every segment against kseg's NIfTI prediction of the same series,
voxel for voxel, in the source CT's geometry.

    python3 -m venv .venv && .venv/bin/pip install highdicom dcmqi nibabel
    cargo build --release --bin kseg
    .venv/bin/python benches/compare/dicom_seg_check.py \
        --kseg target/release/kseg --checkpoint MODEL.safetensors \
        --series testdata/dicom_seg/series

1. `kseg predict` writes `seg.dcm` (DICOM SEG) and `pred.nii.gz` (NIfTI)
   for the series.
2. highdicom (`highdicom.seg.segread`, `get_pixels_by_source_instance`):
   per source slice (found by its SOP Instance UID) and segment, the mask
   equals `pred == label` at the slice the NIfTI affine puts at the
   slice's ImagePositionPatient.
3. dcmqi (`segimage2itkimage`, NIfTI out): each segment's image, voxel
   by voxel through both affines, equals `pred == label`, and holds as
   many voxels.
Exit status 0 when every check holds; prints one line per check.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kseg", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--series", required=True)
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="kseg-seg-")
    os.makedirs(work, exist_ok=True)
    seg_path, nii_path = os.path.join(work, "seg.dcm"), os.path.join(work, "pred.nii.gz")
    for out in (seg_path, nii_path):
        subprocess.run([a.kseg, "predict", "--checkpoint", a.checkpoint, "--input", a.series,
                        "--output", out, "--device", "cpu"], check=True)
    pred_img = nib.load(nii_path)
    pred = np.asarray(pred_img.dataobj).astype(np.uint8)
    inv = np.linalg.inv(pred_img.affine)
    failures = 0

    def check(ok, what):
        nonlocal failures
        print(("ok   " if ok else "FAIL ") + what)
        failures += 0 if ok else 1

    # Source slices: SOP Instance UID -> NIfTI slice index of its position.
    slices = {}
    for f in sorted(glob.glob(os.path.join(a.series, "*"))):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        ijk = inv @ ras
        check(np.allclose(ijk[1:3], 0, atol=1e-3), f"slice {ds.SOPInstanceUID[-12:]} at a NIfTI slice origin")
        slices[ds.SOPInstanceUID] = int(round(ijk[0]))

    seg = hd.seg.segread(seg_path)
    uids = list(slices)
    numbers = [s.SegmentNumber for s in seg.SegmentSequence]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                           combine_segments=False, skip_overlap_checks=True)
    for si, n in enumerate(numbers):
        label = n  # segment n holds label n (kidney 1, tumour 2, cyst 3)
        same = all(np.array_equal(px[i, :, :, si] > 0, pred[slices[u]] == label) for i, u in enumerate(uids))
        check(same, f"highdicom: segment {n} ({seg.SegmentSequence[si].SegmentLabel}) equals the NIfTI prediction")

    # dcmqi: one NIfTI per segment in the SEG's geometry.
    out_dir = os.path.join(work, "dcmqi")
    os.makedirs(out_dir, exist_ok=True)
    tool = shutil.which("segimage2itkimage") or os.path.join(os.path.dirname(sys.executable), "segimage2itkimage")
    subprocess.run([tool, "--inputDICOM", seg_path, "--outputDirectory", out_dir,
                    "--outputType", "nifti", "--prefix", "seg"], check=True,
                   stdout=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(out_dir, "seg-meta.json")))
    for f in sorted(glob.glob(os.path.join(out_dir, "seg-*.nii.gz"))):
        n = int(os.path.basename(f)[4:-7])
        img = nib.load(f)
        mask = np.asarray(img.dataobj) > 0
        label = int(meta["segmentAttributes"][n - 1][0]["labelID"])
        ijk = np.argwhere(mask)
        world = img.affine @ np.c_[ijk, np.ones(len(ijk))].T
        ours = np.rint(inv @ world).astype(int)[:3].T
        inside = all(pred[tuple(v)] == label for v in ours)
        check(inside and len(ijk) == int((pred == label).sum()),
              f"dcmqi: segment {n} ({len(ijk)} voxels) equals the NIfTI prediction's label {label}")
    print(f"{failures} failure(s); work folder {work}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
