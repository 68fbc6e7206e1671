#!/usr/bin/env python3
"""CPU inference: `kseg predict` beside PyTorch and ONNX Runtime on the
same slices of one CT volume, each in a process of its own with the same
thread count, with the ratios, the peak memory (RSS) of each process and
the label agreement (issue #29). Run it through infer_cpu.sh, which sets
up the Python packages and makes the model and the case when not given.

    python benches/compare/infer_cpu.py --kseg target/release/kseg \
        --checkpoint RUN/checkpoints/step_N --image CASE/imaging.nii.gz --threads 2

What runs:
- `kseg predict` end to end (read, window, forward, decode, write), with
  mirroring off and on, and once more with `KSEG_INFER=graph` (the
  training graph's evaluation mode instead of the frozen inference engine);
- PyTorch: the same network (the PyTorch mirror of kseg's Res-U-Net, the
  checkpoint's weights loaded by name), `model.eval()` under
  `torch.inference_mode()`, forward alone;
- ONNX Runtime (PyPI `onnxruntime`, CPU provider, all graph optimisations)
  on that PyTorch model exported with `torch.onnx.export` (opset 17,
  dynamic batch and plane), forward alone.
With mirroring, the forward-alone figures of PyTorch and ONNX Runtime are
the two passes (the slices and their mirror image). The preprocessing is
the checkpoint's (its safetensors metadata): the volume brought to KiTS19's
layout by nibabel, each slice stacked with its neighbours (edges
repeated), clipped, normalised, padded bottom and right with the window's
air to a multiple of 2^depth; labels by argmax (softmax models).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np


def read_checkpoint(path, weights=True):
    """(kseg metadata, {name: float32 array}) of a kseg model file; without
    `weights` only the header is read (and the dict is empty)."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read() if weights else b""
    meta = json.loads(header.pop("__metadata__")["kseg"])
    if not weights:
        return meta, {}
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", (name, t["dtype"])
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], np.float32).reshape(t["shape"])
    return meta, tensors


def torch_model(meta, tensors):
    """kseg's Res-U-Net in PyTorch (names as kseg's checkpoints), eval mode."""
    import torch
    from resunet_torch import res_unet

    cfg = meta["model"]
    slope = cfg["negative_slope"]

    model = res_unet(cfg["base_channels"], cfg["depth"], cfg["in_channels"],
                     cfg["num_classes"], slope)
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = v
    model.load_state_dict(state, strict=True)
    return model.eval()


