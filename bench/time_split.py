"""Where the time goes, from process start to the saved checkpoint: runs one distill command in a
child process with DISTILL_TIMINGS set (distill/timing.py) and prints the split: interpreter
start-up and imports, data (source scan, cache check, decode, cache write, split), memory check
and trainer build, each epoch's steps and validation, saves, pipeline stages, and what no phase
covers. Also the child's peak resident memory and the training step's achieved GFLOP/s against
the CPU's measured fp32 peak.

  python bench/time_split.py                        # the one-epoch command (10,000 images)
  python bench/time_split.py --compare              # ... and a DataLoader trainer, same epoch
  python bench/time_split.py --full                 # the same on every training image (memory)
  python bench/time_split.py --demo --out DIR       # the demo pipeline (12-50 min on 2 cores)
  python bench/time_split.py -- teacher train ...   # any distill command line

Run it on a quiet machine; every figure comes from this one run.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "cifar10-jpeg"


def one_epoch_command(data: Path, out: Path, cache: Path, train_size: int | None) -> list[str]:
    cmd = [
        "teacher", "train", "--arch", "resnet18-quarter", "--data", str(data), "--recipe",
        "quick", "--epochs", "1", "--device", "cpu", "--cache-dir", str(cache), "--out",
        str(out / "t.pt"), "--force",
    ]  # fmt: skip
    return cmd + (["--train-size", str(train_size)] if train_size else [])


def demo_command(data: Path, out: Path, cache: Path) -> list[str]:
    return [
        "pipeline", "--data", str(data), "--preset", "quick", "--out", str(out),
        "--cache-dir", str(cache),
    ]  # fmt: skip


def run(argv: list[str], log: Path) -> tuple[float, float, list[dict], str]:
    """(wall seconds, peak RSS in GB, phase records, stderr tail) of `python -m distill ARGV`."""
    env = os.environ | {"DISTILL_TIMINGS": str(log)}
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "distill", *argv], env=env, capture_output=True, text=True
    )
    wall = time.time() - t0
    if done.returncode != 0:
        sys.exit(f"the command failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for r in records:
        r["offset"] = r["start"] - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GB
    return wall, peak, records, done.stdout + done.stderr


def split(wall: float, records: list[dict]) -> list[tuple[str, float]]:
    """Rows of (what, seconds): start-up, then each top-level phase in order, then the rest.
    Data phases nest inside a pipeline stage; stages are the top level when there are any."""
    main = next((r for r in records if r["phase"] == "main"), None)
    rows = [("interpreter start-up and imports", main["offset"] if main else float("nan"))]
    staged = any(r["phase"].startswith("stage ") for r in records)
    top = [
        r
        for r in records
        if r["phase"] != "main" and (r["phase"].startswith(("stage ", "imports")) or not staged)
    ]
    merged: dict[str, float] = {}
    for r in sorted(top, key=lambda r: r["offset"]):
        merged[r["phase"]] = merged.get(r["phase"], 0.0) + r["seconds"]
    rows += list(merged.items())
    rows.append(("other (locks, checks, printing, exit)", wall - sum(s for _, s in rows)))
    return rows


def totals(records: list[dict]) -> dict[str, float]:
    """Seconds by kind of work over the whole run, however the phases nest (a demo's stages)."""
    kinds = {"data": "data: ", "training steps": " steps", "validation": " validation"}
    out = dict.fromkeys([*kinds, "saves", "final evaluation"], 0.0)
    for r in records:
        name = r["phase"]
        for kind, tag in kinds.items():
            if name.startswith(tag) or name.endswith(tag):
                out[kind] += r["seconds"]
        if name.endswith("save"):
            out["saves"] += r["seconds"]
        if name == "final evaluation":
            out["final evaluation"] += r["seconds"]
    return out


def step_gflops(arch: str, images_per_s: float) -> float:
    """Useful training work: 3 x the forward MACs x 2 FLOPs per MAC (forward, and a backward
    twice its size), per image."""
    from distill.budget import count_macs
    from distill.registry import create_model

    return 6 * count_macs(create_model(arch, 10), (3, 32, 32)) * images_per_s / 1e9


def cpu_peak_gflops(precision: str) -> float:
    """GFLOP/s of a large matmul in `precision` on every core: `distill bench`'s probe."""
    import torch

    from export.machine import peak_gflops

    return peak_gflops("cpu", torch.get_num_threads())[precision]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--full", action="store_true", help="every training image")
    p.add_argument("--demo", action="store_true", help="the quick pipeline (make demo)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also time bench/dataloader_trainer.py on the same images, from process start",
    )
    p.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/distill").expanduser())
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("argv", nargs="*", help="a distill command line (after --)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.argv:
            argv = args.argv
        elif args.demo:
            argv = demo_command(args.data, out, args.cache_dir)
        else:
            size = None if args.full else args.train_size
            argv = one_epoch_command(args.data, out, args.cache_dir, size)
        wall, rss, records, output = run(argv, Path(tmp) / "timings.jsonl")
    print("distill " + " ".join(argv))
    for what, seconds in split(wall, records):
        print(f"  {what:<40} {seconds:8.2f} s  {seconds / wall:6.1%}")
    print(f"  {'total, process start to exit':<40} {wall:8.2f} s")
    print("by kind of work: " + ", ".join(f"{k} {v:.1f} s" for k, v in totals(records).items()))
    print(f"peak resident memory: {rss:.2f} GB")
    report: dict = {"argv": argv, "wall_s": wall, "peak_rss_gb": rss}
    report["split_s"] = dict(split(wall, records))
    report["by_kind_s"] = totals(records)
    speeds = [float(w) for w in _images_per_s(output)]
    if speeds and not args.demo and not args.argv:
        precision = "bf16" if ", bf16" in output else "fp32"  # the plan line says which
        gflops, peak = step_gflops("resnet18-quarter", speeds[-1]), cpu_peak_gflops(precision)
        print(
            f"training step: {speeds[-1]:,.0f} images/s = {gflops:.0f} GFLOP/s, "
            f"{gflops / peak:.0%} of the CPU's measured {precision} matmul peak "
            f"({peak:.0f} GFLOP/s)"
        )
        report |= {"images_per_s": speeds[-1], "gflops": gflops, "peak_gflops": peak}
    if args.compare and not args.demo and not args.argv:
        reference = dataloader_seconds(args.data, None if args.full else args.train_size)
        print(
            f"torchvision DataLoader trainer, the same epoch from process start to exit: "
            f"{reference:.2f} s; distill is {reference / wall:.2f}x faster (SPEC 11: >= 2.5x)"
        )
        report |= {"dataloader_wall_s": reference, "vs_dataloader": reference / wall}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def dataloader_seconds(data: Path, train_size: int | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "bench" / "dataloader_trainer.py"), "--data", str(data)]
        cmd += ["--out", str(Path(tmp) / "m.pt")]
        cmd += ["--train-size", str(train_size or 45_000)]
        t0 = time.time()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.time() - t0


def _images_per_s(output: str) -> list[str]:
    """The img/s of each epoch line ("... 1,234 img/s ...")."""
    words = output.replace(",", "").split()
    return [words[i - 1] for i, w in enumerate(words) if w == "img/s" and i > 0]


if __name__ == "__main__":
    main()
