"""The published CIFAR-100 distillation table, reproduced with distill (bench/kd_table.sh runs it).

The CRD benchmark's pairs (ResNet32x4 -> ResNet8x4, WRN-40-2 -> WRN-16-2), every method at its
published defaults and the benchmark's recipe: SGD, momentum 0.9, lr 0.05 at batch 64, weight
decay 5e-4, 240 epochs, random crop and flip. The benchmark decays the lr by 10x at epochs 150,
180 and 210; distill has no milestone schedule, so this runs cosine over the same 240 epochs
(a schedule the published runs did not use: a gap to the table may come from it). Teachers are
trained here with the same recipe (the published teachers are downloads this script does not
make).

    python bench/kd_table.py run --data cifar100 --pair resnet32x4:resnet8x4 --method dkd
    python bench/kd_table.py table --out runs/kd_table

Each run writes OUT/PAIR/METHOD.pt; `table` prints test top-1 beside the published figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.api import train_student, train_teacher
from distill.checkpoint import load_checkpoint
from distill.data import DataSettings, load_data
from distill.settings import KD_METHOD_HELP, AugmentSettings, KDSettings, Recipe, RunSettings

PAIRS = ("resnet32x4:resnet8x4", "wrn-40-2:wrn-16-2")
# Top-1 on the CIFAR-100 test set: mdistiller's table (teacher, student trained on labels, KD,
# FitNet, AT, CRD, ReviewKD, DKD); DIST, MLKD and logit standardisation (on KD) from their papers
# for the ResNet pair (the figures the issue quotes; their WRN figures are not quoted here).
PUBLISHED = {
    "resnet32x4:resnet8x4": {
        "teacher": 79.42, "labels": 72.50, "hinton": 73.33, "fitnet": 73.50, "at": 73.44,
        "crd": 75.51, "reviewkd": 75.63, "dkd": 76.32, "dist": 76.31, "mlkd": 77.08,
        "hinton+ls": 76.62,
    },
    "wrn-40-2:wrn-16-2": {
        "teacher": 75.61, "labels": 73.26, "hinton": 74.92, "fitnet": 73.58, "at": 74.08,
        "crd": 75.48, "reviewkd": 76.12, "dkd": 76.24,
    },
}  # fmt: skip
METHODS = (*KD_METHOD_HELP, "hinton+ls")


def benchmark_recipe(epochs: int) -> Recipe:
    return Recipe(
        "crd-benchmark",
        epochs=epochs,
        batch_size=64,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        augment=AugmentSettings(crop_pad=4, flip=True),
    )


def kd_of(method: str) -> KDSettings:
    if method == "hinton+ls":
        # Sun et al.'s published KD recipe with standardisation: T 2, KD weight 9 to CE 0.1;
        # distill's Hinton weights CE by 1 - alpha, so alpha 0.9 and the CE at 0.1 share it.
        return KDSettings("hinton", temperature=2.0, logit_standardize=True)
    return KDSettings(method)


def run(args: argparse.Namespace) -> None:
    teacher_arch, student_arch = args.pair.split(":")
    data = load_data(DataSettings(args.data, train_size=args.train_size, val_size=args.val_size))
    recipe = benchmark_recipe(args.epochs)
    folder = args.out / args.pair.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    teacher = folder / "teacher.pt"
    device = args.device
    if not teacher.exists():
        train_teacher(
            teacher_arch, data, recipe=recipe, run=RunSettings(teacher, device, quiet=True)
        )
    out = folder / f"{args.method}.pt"
    if out.exists():
        return
    interrupted = (folder / f"{args.method}.last.pt").exists()
    run_settings = RunSettings(out, device, quiet=True, resume=interrupted)
    if args.method == "labels":
        train_teacher(student_arch, data, recipe=recipe, run=run_settings, kind="student")
    else:
        train_student(teacher, student_arch, data, budget=50_000_000, kd=kd_of(args.method),
                      recipe=recipe, run=run_settings)  # fmt: skip


def accuracy(path: Path) -> float | None:
    if not path.exists():
        return None
    metrics = load_checkpoint(path)["metrics"]
    return metrics.get("test_accuracy", metrics["val_accuracy"])


def table(args: argparse.Namespace) -> None:
    print("| pair | method | distill top-1 | published | gap |")
    print("|---|---|--:|--:|--:|")
    for pair in args.pairs.split(","):
        folder = args.out / pair.replace(":", "_")
        for method in ("teacher", "labels", *METHODS):
            name = "teacher" if method == "teacher" else method
            acc = accuracy(folder / f"{name}.pt")
            published = PUBLISHED.get(pair, {}).get(method)
            ours = f"{100 * acc:.2f}" if acc is not None else "not run"
            gap = f"{100 * acc - published:+.2f}" if acc is not None and published else ""
            ref = f"{published:.2f}" if published else ""
            print(f"| {pair} | {method} | {ours} | {ref} | {gap} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", default="cifar100")
    r.add_argument("--pair", default=PAIRS[0])
    r.add_argument("--method", default="hinton", choices=("labels", *METHODS))
    r.add_argument("--epochs", type=int, default=240)
    r.add_argument("--train-size", type=int, default=None)
    r.add_argument("--val-size", type=int, default=5000)
    r.add_argument("--device", default="auto")
    r.add_argument("--out", type=Path, default=Path("runs/kd_table"))
    t = sub.add_parser("table")
    t.add_argument("--pairs", default=",".join(PAIRS))
    t.add_argument("--out", type=Path, default=Path("runs/kd_table"))
    args = p.parse_args()
    if args.what == "run":
        run(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
