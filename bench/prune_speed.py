"""Does pruning pay on a CPU? Measured latency gain of a model pruned at round_to 8, 16 and 32
to the same parameter budget, next to its MAC reduction, in one run.

SPEC 11 and the issue "Deploy fast on any CPU": a pruned model's measured speed-up at batch 1
should be at least 0.7x its MAC reduction (speed-up / (source MACs / pruned MACs) >= 0.7). Channel
widths that are multiples of 16 or 32 suit the CPU kernels' vector blocks better than multiples
of 8, but a coarser grid leaves the pruner fewer choices; `PruneSettings.round_to` picks one, and
this script measures what each is worth.

The source is a checkpoint, or a freshly initialised architecture when none is given: pruning
speed depends on the channel plan, not on the weights' values (trained weights change which
channels survive, so a trained source gives the plan its own prune would, within one step).
Each round_to prunes the source in one magnitude step (distill.pruning.prune_to_budget) and the
result is rebuilt from its channel plan, as `distill prune` saves it; KD recovery changes
weights only, never speed. Every model runs with its normalisation inside, as deployed, under
PyTorch eager and under onnxruntime (each exported to a temporary ONNX file as `distill bench`
does), at the same thread count. Per batch size all models and engines are timed in alternating
blocks in one run (export.timing.measure), so load from other processes hits them alike.

    python bench/prune_speed.py                         # resnet18-5m, fresh, to half its params
    python bench/prune_speed.py --arch resnet18-half --budget 1.4M
    python bench/prune_speed.py runs/demo/student.pt --budget 450k --json prune_speed.json
    python bench/prune_speed.py --arch resnet18-quarter --seconds 0.1 --batch-sizes 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.budget import count_macs, count_params, format_count, parse_budget
from distill.checkpoint import library_versions, load_checkpoint, model_from_checkpoint
from distill.errors import UserError
from distill.files import atomic_write_text, temp_dir
from distill.pruning import prune_to_budget, rebuild
from distill.registry import create_model
from export.engines import onnxruntime_engine, pytorch_engine
from export.graph import export_graph
from export.machine import cpu_model, torch_threads
from export.timing import Timing, measure
from export.wrappers import Normalized

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
TARGET = 0.7  # speed-up / MAC reduction at batch 1 (SPEC 11)
ENGINES = ("eager", "onnxruntime")


def load_source(args: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """(model, its normalisation and input size, a description) from a checkpoint or an arch."""
    if args.source is not None:
        ckpt = load_checkpoint(args.source)
        model = model_from_checkpoint(ckpt).eval()
        meta = {"mean": ckpt["mean"], "std": ckpt["std"], "input_size": ckpt["input_size"]}
        return model, meta, f"{args.source} ({ckpt['arch']}, trained weights)"
    torch.manual_seed(0)
    model = create_model(args.arch).eval()
    meta = {"mean": CIFAR_MEAN, "std": CIFAR_STD, "input_size": [3, 32, 32]}
    return model, meta, f"{args.arch} (fresh initialisation: speed does not depend on weights)"


def prune_all(
    source: torch.nn.Module, budget: int, round_tos: list[int], input_size: list[int]
) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """{"source", "round_to 8", ...}: the source and each pruned model, rebuilt from its plan;
    notes for round_to values that cannot reach the budget."""
    example = torch.randn(1, *input_size)
    models: dict[str, torch.nn.Module] = {"source": source}
    notes = []
    for r in round_tos:
        try:
            pruned, _ = prune_to_budget(
                source, budget, example_inputs=example, steps=1, importance="magnitude", round_to=r
            )
        except UserError as e:  # the budget is below what this grid can reach
            notes.append(f"round_to {r}: {e}")
            continue
        models[f"round_to {r}"] = rebuild(pruned, example).eval()
    return models, notes


def time_batch(
    modules: dict[str, torch.nn.Module],
    files: dict[str, Path],
    batch: int,
    input_size: list[int],
    threads: int,
    timing: Timing,
) -> dict[tuple[str, str], float]:
    """p50 seconds per (engine, model) at `batch`, every runner alternating with every other."""
    x = np.random.default_rng(0).random((batch, *input_size), dtype=np.float32)
    runners = {}
    for name, module in modules.items():
        runners[("eager", name)] = pytorch_engine(module, "fp32").prepare(x)
        # Spinning off: idle onnxruntime workers would otherwise take the cores the next
        # runner's threads need (export/benchmark.py says more).
        ort = onnxruntime_engine(files[name], "fp32", threads=threads, spinning=False)
        runners[("onnxruntime", name)] = ort.prepare(x)
    times = measure(runners, timing)
    return {key: statistics.median(t) for key, t in times.items()}


def recommend(rows: list[dict[str, Any]], batch: int) -> tuple[int | None, str]:
    """The round_to to use: among those that meet the target on every engine at `batch`, the
    one with the highest geometric-mean speed-up over the engines; when none meets it, the one
    whose worst engine comes closest."""
    scored = []
    for r in rows:
        cells = [r["engines"][e][batch] for e in ENGINES if batch in r["engines"][e]]
        if not cells:
            continue
        worst = min(c["per_mac_reduction"] for c in cells)
        speed = math.exp(statistics.fmean(math.log(c["speedup"]) for c in cells))
        scored.append((r["round_to"], worst, speed))
    if not scored:
        return None, "nothing measured"
    meeting = [s for s in scored if s[1] >= TARGET]
    if meeting:
        best = max(meeting, key=lambda s: s[2])
        why = (
            f"meets {TARGET} on every engine at batch {batch} and is the fastest that does "
            f"(geometric-mean speed-up {best[2]:.2f}x)"
        )
    else:
        best = max(scored, key=lambda s: s[1])
        why = (
            f"none meets {TARGET} at batch {batch}; this one comes closest "
            f"(worst engine {best[1]:.2f})"
        )
    return best[0], why


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", type=Path, help="A checkpoint to prune (.pt).")
    parser.add_argument("--arch", default="resnet18-5m", help="Without a checkpoint: this, fresh.")
    parser.add_argument("--budget", help="Parameter budget, e.g. 2.5M (default: half the source).")
    parser.add_argument("--round-to", default="8,16,32", help="round_to values to compare.")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=1.0, help="Timed seconds per runner.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen
    round_tos = [int(r) for r in args.round_to.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    timing = Timing(min_seconds=args.seconds, probe_seconds=0.0)

    source, meta, what = load_source(args)
    input_size = list(meta["input_size"])
    budget = parse_budget(args.budget) if args.budget else count_params(source) // 2
    load = os.getloadavg()[0]
    versions = library_versions()
    print(
        f"{what}, pruned to {format_count(budget)} parameters; {cpu_model()}, {args.threads} "
        f"threads for both engines; torch {versions.get('torch')}, onnxruntime "
        f"{versions.get('onnxruntime')}; load average {load:.1f}"
    )
    if load > (os.cpu_count() or 1) * 0.5:
        print("warning: other processes are busy on this machine; ratios will be noisy")

    with temp_dir("prune-speed") as tmp, torch_threads(args.threads):
        models, notes = prune_all(source, budget, round_tos, input_size)
        for note in notes:
            print(f"skipped {note}")
        modules = {
            name: Normalized(m, meta["mean"], meta["std"]).eval() for name, m in models.items()
        }
        files = {}
        for i, (name, module) in enumerate(modules.items()):
            files[name] = tmp / f"model{i}.onnx"
            export_graph(module, input_size, files[name])
        p50 = {}
        for batch in sizes:
            print(f"timing batch {batch}: {len(modules)} models x 2 engines, alternating")
            for key, t in time_batch(
                modules, files, batch, input_size, args.threads, timing
            ).items():
                p50[(*key, batch)] = t

    macs = {name: count_macs(m, tuple(input_size)) for name, m in models.items()}
    rows = []
    for name, m in models.items():
        if name == "source":
            continue
        reduction = macs["source"] / macs[name]
        engines: dict[str, dict[int, dict[str, float]]] = {e: {} for e in ENGINES}
        for e in ENGINES:
            for b in sizes:
                speedup = p50[(e, "source", b)] / p50[(e, name, b)]
                engines[e][b] = {
                    "source_ms": p50[(e, "source", b)] * 1e3,
                    "pruned_ms": p50[(e, name, b)] * 1e3,
                    "speedup": speedup,
                    "per_mac_reduction": speedup / reduction,
                }
        rows.append(
            {
                "round_to": int(name.split()[-1]),
                "params": count_params(m),
                "macs": macs[name],
                "mac_reduction": reduction,
                "engines": engines,
            }
        )

    print_table(models, macs, rows, sizes, p50)
    best, why = recommend(rows, 1 if 1 in sizes else sizes[0])
    if best is not None:
        print(f"recommended round_to: {best} ({why})")
    result = {
        "model": what,
        "budget": budget,
        "threads": args.threads,
        "cpu": cpu_model(),
        "versions": versions,
        "timing": {"min_seconds": args.seconds, "order": "all runners alternate in blocks"},
        "source": {"params": count_params(source), "macs": macs["source"]},
        "rows": rows,
        "skipped": notes,
        "recommended_round_to": best,
        "why": why,
        "target": TARGET,
        "load_average_end": os.getloadavg()[0],
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


def print_table(
    models: dict[str, torch.nn.Module],
    macs: dict[str, int],
    rows: list[dict[str, Any]],
    sizes: list[int],
    p50: dict[tuple[str, str, int], float],
) -> None:
    cols = [(e, b) for b in sizes for e in ENGINES]
    head = "".join(f"{f'{e} b{b}':>20}" for e, b in cols)
    print(f"\n{'':<12}{'params':>11}{'MACs':>9}{'MAC red.':>10}{head}")
    src = "".join(f"{p50[(e, 'source', b)] * 1e3:>17.2f} ms" for e, b in cols)
    print(
        f"{'source':<12}{count_params(models['source']):>11,}"
        f"{macs['source'] / 1e6:>8.1f}M{1:>9.2f}x{src}"
    )
    for r in rows:
        measured = [r["engines"][e][b] for e, b in cols]
        cells = "".join(f"{c['speedup']:>12.2f}x ({c['per_mac_reduction']:.2f})" for c in measured)
        print(
            f"{'round_to ' + str(r['round_to']):<12}{r['params']:>11,}{r['macs'] / 1e6:>8.1f}M"
            f"{r['mac_reduction']:>9.2f}x{cells}"
        )
    print(
        "source row: p50 latency; pruned rows: measured speed-up over the source (p50 / p50, "
        f"same run) and, in brackets, speed-up / MAC reduction (target >= {TARGET} at batch 1)"
    )


if __name__ == "__main__":
    main()
