"""Training throughput of the in-memory data path, measured against two references in one run.

  1. the same training step on pre-made tensors (no data work at all): target >= 0.95x;
  2. a torchvision DataLoader pipeline (per-image PIL transforms, worker processes): SPEC 11
     asks >= 3x for an epoch (here: steady-state steps, worker start-up excluded);
  3. peak resident memory of a `quick` teacher run on all training images: target < 1.5 GB.

Usage: python bench/train_throughput.py [--data DIR] [--arch resnet18-quarter]
Each measurement warms up, then times a fixed number of steps of the step `fit` runs on a CPU
(the recipe's precision: bf16 autocast where the CPU has native bf16; the recipe's memory format,
channels_last, as training uses it on CPUs too); ratios compare numbers taken in this run.
Smoke run: --steps 2 --warmup 1 --batch-size 16 --workers 1 --train-size 200 --val-size 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.data import BatchLoader, DataSettings, load_data
from distill.device import Precision, autocast, choose_precision
from distill.optim import make_optimizer
from distill.recipes import get_recipe
from distill.registry import create_model
from distill.settings import AugmentSettings

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-jpeg"


CPU = torch.device("cpu")


def timed_steps(model, optimizer, batches, steps: int, warmup: int, precision: Precision) -> float:
    """Images per second over `steps` optimizer steps drawn from the iterator `batches`."""
    model.train()
    seen, t0 = 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0, seen = time.perf_counter(), 0
        x, y = next(batches)
        with autocast(CPU, precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def forever(make_iter):
    while True:
        yield from make_iter()


def real_path(dataset, batch_size, channels_last):
    loader = BatchLoader.of(
        dataset,
        dataset.train,
        batch_size,
        device=CPU,
        augment=AugmentSettings(crop_pad=4, flip=True),
        shuffle=True,
        drop_last=True,
        channels_last=channels_last,
    )
    epoch = iter(range(10**9))
    return forever(lambda: loader.epoch(next(epoch)))


def premade(dataset, batch_size, channels_last):
    x = torch.randn(batch_size, *dataset.input_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, dataset.num_classes, (batch_size,))
    while True:
        yield x, y


def dataloader_path(folder: Path, dataset, batch_size, workers, channels_last):
    """The textbook pipeline: ImageFolder + per-image RandomCrop/Flip/ToTensor/Normalize."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(dataset.mean, dataset.std),
        ]
    )
    ds = ImageFolder(str(folder / "train" if (folder / "train").is_dir() else folder), tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True
    )

    def batches():
        for x, y in loader:
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y

    return forever(batches)


def peak_rss_of_quick_run(
    data: Path, arch: str, cache_dir: Path, train_size: int | None, val_size: int
) -> float:
    """Peak RSS (GB) of `distill teacher train --recipe quick --epochs 1` on the CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "distill", "teacher", "train", "--arch", arch,
            "--data", str(data), "--recipe", "quick", "--epochs", "1", "--quiet",
            "--device", "cpu", "--cache-dir", str(cache_dir), "--out", str(Path(tmp) / "t.pt"),
            "--val-size", str(val_size),
        ]  # fmt: skip
        if train_size is not None:
            cmd += ["--train-size", str(train_size)]
        subprocess.run(cmd, check=True)
    # ru_maxrss of waited-for children, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--arch", default="resnet18-quarter")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/distill").expanduser())
    p.add_argument("--train-size", type=int, help="stratified subsample (default: every image)")
    p.add_argument("--val-size", type=int, default=5000, help="held out, as in training")
    p.add_argument("--skip-memory", action="store_true", help="skip the 1-epoch memory run")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    settings = DataSettings(
        str(args.data), cache_dir=args.cache_dir, train_size=args.train_size, val_size=args.val_size
    )
    dataset = load_data(settings)
    recipe = get_recipe("quick")
    cl = recipe.channels_last  # as `fit` trains, on CPUs and GPUs alike
    precision = choose_precision(CPU, recipe.amp)
    results: dict[str, float] = {}
    for name, make in (
        ("premade", lambda: premade(dataset, args.batch_size, cl)),
        ("real", lambda: real_path(dataset, args.batch_size, cl)),
        (
            "dataloader",
            lambda: dataloader_path(args.data, dataset, args.batch_size, args.workers, cl),
        ),
    ):
        torch.manual_seed(0)
        model = create_model(args.arch, dataset.num_classes)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, recipe, recipe.lr_at(args.batch_size))
        results[name] = timed_steps(model, optimizer, make(), args.steps, args.warmup, precision)
        print(f"{name:>10}: {results[name]:8.0f} images/s", flush=True)

    vs_premade = results["real"] / results["premade"]
    vs_loader = results["real"] / results["dataloader"]
    print(f"real data path vs pre-made tensors: {vs_premade:.3f}x (target >= 0.95x)")
    print(
        f"real data path vs torchvision DataLoader ({args.workers} workers): "
        f"{vs_loader:.2f}x (SPEC 11: >= 3x)"
    )
    report = {
        "arch": args.arch,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "precision": precision.name,
        "train_images": len(dataset.train.labels),
        "cpus": os.cpu_count(),
        **{f"{k}_images_per_s": v for k, v in results.items()},
        "real_vs_premade": vs_premade,
        "real_vs_dataloader": vs_loader,
    }
    if not args.skip_memory:
        peak = peak_rss_of_quick_run(
            args.data, args.arch, args.cache_dir, args.train_size, args.val_size
        )
        report["quick_run_peak_rss_gb"] = peak
        print(
            f"peak resident memory of a quick 1-epoch teacher run on "
            f"{len(dataset.train.labels) + len(dataset.val.labels):,} images: {peak:.2f} GB "
            "(target < 1.5 GB)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
