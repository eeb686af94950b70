"""Training throughput with N processes against one, each a short `distill teacher train` run.

SPEC 9/11: DDP over 8 GPUs should reach >= 0.85 x 8 single-GPU throughput. Both runs train the
same model with the same per-process batch for the same number of steps per process (the global
batch grows with the processes, as in any DDP run): one process on `steps x batch` images, N
processes (`--nproc-per-node N`: torchrun's elastic launcher) on N times as many. Images/s is the
last epoch's `images_per_s` in the checkpoint's history (images of every rank / rank 0's epoch
time; the first epoch holds start-up: cuDNN autotuning, allocator growth, NCCL's first
collectives). One run each, one after the other: the ratio is this run's, not a mean.

On a CPU the processes share the cores (torchrun gives each one OMP thread where one process
uses them all), so expect no speed-up there: the figure is meant for machines with a GPU per
process. Without --data the images are random (bench/gpu_rows.py synthetic): speed only.

    python bench/ddp_scaling.py                               # 2 CPU processes, smoke-sized
    python bench/ddp_scaling.py --device cuda --arch resnet18-5m --batch-size 512 --steps 20
    python bench/ddp_scaling.py --data ../shared/data/cifar10-jpeg --nproc 2 --json ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from gpu_rows import layout, row, train_run, write_synthetic_cifar


def default_nproc(device: str) -> int:
    gpus = torch.cuda.device_count() if device != "cpu" else 0
    return gpus if gpus else 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet18-quarter")
    p.add_argument("--data", help="a --data source (default: random images, made here)")
    p.add_argument("--nproc", type=int, help="processes to compare with one (default: GPUs, or 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--steps", type=int, default=5, help="steps per epoch, per process")
    p.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--cache-dir", help="decoded-data cache (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--rows", action="store_true", help="also print 'row<TAB>name<TAB>result'")
    args = p.parse_args()
    nproc = args.nproc or default_nproc(args.device)
    if nproc < 2:
        sys.exit("--nproc must be 2 or more: there is nothing to compare one process with")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.device_count() < nproc:
        sys.exit(f"{nproc} processes need {nproc} GPUs; {torch.cuda.device_count()} visible")

    per_process = args.batch_size * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or write_synthetic_cifar(
            work / "synthetic", per_process * nproc + args.val_size
        )
        common = {
            "recipe": "quick",
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "val_size": args.val_size,
            "device": device,
            "cache_dir": args.cache_dir or work / "cache",
        }
        runs: dict[int, dict[str, Any]] = {}
        for n in (1, nproc):
            try:
                ckpt = train_run(
                    args.arch,
                    data,
                    work / f"n{n}.pt",
                    nproc=n,
                    train_size=per_process * n,
                    **common,
                )
            except subprocess.CalledProcessError as e:
                hint = " (is DDP ready in this branch?)" if n > 1 else ""
                sys.exit(f"the {n}-process run failed with exit code {e.returncode}{hint}")
            runs[n] = {
                "processes": ckpt["metrics"].get("processes"),
                "images_per_s": ckpt["history"][-1]["images_per_s"],
                "epoch_seconds": ckpt["history"][-1]["seconds"],
                "layout": layout(ckpt),
            }
    one, many = runs[1]["images_per_s"], runs[nproc]["images_per_s"]
    ratio = many / one
    cores = os.cpu_count()
    where = (
        f"{nproc} GPUs vs 1"
        if device == "cuda"
        else f"{nproc} CPU processes vs 1 on {cores} cores (expect no speed-up)"
    )
    print(
        f"{args.arch}, quick recipe, batch {args.batch_size} per process, {args.steps} steps per "
        f"epoch per process, {runs[1]['layout']}\n"
        f"  1 process   : {one:10,.0f} img/s\n"
        f"  {nproc} processes : {many:10,.0f} img/s (checkpoint says {runs[nproc]['processes']})\n"
        f"  {where}: {ratio:.2f}x = {ratio / nproc:.0%} of linear scaling (SPEC 11: >= 85%)"
    )
    if args.rows:
        row(
            f"DDP {nproc} vs 1 ({device})",
            f"{ratio:.2f}x = {ratio / nproc:.0%} of linear ({many:,.0f} vs {one:,.0f} img/s, "
            f"{args.arch}, batch {args.batch_size}/process)",
        )
    if args.json:
        record = {
            "arch": args.arch,
            "device": device,
            "batch_size_per_process": args.batch_size,
            "steps_per_epoch": args.steps,
            "runs": {str(k): v for k, v in runs.items()},
            "ratio": ratio,
            "efficiency": ratio / nproc,
            "torch": torch.__version__,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
