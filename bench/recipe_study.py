"""What each recipe choice is worth, measured on a CPU proxy (README: What each choice is worth).

A ladder of configurations, each trained with two or more seeds on a stratified subset of the
CIFAR-10 JPEGs with a quarter-width student (resnet18-quarter) for a fixed number of epochs:
labels only; Hinton KD from a label-smoothed vs an unsmoothed teacher; T and alpha; DKD at its
published defaults vs distill's defaults; teacher TTA; EMA; and evaluation TTA of the Hinton
students. Teachers are the student's own architecture trained longer ("born-again", as the quick
preset does): on a CPU a wider teacher costs more per image than the whole student step.

Results accumulate in OUT/results.json, so an interrupted study continues where it stopped;
the table is printed (Markdown) at the end with the mean and spread over seeds.

    python bench/recipe_study.py --data ../shared/data/cifar10-jpeg --out runs/study
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill.api import train_student, train_teacher
from distill.checkpoint import load_checkpoint
from distill.data import DataSettings, load_data
from distill.evaluation import evaluate_file
from distill.recipes import make_recipe
from distill.settings import KDSettings, RunSettings

ARCH = "resnet18-quarter"

# name -> (teacher, KD settings or None for labels only, recipe changes, what it tests)
LADDER: dict[str, tuple[str | None, KDSettings | None, dict[str, Any], str]] = {
    "labels only": (None, None, {}, "the same student, recipe and epochs without a teacher"),
    "Hinton, smoothed teacher": (
        "smoothed", KDSettings("hinton"), {}, "teacher trained with label smoothing 0.1"
    ),
    "Hinton": ("plain", KDSettings("hinton"), {}, "alpha 0.9, T 4, unsmoothed teacher"),
    "Hinton, T 2": ("plain", KDSettings("hinton", temperature=2.0), {}, "softer targets off"),
    "Hinton, T 8": ("plain", KDSettings("hinton", temperature=8.0), {}, "softer targets"),
    "Hinton, alpha 0.5": ("plain", KDSettings("hinton", alpha=0.5), {}, "more weight on labels"),
    "DKD, published defaults": (
        "plain",
        KDSettings("dkd", beta=8.0, warmup_epochs=None),
        {"published_dkd": True},
        "beta 8, warm-up 1/12 of the run (mdistiller, CIFAR-100)",
    ),
    "DKD, beta 8, warm-up 1 epoch": (
        "plain", KDSettings("dkd", beta=8.0, warmup_epochs=1.0), {}, "the warm-up alone"
    ),
    "DKD, beta 0.8, warm-up 1/12 run": (
        "plain", KDSettings("dkd", beta=0.8), {"published_dkd": True}, "the beta alone"
    ),
    "DKD, beta 2, warm-up 1 epoch": (
        "plain", KDSettings("dkd", beta=2.0, warmup_epochs=1.0), {}, "a gentler non-target term"
    ),
    "DKD, beta 0.8, warm-up 1 epoch": (
        "plain",
        KDSettings("dkd", beta=0.8, warmup_epochs=1.0),
        {},
        "beta 8 scaled by the non-target classes, 9 of CIFAR-100's 99",
    ),
    "DKD, distill defaults": ("plain", KDSettings("dkd"), {}, "KD_DEFAULTS in settings.py"),
    "Hinton, teacher TTA": (
        "plain", KDSettings("hinton", teacher_tta=True), {}, "soft targets of image + mirror"
    ),
    "Hinton, EMA 0.99": ("plain", KDSettings("hinton"), {"ema_decay": 0.99}, "EMA of weights"),
}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/study"))
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=6, help="student epochs")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--only", nargs="*", help="run only these configurations")
    p.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.table:
        print(table(results, args))
        return
    cache = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    data_settings = DataSettings(
        args.data, val_size=args.val_size, train_size=args.train_size, **cache
    )
    data = load_data(data_settings)
    print(f"data: {len(data.train):,} training, {len(data.val):,} validation images of {args.data}")

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=2))

    teachers = {}
    for kind, smoothing in (("plain", 0.0), ("smoothed", 0.1)):
        path = args.out / f"teacher-{kind}.pt"
        if not path.exists():
            recipe = make_recipe("quick", epochs=args.teacher_epochs, label_smoothing=smoothing)
            started = time.perf_counter()
            run = RunSettings(out=path, device="cpu", quiet=True)
            train_teacher(ARCH, data, recipe=recipe, run=run)
            print(f"teacher {kind}: {time.perf_counter() - started:.0f} s")
        teachers[kind] = path
        acc = load_checkpoint(path)["metrics"]["val_accuracy"]
        results.setdefault("teachers", {})[kind] = acc
    save()

    ladder = {k: v for k, v in LADDER.items() if not args.only or k in args.only}
    for name, (teacher, kd, changes, _) in ladder.items():
        for seed in range(args.seeds):
            key = f"{name} | seed {seed}"
            if key in results.get("runs", {}):
                continue
            out = args.out / f"{name.replace(' ', '_').replace(',', '')}-s{seed}.pt"
            changes = dict(changes)
            published = changes.pop("published_dkd", False)
            recipe = make_recipe("quick", epochs=args.epochs, **changes)
            run = RunSettings(out=out, device="cpu", seed=seed, quiet=True, force=True)
            started = time.perf_counter()
            if kd is None:
                ckpt = train_teacher(ARCH, data, recipe=recipe, run=run, kind="student")
            else:
                if published:  # mdistiller's warm-up: 20 of 240 epochs, the same share here
                    kd = replace(kd, warmup_epochs=args.epochs * 20 / 240)
                ckpt = train_student(teachers[teacher], ARCH, data, recipe=recipe, run=run, kd=kd)
            seconds = time.perf_counter() - started
            record = {"val_accuracy": ckpt["metrics"]["val_accuracy"], "seconds": seconds}
            if name == "Hinton":  # the same students, evaluated with test-time augmentation
                tta = evaluate_file(out, data=_data_override(data_settings), tta=True)
                results.setdefault("runs", {})[f"Hinton + eval TTA | seed {seed}"] = {
                    "val_accuracy": tta["accuracy"],
                    "seconds": 0.0,
                }
            results.setdefault("runs", {})[key] = record
            save()
            print(f"{key}: {record['val_accuracy']:.2%} in {seconds:.0f} s", flush=True)
    print()
    print(table(results, args))


def _data_override(settings: DataSettings) -> dict[str, Any]:
    return {"source": settings.source, "cache_dir": settings.cache_dir}


def table(results: dict[str, Any], args: argparse.Namespace) -> str:
    runs = results.get("runs", {})
    names = list(dict.fromkeys(k.split(" | ")[0] for k in runs))
    base = _mean(runs, "labels only")
    teachers = results.get("teachers", {})
    lines = [
        f"Student {ARCH}, {args.epochs} epochs of the quick recipe on {args.train_size:,} "
        f"CIFAR-10 JPEGs, validated on {args.val_size:,}; teachers: {ARCH} x "
        f"{args.teacher_epochs} epochs, unsmoothed {teachers.get('plain', 0):.2%}, smoothed "
        f"{teachers.get('smoothed', 0):.2%}. Mean (min-max) over the seeds run.",
        "",
        "| configuration | val top-1 | vs labels only | seeds | seconds per run |",
        "|---|--:|--:|--:|--:|",
    ]
    for name in names:
        accs = [v["val_accuracy"] for k, v in runs.items() if k.split(" | ")[0] == name]
        secs = [v["seconds"] for k, v in runs.items() if k.split(" | ")[0] == name]
        mean = statistics.fmean(accs)
        spread = f" ({min(accs):.1%}-{max(accs):.1%})" if len(accs) > 1 else ""
        gain = f"{100 * (mean - base):+.1f}" if base is not None else ""
        seconds = f"{statistics.fmean(secs):.0f}" if any(secs) else "(no training)"
        lines.append(f"| {name} | {mean:.2%}{spread} | {gain} | {len(accs)} | {seconds} |")
    return "\n".join(lines)


def _mean(runs: dict[str, Any], name: str) -> float | None:
    accs = [v["val_accuracy"] for k, v in runs.items() if k.split(" | ")[0] == name]
    return statistics.fmean(accs) if accs else None


if __name__ == "__main__":
    main()
