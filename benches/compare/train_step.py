#!/usr/bin/env python3
"""kseg's Res-U-Net training step beside PyTorch's identical one.

Usage (not part of CI; benches/compare/train_step.sh sets up PyTorch in a
local virtual environment and calls this):

    benches/compare/train_step.sh                 # both standard cases
    benches/compare/train_step.sh --cases small   # only base8_depth5_b4_128
    benches/compare/train_step.sh --rounds 3      # each side run 3 times, alternated
    benches/compare/train_step.sh --rounds 6 --case-steps 30   # and 30 steps per run

For each case (the criterion bench's `train_step/*` and `forward/*` shapes:
forward, class-weighted CE + Lovász-Softmax, backward, AdamW step on random
input and labels) it runs kseg's `train_step` example and a PyTorch worker
(this file with --torch), each in its own process with the same number of
threads, and prints the median and the fastest step time of each, the
ratios kseg / PyTorch of both (< 1: kseg is faster) and each process's peak
resident memory. On a shared machine whose neighbours only ever add time,
the fastest steps are the steadier comparison; the medians show the typical
step.

The PyTorch model is docs/METHOD.md §2's Res-U-Net of resunet_torch.py (the same module
tree as the state_dict names kseg reads); the Lovász-Softmax is the reference
`lovasz_softmax` (Berman et al.), flat, classes present.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

CASES = {
    # name: (base, depth, batch, size, steps)
    "small": ("base8_depth5_b4_128", 8, 5, 4, 128, 12),
    "default": ("default_b1_512", 32, 5, 1, 512, 6),
}
WARMUP = 2


def torch_worker(args):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    from resunet_torch import res_unet

    def lovasz_grad(gt_sorted):
        gts = gt_sorted.sum()
        intersection = gts - gt_sorted.float().cumsum(0)
        union = gts + (1 - gt_sorted).float().cumsum(0)
        jaccard = 1.0 - intersection / union
        if len(gt_sorted) > 1:
            jaccard[1:] = jaccard[1:] - jaccard[:-1]
        return jaccard

    def lovasz_softmax_flat(probas, labels):
        losses = []
        for c in range(probas.size(1)):
            fg = (labels == c).float()
            if fg.sum() == 0:
                continue
            errors = (fg - probas[:, c]).abs()
            errors_sorted, perm = torch.sort(errors, 0, descending=True)
            losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
        return torch.stack(losses).mean()

    model = res_unet(args.base, args.depth).to(dev)
    if args.eval:
        model.eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 3, (args.batch, args.size, args.size), device=dev)
    w = torch.tensor([0.3, 1.0, 2.5], device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(args.steps):
        sync()
        t = time.perf_counter()
        if args.eval:
            with torch.no_grad():
                model(x)
        else:
            logits = model(x)
            probas = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 3)
            loss = F.cross_entropy(logits, y, weight=w) + lovasz_softmax_flat(probas, y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        print(f"step {step}: {time.perf_counter() - t:.3f} s", flush=True)
    n = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {n:,} parameters", flush=True)


def run(cmd, env):
    """Runs cmd, returns (step times after warm-up, peak RSS in MB, output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}")
    times = [float(m) for m in re.findall(r"step \d+: .*?([0-9.]+) s$", out, re.M)]
    return times[WARMUP:], usage.ru_maxrss / 1024, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", type=int, default=8)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--eval", action="store_true", help="time the eval forward instead of a training step")
    ap.add_argument("--device", default="cpu", help="PyTorch worker: cpu or cuda")
    ap.add_argument("--tf32", action="store_true", help="PyTorch worker: TF32 matmuls and convolutions")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--cases", default="small,default", help="comma list of: " + ", ".join(CASES))
    ap.add_argument("--kseg", default="target/release/examples/train_step", help="kseg's train_step binary")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of each side, alternated (kseg, PyTorch, kseg, ...): the machine's drift hits both")
    ap.add_argument("--case-steps", type=int, default=0,
                    help=f"steps per run, warm-up included (default: each case's own; {WARMUP} are warm-up)")
    args = ap.parse_args()
    if args.torch:
        return torch_worker(args)

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    rows = []
    for key in args.cases.split(","):
        name, base, depth, batch, size, steps = CASES[key]
        steps = args.case_steps or steps
        if steps <= WARMUP:
            sys.exit(f"--case-steps must exceed the {WARMUP} warm-up steps")
        for mode in ["train_step", "forward"]:
            common = ["--base", str(base), "--depth", str(depth), "--batch", str(batch), "--size", str(size),
                      "--steps", str(steps)] + (["--eval"] if mode == "forward" else [])
            ours, theirs, rss, version = [], [], [0.0, 0.0], ""
            for _ in range(args.rounds):
                t, r, _ = run([args.kseg] + common, env)
                ours += t
                rss[0] = max(rss[0], r)
                t, r, out = run([sys.executable, __file__, "--torch", "--threads", str(args.threads)] + common, env)
                theirs += t
                rss[1] = max(rss[1], r)
                version = out.strip().splitlines()[-1]
            a, b = statistics.median(ours), statistics.median(theirs)
            am, bm = min(ours), min(theirs)
            rows.append((f"{mode}/{name}", a, b, am, bm, len(ours), rss[0], rss[1]))
            print(f"{mode}/{name}: kseg {a:.3f} s (fastest {am:.3f}), PyTorch {b:.3f} s (fastest {bm:.3f}) "
                  f"({version})", file=sys.stderr, flush=True)
    print(f"\n{args.threads} threads; {args.rounds} alternated run(s) of each side; "
          f"the steps after {WARMUP} warm-up steps of each run")
    print("| case | kseg median (s) | PyTorch median (s) | ratio of medians | kseg fastest (s) "
          "| PyTorch fastest (s) | ratio of fastest | steps per side | kseg peak RSS (MB) | PyTorch peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, a, b, am, bm, n, ra, rb in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} | {am:.3f} | {bm:.3f} | {am / bm:.2f} | {n} "
              f"| {ra:.0f} | {rb:.0f} |")


if __name__ == "__main__":
    main()
