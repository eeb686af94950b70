"""Latency of a pruned model against its unpruned source on CPU, next to the MAC reduction.

SPEC 10: a pruned model's measured speed-up should be at least 0.7x its MAC reduction
(speed-up / (MACs before / MACs after) >= 0.7). Measured in PyTorch eager and, where the export
package is present, in onnxruntime. Every engine and batch size warms up, then the two models are
timed in alternating rounds of one call each by default (so load from other processes on a shared
machine hits both alike) and the median is kept.

Usage:
  python bench/prune_speed.py runs/p.pt                      # source from the pruning record
  python bench/prune_speed.py runs/p.pt --source runs/s.pt
  python bench/prune_speed.py --arch resnet18-half --budget 1.4M   # random weights, pruned here
Options: --batch-sizes 1,32  --threads N  --rounds 25  --runs 1  --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from distill.budget import count_macs, count_params, parse_budget
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.prune import prune_to_budget
from distill.registry import create_model


def load_pair(args: argparse.Namespace) -> tuple[nn.Module, nn.Module, list[int], str]:
    """(unpruned, pruned, input size, description) from checkpoints or a registered arch."""
    if args.pruned is None:
        torch.manual_seed(0)
        source = create_model(args.arch).eval()
        example = torch.randn(1, 3, 32, 32)
        pruned, _ = prune_to_budget(source, parse_budget(args.budget), example_inputs=example)
        return source, pruned.eval(), [3, 32, 32], f"{args.arch} (random init) -> {args.budget}"
    ckpt = load_checkpoint(args.pruned)
    source_path = args.source or (ckpt.get("pruning") or {}).get("source", {}).get("path")
    if source_path is None:
        sys.exit(f"{args.pruned} records no source; pass --source")
    source = model_from_checkpoint(load_checkpoint(source_path))
    return (
        source,
        model_from_checkpoint(ckpt),
        ckpt["input_size"],
        f"{source_path} -> {args.pruned}",
    )


def onnx_runner(model: nn.Module, input_size: list[int], x: torch.Tensor, threads: int, tmp: Path):
    """An onnxruntime runner for `model`, or None when the export package is not installed."""
    try:
        from export.onnx import export_graph
        from export.runtime import make_session
    except ImportError:
        return None
    path = tmp / f"{id(model)}.onnx"
    export_graph(model, input_size, path)
    session = make_session(path, threads=threads)
    name, feed = session.get_inputs()[0].name, x.numpy()
    return lambda: session.run(None, {name: feed})


def eager_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def time_pair(
    runners: dict[str, Callable[[], None]], *, warmup: int, rounds: int, runs: int
) -> dict[str, float]:
    """Median seconds per call of each runner: warm-up, then `rounds` alternating blocks of
    `runs` calls each."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(runs):
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pruned", nargs="?", type=Path, help="A pruned checkpoint (.pt).")
    parser.add_argument("--source", type=Path, help="Its unpruned source (default: recorded).")
    parser.add_argument("--arch", default="resnet18-half", help="Without a checkpoint: prune this.")
    parser.add_argument("--budget", default="1.4M", help="Without a checkpoint: to this budget.")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--runs", type=int, default=1, help="Calls per model per round.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    source, pruned, input_size, what = load_pair(args)
    macs = {
        "source": count_macs(source, tuple(input_size)),
        "pruned": count_macs(pruned, tuple(input_size)),
    }
    params = {"source": count_params(source), "pruned": count_params(pruned)}
    mac_ratio = macs["source"] / macs["pruned"]
    print(f"{what}  ({args.threads} threads, torch {torch.__version__})")
    print(
        f"params {params['source']:,} -> {params['pruned']:,}; "
        f"MACs {macs['source'] / 1e6:.1f}M -> {macs['pruned'] / 1e6:.1f}M ({mac_ratio:.2f}x fewer)"
    )
    print(
        f"{'engine':<12}{'batch':>6}{'source ms':>11}{'pruned ms':>11}{'speed-up':>10}{'/MACs':>8}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            x = torch.rand(batch, *input_size)
            engines = {
                "eager": {
                    k: eager_runner(m, x) for k, m in (("source", source), ("pruned", pruned))
                }
            }
            ort = {
                k: onnx_runner(m, input_size, x, args.threads, Path(tmp))
                for k, m in (("source", source), ("pruned", pruned))
            }
            if all(ort.values()):
                engines["onnxruntime"] = ort
            for engine, runners in engines.items():
                t = time_pair(runners, warmup=args.warmup, rounds=args.rounds, runs=args.runs)
                speedup = t["source"] / t["pruned"]
                row = {
                    "engine": engine,
                    "batch": batch,
                    "source_ms": t["source"] * 1e3,
                    "pruned_ms": t["pruned"] * 1e3,
                    "speedup": speedup,
                    "speedup_per_mac_reduction": speedup / mac_ratio,
                }
                rows.append(row)
                print(
                    f"{engine:<12}{batch:>6}{row['source_ms']:>11.2f}{row['pruned_ms']:>11.2f}"
                    f"{speedup:>9.2f}x{row['speedup_per_mac_reduction']:>8.2f}"
                )
    # Compute-bound at the largest batch: there the MACs are what the time is spent on (batch 1
    # on a small model is mostly per-layer overhead, which pruning widths does not remove).
    largest = max(r["batch"] for r in rows)
    for r in rows:
        if r["batch"] == largest:
            verdict = "meets" if r["speedup_per_mac_reduction"] >= 0.7 else "misses"
            print(
                f"{r['engine']} at batch {largest}: speed-up / MAC reduction "
                f"{r['speedup_per_mac_reduction']:.2f} ({verdict} the 0.7 target)"
            )
    result = {
        "model": what,
        "threads": args.threads,
        "params": params,
        "macs": macs,
        "mac_ratio": mac_ratio,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