def batches(image, meta, batch, first_only=False):
    """(volume shape, orientation transform, the inputs `(B, 2n+1, H', W')`
    of each batch, or of the first only)."""
    import nibabel as nib

    it, n, depth = meta["intensity"], meta["context"], meta["model"]["depth"]
    img = nib.load(image)
    # To KiTS19's layout: [slice (I), row (P), column (L)].
    target = nib.orientations.axcodes2ornt(("I", "P", "L"))
    tr = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), target)
    vol = nib.orientations.apply_orientation(np.asarray(img.dataobj, dtype=np.float32), tr)
    d, h, w = vol.shape
    m = 1 << depth
    nh, nw = -(-h // m) * m, -(-w // m) * m
    norm = (np.clip(vol, it["hu_min"], it["hu_max"]) - it["mean"]) / it["std"]
    air = (it["hu_min"] - it["mean"]) / it["std"]
    out = []
    for k0 in range(0, d, batch):
        ks = range(k0, min(d, k0 + batch))
        x = np.full((len(ks), 2 * n + 1, nh, nw), air, np.float32)
        for i, k in enumerate(ks):
            for c, dk in enumerate(range(-n, n + 1)):
                x[i, c, :h, :w] = norm[min(max(k + dk, 0), d - 1)]
        out.append(x)
        if first_only:
            break
    return (d, h, w), tr, out


def export(a):
    """The PyTorch mirror exported to ONNX (opset 17, dynamic batch and plane)."""
    import torch

    meta, tensors = read_checkpoint(a.checkpoint)
    _, _, xs = batches(a.image, meta, 1, first_only=True)
    torch.onnx.export(torch_model(meta, tensors), torch.from_numpy(xs[0]), a.onnx,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamo=False, dynamic_axes={"image": {0: "b", 2: "h", 3: "w"},
                                                  "logits": {0: "b", 2: "h", 3: "w"}})


def worker(a):
    """One engine's forward over every batch: labels to a .npy file, the
    forward seconds as JSON on stdout."""
    if a.worker == "export":
        return export(a)
    meta, tensors = read_checkpoint(a.checkpoint)
    (d, h, w), _, xs = batches(a.image, meta, a.batch)
    labels = np.zeros((d, h, w), np.uint8)
    if a.worker == "torch":
        import torch

        torch.set_num_threads(a.threads)
        model = torch_model(meta, tensors)

        def fwd(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
    else:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(a.onnx, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def fwd(x):
            return sess.run(None, {name: x})[0]
    fwd(xs[0][:1])  # warm-up (ONNX Runtime's first run plans memory)
    seconds, k0 = 0.0, 0
    for x in xs:
        t = time.perf_counter()
        logits = fwd(x)
        if a.mirror:
            mirrored = fwd(np.ascontiguousarray(x[..., ::-1]))
        seconds += time.perf_counter() - t
        if a.mirror:
            e = np.exp(logits - logits.max(1, keepdims=True))
            em = np.exp(mirrored - mirrored.max(1, keepdims=True))[..., ::-1]
            logits = e / e.sum(1, keepdims=True) + em / em.sum(1, keepdims=True)
        labels[k0:k0 + len(x)] = logits[:, :, :h, :w].argmax(1)
        k0 += len(x)
    np.save(a.labels, labels)
    print(json.dumps({"forward_s": seconds}))


def timed(cmd, env=None):
    """Wall seconds, peak RSS (MiB) and stdout of `cmd` in a child process."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed with status {p.returncode}")
    return wall, ru.ru_maxrss / 1024, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kseg")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="slices per forward pass, every engine (kseg predict's CPU default: 2)")
    ap.add_argument("--worker", choices=["torch", "ort", "export"])
    ap.add_argument("--onnx")
    ap.add_argument("--labels")
    ap.add_argument("--mirror", action="store_true")
    ap.add_argument("--skip-graph", action="store_true", help="leave out KSEG_INFER=graph")
    ap.add_argument("--precision", action="append", choices=["int8", "bf16"], default=[],
                    help="also kseg predict --precision P (repeatable)")
    ap.add_argument("--mirrors", choices=["both", "off", "on"], default="both",
                    help="mirroring off, on, or both (default)")
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    if not a.kseg:
        ap.error("--kseg is required")

    import nibabel as nib

    # This process stays small (no torch, no inputs in memory): a child's
    # peak RSS (wait4) counts what it had at the fork, before exec.
    work = tempfile.mkdtemp(prefix="kseg-infer-")
    meta = read_checkpoint(a.checkpoint, weights=False)[0]
    if meta.get("regions"):
        sys.exit("infer_cpu.py compares softmax models (argmax); this one is region-trained")
    img = nib.load(a.image)
    tr = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                         nib.orientations.axcodes2ornt(("I", "P", "L")))
    d, h, w = (img.shape[int(i)] for i in np.argsort(tr[:, 0]))
    onnx = os.path.join(work, "torch.onnx")
    subprocess.run([sys.executable, __file__, "--worker", "export", "--checkpoint", a.checkpoint,
                    "--image", a.image, "--onnx", onnx], check=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    rows, labels = [], {}
    mirrors = {"both": [False, True], "off": [False], "on": [True]}[a.mirrors]
    for mirror in mirrors:
        tag = "mirror on" if mirror else "mirror off"
        runs = [("kseg", {}, [])]
        runs += [] if a.skip_graph else [("kseg graph", {"KSEG_INFER": "graph"}, [])]
        runs += [(f"kseg {p}", {}, ["--precision", p]) for p in a.precision]
        for name, extra, flags in runs:
            pred = os.path.join(work, f"{name.replace(' ', '_')}_{mirror}.nii.gz")
            wall, rss, _ = timed([a.kseg, "predict", "--checkpoint", a.checkpoint,
                                  "--input", a.image, "--output", pred, "--device", "cpu",
                                  "--mirror", str(mirror).lower(), "--lcc", "0",
                                  "--batch", str(a.batch)] + flags, dict(env, **extra))
            img = nib.load(pred)
            labels[(name, mirror)] = nib.orientations.apply_orientation(
                np.asarray(img.dataobj), tr).astype(np.uint8)
            rows.append((tag, f"{name} predict, end to end", wall, rss))
        for engine in ["torch", "ort"]:
            out = os.path.join(work, f"{engine}_{mirror}.npy")
            cmd = [sys.executable, __file__, "--worker", engine, "--checkpoint", a.checkpoint,
                   "--image", a.image, "--threads", str(a.threads), "--batch", str(a.batch),
                   "--onnx", onnx, "--labels", out] + (["--mirror"] if mirror else [])
            _, rss, so = timed(cmd, env)
            labels[(engine, mirror)] = np.load(out)
            label = "PyTorch eval" if engine == "torch" else "ONNX Runtime"
            rows.append((tag, f"{label}, forward alone", json.loads(so)["forward_s"], rss))
    import onnxruntime as ort
    import torch

    print(f"{d}x{h}x{w} voxels, batch {a.batch}, {a.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"| | engine | seconds | peak RSS (MiB) |\n|---|---|---|---|")
    for tag, name, s, rss in rows:
        print(f"| {tag} | {name} | {s:.2f} | {rss:.0f} |")
    for tag in ["mirror on" if m else "mirror off" for m in mirrors]:
        t = {name: s for tg, name, s, _ in rows if tg == tag}
        k = t["kseg predict, end to end"]
        print(f"{tag}: kseg / ONNX Runtime {k / t['ONNX Runtime, forward alone']:.2f}, "
              f"kseg / PyTorch {k / t['PyTorch eval, forward alone']:.2f}"
              + ("" if a.skip_graph else
                 f", kseg / kseg graph {k / t['kseg graph predict, end to end']:.2f}")
              + "".join(f"; kseg {p} / ONNX Runtime "
                        f"{t[f'kseg {p} predict, end to end'] / t['ONNX Runtime, forward alone']:.2f}"
                        for p in a.precision))
    ok = True
    for mirror in mirrors:
        ref = labels[("ort", mirror)]
        lower = [f"kseg {p}" for p in a.precision]
        for name in ["kseg", "kseg graph", "torch"] + lower:
            if (name, mirror) in labels:
                agree = float((labels[(name, mirror)] == ref).mean())
                # int8 and bf16 are not f32's arithmetic: their Dice is
                # benches/precision.sh's.
                ok &= agree > 0.999 or name in lower
                print(f"labels {name} vs ONNX Runtime (mirror {mirror}): agreement {agree:.6f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
