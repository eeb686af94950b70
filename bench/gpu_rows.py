"""Rows of bench/gpu_check.sh that run the `distill` command line, and what they share with
bench/ddp_scaling.py: a synthetic CIFAR-10 folder and a training run read back from its checkpoint.

Each subcommand runs `python -m distill ...` as a user would, reads what it wrote (a checkpoint's
`history` and `metrics`, eval's or bench's JSON) and prints one `row<TAB>name<TAB>result` line per
table row, which gpu_check.sh collects; everything else it prints goes to the log.

    python bench/gpu_rows.py synthetic /tmp/syn --train-images 25000
    python bench/gpu_rows.py train --arch resnet18-5m --data /tmp/syn --device cuda --compile-too
    python bench/gpu_rows.py accuracy --data ../shared/data/cifar10-jpeg --epochs 8 --out acc.pt
    python bench/gpu_rows.py eval acc.pt --device cuda
    python bench/gpu_rows.py bench acc.pt --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STARTED = time.monotonic()
# CIFAR-10's classes in the official label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")  # fmt: skip


def row(name: str, result: str) -> None:
    print(f"row\t{name}\t{result}", flush=True)


def write_cifar(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """uint8 images [N, 3*32*32] (CIFAR's channel-planar rows) and labels in the official
    CIFAR-10 python layout under `root` (five training batches, the test batch when given);
    returns `root` (what --data takes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict[str, Any]) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)  # as the official files: dicts of arrays and lists

    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        dump(f"data_batch_{i}", {"data": images[part], "labels": [int(y) for y in labels[part]]})
    if test is not None:
        dump("test_batch", {"data": test[0], "labels": [int(y) for y in test[1]]})
    dump("batches.meta", {"label_names": list(classes)})
    return root


def write_synthetic_cifar(root: Path, train_images: int, test_images: int = 1000) -> Path:
    """Random uint8 images with balanced random labels in the official CIFAR-10 python layout
    under `root`; returns `root` (what --data takes). For speed runs only: the pixel values do
    not change the work, and the python format decodes in a moment where JPEGs would not."""
    rng = np.random.default_rng(0)

    def batch(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % len(CIFAR10_CLASSES))
        return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8), labels

    return write_cifar(root, *batch(train_images), CIFAR10_CLASSES, batch(test_images))


def unpack_subset(pack: Path, root: Path) -> Path:
    """bench/gpu_carry.py's packed JPEGs as a CIFAR-10 python folder under `root` (real images
    for the accuracy row, decoded once here; distill reads the python format in a moment)."""
    from gpu_carry import read_subset

    images, labels, classes = read_subset(pack)
    if images.shape[1:] != (32, 32, 3):
        raise SystemExit(f"{pack} holds {images.shape[1:]} images, not CIFAR's 32x32 RGB")
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR's layout: RRR..GGG..BBB
    return write_cifar(root, np.ascontiguousarray(planar), labels, classes)


class RowFailed(Exception):
    """A distill command failed: the message is its own reason, from its stderr."""


