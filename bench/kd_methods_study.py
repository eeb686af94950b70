"""Every distillation method on the same CPU proxy (README: Distillation methods compared).

The same stratified subset of the CIFAR-10 JPEGs, the same quarter-width student
(resnet18-quarter), the same born-again teacher (the student's architecture trained longer
with label smoothing, as the quick preset does) and the same epochs of the quick recipe for
every method, at each method's published defaults (CRD with fewer negatives: the proxy's
training set is smaller than the published 16,384), with two seeds or more. One configuration
per process, so each run's peak memory (ru_maxrss) is its own; results accumulate in
OUT/results.json, so the study can run one configuration at a time and continue where it
stopped. The table (Markdown) gives the mean and spread over seeds, and each method's training
time and peak memory relative to Hinton's.

    python bench/kd_methods_study.py --data ../shared/data/cifar10-jpeg --out runs/kd-study
    python bench/kd_methods_study.py ... --only crd --seed 1     # one run
    python bench/kd_methods_study.py ... --table                 # the table so far
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from distill.api import train_student, train_teacher
from distill.checkpoint import load_checkpoint
from distill.data import DataSettings, load_data
from distill.recipes import make_recipe
from distill.settings import KDSettings, RunSettings

ARCH = "resnet18-quarter"
CRD_NEGATIVES = 1024  # half the proxy's training set; the published 16,384 is 8x all of it

# name -> KD settings (None: labels only)
METHODS: dict[str, KDSettings | None] = {
    "labels only": None,
    "hinton": KDSettings("hinton"),
    "hinton + logit standardisation": KDSettings("hinton", logit_standardize=True),
    "dkd": KDSettings("dkd"),
    "dist": KDSettings("dist"),
    "mlkd": KDSettings("mlkd"),
    "crd": KDSettings("crd", crd_negatives=CRD_NEGATIVES),
    "fitnet": KDSettings("fitnet"),
    "at": KDSettings("at"),
    "reviewkd": KDSettings("reviewkd"),
}
# Published CIFAR-100 top-1, ResNet32x4 -> ResNet8x4 (mdistiller's table; DIST, MLKD and logit
# standardisation from their papers).
PUBLISHED = {
    "labels only": 72.50,
    "hinton": 73.33,
    "hinton + logit standardisation": 76.62,
    "dkd": 76.32,
    "dist": 76.31,
    "mlkd": 77.08,
    "crd": 75.51,
    "fitnet": 73.50,
    "at": 73.44,
    "reviewkd": 75.63,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/kd-study"))
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=10)
    # The quick recipe's batch of 256 would make 8 steps an epoch of this subset.
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--seed", type=int, default=None, help="run this seed only")
    p.add_argument("--only", nargs="*", help="run only these methods")
    p.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"

    def load() -> dict[str, Any]:
        return json.loads(results_file.read_text()) if results_file.exists() else {}

    if args.table:
        print(table(load(), args))
        return
    cache = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    data = load_data(
        DataSettings(args.data, val_size=args.val_size, train_size=args.train_size, **cache)
    )
    teacher = args.out / "teacher.pt"
    if not teacher.exists():
        recipe = make_recipe("quick", epochs=args.teacher_epochs, batch_size=args.batch_size)
        started = time.perf_counter()
        train_teacher(ARCH, data, recipe=recipe, run=RunSettings(teacher, "cpu", quiet=True))
        print(f"teacher: {time.perf_counter() - started:.0f} s", flush=True)
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds))
    for name, kd in METHODS.items():
        if args.only and name not in args.only:
            continue
        for seed in seeds:
            key = f"{name} | seed {seed}"
            if key in load().get("runs", {}):
                continue
            out = args.out / f"{name.replace(' ', '_').replace('+', 'and')}-s{seed}.pt"
            recipe = make_recipe("quick", epochs=args.epochs, batch_size=args.batch_size)
            run = RunSettings(out, "cpu", seed=seed, quiet=True, force=True)
            started = time.perf_counter()
            if kd is None:
                ckpt = train_teacher(ARCH, data, recipe=recipe, run=run, kind="student")
            else:
                ckpt = train_student(teacher, ARCH, data, recipe=recipe, run=run, kd=kd)
            record = {
                "val_accuracy": ckpt["metrics"]["val_accuracy"],
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            results = load()  # another process may have added runs meanwhile
            results.setdefault("runs", {})[key] = record
            results["teacher"] = load_checkpoint(teacher)["metrics"]["val_accuracy"]
            results["threads"] = torch.get_num_threads()
            results_file.write_text(json.dumps(results, indent=2))
            print(f"{key}: {record['val_accuracy']:.2%} in {record['seconds']:.0f} s", flush=True)


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    runs = results.get("runs", {})

    def of(name: str, field: str) -> list[float]:
        return [v[field] for k, v in runs.items() if k.split(" | ")[0] == name]

    # Time: the fastest seed's run (interference only ever adds time); memory: the mean.
    hinton_s = min(of("hinton", "seconds")) if of("hinton", "seconds") else None
    hinton_m = statistics.fmean(of("hinton", "peak_rss_mb")) if of("hinton", "seconds") else None
    lines = [
        f"Student {ARCH}, {args.epochs} epochs of the quick recipe at batch {args.batch_size} "
        f"on {args.train_size:,} "
        f"CIFAR-10 JPEGs, validated on {args.val_size:,}; teacher {ARCH} x "
        f"{args.teacher_epochs} epochs ({results.get('teacher', 0):.2%}). Mean (min-max) over "
        "the seeds; a whole run's time (the faster seed) and peak memory relative to Hinton's.",
        "",
        "| --kd | CPU proxy val top-1 | vs hinton | seeds | time vs hinton | memory vs hinton "
        "| published CIFAR-100 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    base = statistics.fmean(of("hinton", "val_accuracy")) if of("hinton", "val_accuracy") else None
    for name in METHODS:
        accs = of(name, "val_accuracy")
        if not accs:
            continue
        mean = statistics.fmean(accs)
        spread = f" ({min(accs):.1%}-{max(accs):.1%})" if len(accs) > 1 else ""
        gain = f"{100 * (mean - base):+.1f}" if base is not None else ""
        time_ratio = min(of(name, "seconds")) / hinton_s if hinton_s else 0
        mem_ratio = statistics.fmean(of(name, "peak_rss_mb")) / hinton_m if hinton_m else 0
        lines.append(
            f"| {name} | {mean:.2%}{spread} | {gain} | {len(accs)} | {time_ratio:.2f}x | "
            f"{mem_ratio:.2f}x | {PUBLISHED[name]:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
