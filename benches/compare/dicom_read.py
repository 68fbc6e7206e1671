#!/usr/bin/env python3
"""pydicom plus numpy reading a CT series the way kseg does: every file of
the folder, slices sorted by position along the slice normal, stored values
through RescaleSlope/RescaleIntercept, stacked into one float32 volume.

Usage (not part of CI; needs numpy and pydicom): see dicom_read.sh.

    python3 benches/compare/dicom_read.py write DIR   # makes the series
    python3 benches/compare/dicom_read.py read DIR    # times the read
"""
import os
import sys
import time

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write(folder, n=300, size=512):
    os.makedirs(folder, exist_ok=True)
    series = generate_uid()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 1400, size=(size, size), dtype=np.uint16)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [-200.0, -200.0, 1.25 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.78, 0.78]
        ds.SliceThickness = 1.25
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        ds.PixelData = np.roll(base, k, axis=0).tobytes()
        # File names unrelated to position.
        ds.save_as(os.path.join(folder, f"{(k * 7919) % 10007:05d}"), enforce_file_format=True)


def read(folder):
    t = time.perf_counter()
    files = [os.path.join(folder, f) for f in os.listdir(folder)]
    slices = [pydicom.dcmread(f) for f in files]
    normal = np.cross(*np.array(slices[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, dtype=float), normal)))
    vol = np.stack([
        s.pixel_array.astype(np.float32) * float(s.RescaleSlope) + float(s.RescaleIntercept)
        for s in slices
    ])
    seconds = time.perf_counter() - t
    print(f"pydicom {pydicom.__version__} + numpy: {vol.shape} in {seconds:.2f} s, "
          f"min {vol.min():.0f} max {vol.max():.0f} mean {vol.mean(dtype=np.float64):.4f}")


if __name__ == "__main__":
    {"write": write, "read": read}[sys.argv[1]](sys.argv[2])