def distill(
    args: Sequence[str], timeout: float | None = None, stdout: Any = None
) -> subprocess.CompletedProcess:
    """Run `python -m distill ARGS`, its output passed through to ours; a failure raises
    RowFailed with the child's own words (its `error:` line, else its last line of stderr)."""
    cmd = [sys.executable, "-m", "distill", *map(str, args)]
    print("$ " + " ".join(cmd), flush=True)
    try:
        done = subprocess.run(
            cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr or ""
        sys.stderr.write(err.decode(errors="replace") if isinstance(err, bytes) else err)
        raise
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise RowFailed(f"distill {' '.join(map(str, args[:2]))}: {reason(done.stderr)}")
    return done


def reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    ours = [line for line in lines if "error:" in line]
    return (ours or lines or ["no error output"])[-1][:300]


def train_run(
    arch: str,
    data: str | Path,
    out: Path,
    *,
    recipe: str,
    epochs: int,
    batch_size: int | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    device: str = "auto",
    nproc: int = 1,
    cache_dir: Path | None = None,
    extra: Sequence[str] = (),
    timeout: float | None = None,
) -> dict[str, Any]:
    """`distill teacher train` with these flags; returns the checkpoint it wrote."""
    from distill.checkpoint import load_checkpoint

    args = [
        "teacher", "train", "--arch", arch, "--data", data, "--recipe", recipe,
        "--epochs", epochs, "--device", device, "--out", out, "--force", "--quiet",
    ]  # fmt: skip
    for flag, value in (
        ("--batch-size", batch_size),
        ("--train-size", train_size),
        ("--val-size", val_size),
        ("--cache-dir", cache_dir),
    ):
        if value is not None:
            args += [flag, value]
    if nproc > 1:
        args += ["--nproc-per-node", nproc]
    distill([*args, *extra], timeout=timeout)
    return load_checkpoint(out)


def layout(ckpt: dict[str, Any]) -> str:
    """Precision and memory format the run trained in (fit: channels_last on CUDA only)."""
    m = ckpt["metrics"]
    on_cuda = str(m.get("device", "")).startswith("cuda")
    cl = ckpt["recipe"].get("channels_last") and on_cuda
    return f"{m.get('precision', '?')}{' + channels_last' if cl else ''}, {m.get('device')}"


# ---------------------------------------------------------------------------------------------
# Rows


def time_left() -> float | None:
    """Seconds this row may still run (gpu_check.sh's limit, ROW_LIMIT_S, less a margin for
    reading the result), None without a limit."""
    limit = os.environ.get("ROW_LIMIT_S")
    return None if not limit else max(float(limit) - (time.monotonic() - STARTED) - 10, 5)


def train_rows(args: argparse.Namespace) -> None:
    """Training images/s of the standard recipe's step (augmentation on the device, EMA, the
    recipe's precision), eager, or with --compile against the eager run's rate (one row each:
    a cold compile must not take the eager number down with it); the last of `epochs` epochs
    counts (the first holds cuDNN's autotuning and, compiled, the compilation)."""
    work = Path(args.work)
    common = {
        "recipe": "standard",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_size": args.batch_size * args.steps,
        "val_size": args.val_size,
        "device": args.device,
        "cache_dir": args.cache_dir,
    }
    eager_file = work / f"{args.arch}.pt"
    if not args.compile:
        eager = train_run(args.arch, args.data, eager_file, **common, timeout=time_left())
        rate = eager["history"][-1]["images_per_s"]
        row(
            f"train {args.arch}",
            f"{rate:,.0f} img/s eager ({layout(eager)}, batch {args.batch_size}, "
            f"epoch {len(eager['history'])} of {args.epochs}, {args.steps} steps)",
        )
        return
    name = f"train {args.arch} + compile"
    if args.device == "cpu":
        row(name, "skipped: distill compiles on CUDA only")
        return
    limit = time_left()
    try:
        compiled = train_run(
            args.arch, args.data, work / f"{args.arch}-compiled.pt", **common,
            extra=["--compile"], timeout=limit,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        row(name, f"compile took longer than {limit:.0f} s (a cold Inductor compile; not timed)")
        return
    fast = compiled["history"][-1]["images_per_s"]
    first = compiled["history"][0]["seconds"]
    vs = ""
    if eager_file.is_file():
        from distill.checkpoint import load_checkpoint

        vs = f" = {fast / load_checkpoint(eager_file)['history'][-1]['images_per_s']:.2f}x eager"
    row(name, f"{fast:,.0f} img/s{vs} (first epoch, compilation included: {first:.0f} s)")


def accuracy_row(args: argparse.Namespace) -> None:
    """A short run of the standard recipe (with its label smoothing: `teacher train` turns it off
    by default) on real data: does the GPU path learn?"""
    start = time.perf_counter()
    ckpt = train_run(
        args.arch,
        args.data,
        Path(args.out),
        recipe="standard",
        epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        device=args.device,
        cache_dir=args.cache_dir,
        extra=["--label-smoothing", "0.1"],
        timeout=time_left(),
    )
    m, wall = ckpt["metrics"], time.perf_counter() - start
    rates = [h["images_per_s"] for h in ckpt["history"]]
    test = f", test top-1 {m['test_accuracy']:.2%}" if "test_accuracy" in m else ""
    row(
        f"accuracy: standard, {args.arch}",
        f"val top-1 {m['val_accuracy']:.2%} after {m['epochs_run']} epoch(s){test} "
        f"({ckpt['data']['val_size']:,} val images of {ckpt['data']['source']}; "
        f"{m['train_seconds']:.0f} s training, {wall:.0f} s in all, best epoch "
        f"{max(rates):,.0f} img/s, {layout(ckpt)})",
    )


def eval_row(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval.json"
        cmd = ["eval", args.model, "--device", args.device, "--json"]
        cmd += ["--cache-dir", args.cache_dir] if args.cache_dir else []
        start = time.perf_counter()
        with open(out, "w") as f:
            distill(cmd, timeout=time_left(), stdout=f)
        wall = time.perf_counter() - start
        result = json.loads(out.read_text())
    row(
        f"distill eval ({args.device})",
        f"top-1 {result['accuracy']:.2%} on {result['count']:,} images, {wall:.1f} s wall "
        "(start-up and data loading included)",
    )


def bench_rows(args: argparse.Namespace) -> None:
    """`distill bench --device D`: every engine like for like; one row per batch size with each
    engine's p50 and onnxruntime fp32 over PyTorch fp32."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = ["bench", args.model, "--device", args.device, "--batch-sizes", args.batch_sizes]
        cmd += ["--seconds", args.seconds, "--out", out]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        distill(cmd, timeout=time_left())
        record = json.loads(out.read_text())
    left_out = "onnxruntime is left out on CUDA" in (record.get("note") or "")
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        cells = [
            f"{r['engine']} {r['precision']} {r['p50_ms']:.3g} ms"
            for r in record["results"]
            if r["batch_size"] == bs
        ]
        ratio = record["speedup"].get(str(bs))
        vs = f"; onnxruntime fp32 {ratio:.2f}x PyTorch fp32" if ratio else ""
        vs += "; onnxruntime: no CUDA provider on this machine" if left_out else ""
        row(f"distill bench b{bs} ({args.device})", ", ".join(cells) + vs)


def machine_line() -> str:
    """GPUs, Python, torch and onnxruntime (its providers): where the table's numbers come from."""
    import platform

    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    what = f"{len(gpus)} x {gpus[0]}" if gpus else "no GPU"
    try:
        import onnxruntime as ort

        ort_line = f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"
    except ImportError:
        ort_line = "no onnxruntime"
    return (
        f"{what}; Python {platform.python_version()}; torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}); {ort_line}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synthetic", help="write a random CIFAR-10 python folder; print its root")
    s.add_argument("root", type=Path)
    s.add_argument("--train-images", type=int, default=25_000)
    s.add_argument("--test-images", type=int, default=1_000)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="cuda", help="cuda, cpu or auto")
        sp.add_argument("--cache-dir", help="decoded-data cache (default: distill's)")

    t = sub.add_parser("train", help="training images/s, eager and compiled")
    t.add_argument("--arch", default="resnet18-5m")
    t.add_argument("--data", required=True)
    t.add_argument("--work", default=".", help="folder for the checkpoints")
    t.add_argument("--batch-size", type=int, default=512)
    t.add_argument("--steps", type=int, default=40, help="steps per epoch")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--val-size", type=int, default=1000)
    t.add_argument("--compile", action="store_true", help="with --compile, against the eager run")
    common(t)

    a = sub.add_parser("accuracy", help="a short standard-recipe run on real data")
    a.add_argument("--arch", default="resnet18-5m")
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--epochs", type=int, default=8)
    a.add_argument("--train-size", type=int)
    a.add_argument("--val-size", type=int)
    common(a)

    e = sub.add_parser("eval", help="distill eval MODEL --device D")
    e.add_argument("model")
    common(e)

    b = sub.add_parser("bench", help="distill bench MODEL --device D")
    b.add_argument("model")
    b.add_argument("--batch-sizes", default="1,32,256")
    b.add_argument("--seconds", default="0.5", help="timed seconds per engine and batch size")
    common(b)

    sub.add_parser("machine", help="one line: GPUs, torch, CUDA, onnxruntime providers")

    u = sub.add_parser("unpack", help="bench/gpu_carry.py's subset as a CIFAR python folder")
    u.add_argument("pack", type=Path)
    u.add_argument("root", type=Path)

    args = p.parse_args()
    if args.command == "machine":
        print(machine_line())
    elif args.command == "synthetic":
        print(write_synthetic_cifar(args.root, args.train_images, args.test_images))
    elif args.command == "unpack":
        print(unpack_subset(args.pack, args.root))
    else:
        rows = {"train": train_rows, "accuracy": accuracy_row, "eval": eval_row}
        rows["bench"] = bench_rows
        try:
            rows[args.command](args)
        except RowFailed as e:
            sys.exit(str(e))  # the row's reason, as gpu_check.sh shows it: the last line here
        except subprocess.TimeoutExpired as e:
            sys.exit(f"did not finish within {e.timeout:.0f} s")


if __name__ == "__main__":
    main()
