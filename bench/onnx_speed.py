"""onnxruntime vs PyTorch eager on CPU for a 5M student (SPEC 10: >= 2x at batch 1 and 256), and
what each export and session setting is worth.

Each group runs PyTorch eager, the project's graph under the project's session ("distill": what
`distill predict`, `bench` and `eval` use) and a few variants, timed block by block in alternation
in one process (export.timing.measure), so every ratio printed is measured in the same run. The
model is randomly initialised: speed does not depend on the weights' values (random
calibration images for int8, likewise; its accuracy is checked by `distill export onnx --int8`).

    python bench/onnx_speed.py                        # resnet18-5m, batches 1,32,256
    python bench/onnx_speed.py --quick                # fewer runs, for a smoke test
    python bench/onnx_speed.py --arch resnet18-quarter --batch-sizes 1,64 --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from distill.budget import count_macs
from distill.checkpoint import library_versions
from distill.files import atomic_write_text, check_output, temp_dir
from distill.registry import create_model
from export.engines import pytorch_engine
from export.graph import OPSET, export_graph
from export.machine import cpu_model, torch_threads
from export.quantize import quantize_int8
from export.runtime import session_options
from export.timing import Timing, measure
from export.wrappers import Normalized

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
Options = Callable[[int], ort.SessionOptions]


def tuned(threads: int) -> ort.SessionOptions:
    return session_options(threads)


def changed(config: dict[str, str] | None = None, **attrs) -> Options:
    """The project's session with some attributes or session config entries changed."""

    def make(threads: int) -> ort.SessionOptions:
        so = session_options(threads)
        for key, value in (config or {}).items():
            so.add_session_config_entry(key, value)
        for key, value in attrs.items():
            setattr(so, key, value)
        return so

    return make


def no_spin(threads: int) -> ort.SessionOptions:
    """The project's session with intra-op spinning off (its own flag: adding the config entry
    again would make onnxruntime warn that it overwrites it)."""
    return session_options(threads, spinning=False)


def ort_defaults(threads: int) -> ort.SessionOptions:
    """onnxruntime as shipped: nothing set (its intra-op pool defaults to the physical cores)."""
    return ort.SessionOptions()


@dataclass(frozen=True)
class Variant:
    name: str
    graph: str  # key of the graphs built by build_graphs
    options: Options = tuned


L = ort.GraphOptimizationLevel
EXTENDED = changed(graph_optimization_level=L.ORT_ENABLE_EXTENDED)
BASIC = changed(graph_optimization_level=L.ORT_ENABLE_BASIC)
DISABLED = changed(graph_optimization_level=L.ORT_DISABLE_ALL)
PARALLEL = changed(execution_mode=ort.ExecutionMode.ORT_PARALLEL)
BLOCK_BASE = changed({"session.dynamic_block_base": "4"})
NO_ARENA = changed(enable_cpu_mem_arena=False, enable_mem_pattern=False)
DAZ = changed({"session.set_denormal_as_zero": "1"})
GROUPS: dict[str, list[Variant]] = {
    "exporter": [
        Variant(f"dynamo exporter, opset {OPSET}, onnxscript optimizer (distill)", "dynamo"),
        Variant("dynamo exporter, optimize=False", "dynamo-noopt"),
        Variant("dynamo exporter, opset 21", "dynamo-opset21"),
        Variant(f"TorchScript exporter, opset {OPSET}, constant folding", "torchscript"),
        Variant("TorchScript exporter, no constant folding", "torchscript-nofold"),
    ],
    "graph optimisation level": [
        Variant("ORT_ENABLE_ALL: + NCHWc layout (distill)", "dynamo"),
        Variant("ORT_ENABLE_EXTENDED: + Conv/Add/ReLU fusions", "dynamo", EXTENDED),
        Variant("ORT_ENABLE_BASIC: constant folding, BN folding", "dynamo", BASIC),
        Variant("ORT_DISABLE_ALL", "dynamo", DISABLED),
    ],
    "threads": [
        Variant("intra-op threads = cores, spinning (distill)", "dynamo"),
        Variant("allow_spinning=0", "dynamo", no_spin),
        Variant("ORT_PARALLEL execution mode", "dynamo", PARALLEL),
        Variant("dynamic_block_base=4", "dynamo", BLOCK_BASE),
        Variant("1 intra-op thread", "dynamo", lambda threads: session_options(1)),
    ],
    "memory": [
        Variant("arena + memory pattern (distill)", "dynamo"),
        Variant("onnxruntime defaults (nothing set)", "dynamo", ort_defaults),
        Variant("no CPU arena, no memory pattern", "dynamo", NO_ARENA),
        Variant("denormals as zero", "dynamo", DAZ),
    ],
    "precision": [
        Variant("fp32 (distill default)", "dynamo"),
        Variant("int8 static QDQ, per-channel (--int8)", "int8"),
        Variant("fp16 weights (--fp16; meant for GPUs)", "fp16"),
    ],
}


def build_graphs(arch: str, folder: Path) -> tuple[dict[str, Path], torch.nn.Module]:
    torch.manual_seed(0)
    reference = Normalized(create_model(arch, 10).eval(), CIFAR_MEAN, CIFAR_STD).eval()
    example = torch.rand(2, 3, 32, 32)
    graphs = {"dynamo": folder / "dynamo.onnx"}
    export_graph(reference, [3, 32, 32], graphs["dynamo"])
    common = {"input_names": ["input"], "output_names": ["logits"], "verbose": False}
    batch = {"x": {0: torch.export.Dim("batch")}}
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        for name, kwargs in {
            "dynamo-noopt": {"dynamo": True, "optimize": False, "opset_version": OPSET},
            "dynamo-opset21": {"dynamo": True, "opset_version": 21},
            "torchscript": {"dynamo": False, "opset_version": OPSET},
            "torchscript-nofold": {"dynamo": False, "opset_version": OPSET,
                                   "do_constant_folding": False},
        }.items():  # fmt: skip
            graphs[name] = folder / f"{name}.onnx"
            shape = (
                {"dynamic_shapes": batch, "external_data": False}
                if kwargs["dynamo"]
                else {"dynamic_axes": axes}
            )
            torch.onnx.export(reference, (example,), str(graphs[name]), **common, **kwargs, **shape)
    graphs["int8"] = folder / "int8.onnx"
    calib = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    quantize_int8(graphs["dynamo"], graphs["int8"], calib)
    graphs["fp16"] = folder / "fp16.onnx"
    half = Normalized(create_model(arch, 10), CIFAR_MEAN, CIFAR_STD, torch.float16)
    half.model.load_state_dict(reference.model.state_dict())
    export_graph(half, [3, 32, 32], graphs["fp16"])
    return graphs, reference


def ort_run(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def check_outputs(sessions: dict[str, ort.InferenceSession], reference, graphs_of) -> None:
    """Every fp32 variant must compute the same function before its speed means anything."""
    x = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        want = reference(torch.from_numpy(x)).numpy()
    for name, session in sessions.items():
        if graphs_of[name] in ("int8", "fp16"):
            continue
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        diff = float(np.abs(got - want).max())
        assert diff < 1e-3 * max(1.0, float(np.abs(want).max())), (name, diff)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18-5m")
    parser.add_argument("--batch-sizes", default="1,32,256")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--groups", default=",".join(GROUPS), help="subset of the groups")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as groups finish, even in a log
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    groups = {g: GROUPS[g] for g in args.groups.split(",")}
    threads = args.threads

    load = os.getloadavg()[0]
    versions = library_versions()
    print(
        f"{args.arch} on {cpu_model()}, {threads} threads for both engines; onnxruntime "
        f"{versions.get('onnxruntime')}, torch {versions.get('torch')}; load average {load:.1f}"
    )
    if load > (os.cpu_count() or 1) * 0.5:
        print("warning: other processes are busy on this machine; ratios will be noisy")

    record: dict = {"arch": args.arch, "threads": threads, "cpu": cpu_model(),
                    "versions": versions, "groups": {}}  # fmt: skip
    pooled: dict[int, dict[str, list[float]]] = {b: {"distill": [], "pytorch": []} for b in sizes}
    if args.json:
        check_output(args.json, True, (".json",), flag="--json")  # before minutes of timing
    with temp_dir("onnx-speed") as tmp, torch_threads(threads):
        graphs, reference = build_graphs(args.arch, tmp)
        torch_eager = pytorch_engine(reference)
        for group, variants in groups.items():
            print(f"\n== {group} ==")
            header = "".join(f"{f'batch {b}':>26}" for b in sizes)
            print(f"{'':<60}{header}")
            sessions = {
                v.name: ort.InferenceSession(
                    str(graphs[v.graph]), v.options(threads), providers=["CPUExecutionProvider"]
                )
                for v in variants
            }
            check_outputs(sessions, reference, {v.name: v.graph for v in variants})
            rows: dict[str, list[str]] = {"PyTorch eager": []} | {v.name: [] for v in variants}
            record["groups"][group] = {}
            for bs in sizes:
                x = np.random.default_rng(0).random((bs, 3, 32, 32), dtype=np.float32)
                runners = {"PyTorch eager": torch_eager.prepare(x)}
                runners |= {name: ort_run(s, x) for name, s in sessions.items()}
                timing = Timing(
                    warmup=2 if bs < 128 else 1,
                    min_runs=3 if args.quick or bs >= 128 else 7,
                    min_seconds=0.3 if args.quick else 1.5,
                    block_seconds=0.25,
                )
                times = measure(runners, timing)
                p50 = {name: float(np.median(t)) for name, t in times.items()}
                base, ref = p50["PyTorch eager"], p50[variants[0].name]
                pooled[bs]["pytorch"] += times["PyTorch eager"]
                pooled[bs]["distill"] += times[variants[0].name]
                for name, t in p50.items():
                    cell = f"{t * 1e3:8.2f} ms"
                    if name != "PyTorch eager":
                        cell += f" {base / t:5.2f}x {ref / t:5.2f}r"
                    rows[name].append(f"{cell:>26}")
                record["groups"][group][bs] = {
                    name: {"p50_ms": p50[name] * 1e3, "runs": len(times[name])} for name in times
                }
            for name, cells in rows.items():
                print(f"{name:<60}{''.join(cells)}")
            del sessions  # free each group's arenas before the next group allocates its own

    print("\nx: PyTorch eager p50 / this p50 (same run); r: distill's session p50 / this p50")
    # Achieved arithmetic rate: how close fp32 already is to the cores' FMA peak bounds what any
    # session setting can still gain.
    flops = 2 * count_macs(create_model(args.arch, 10), (3, 32, 32))
    summary = {}
    for bs in sizes:
        ort_s, torch_s = np.median(pooled[bs]["distill"]), np.median(pooled[bs]["pytorch"])
        summary[bs] = float(torch_s / ort_s)
        print(
            f"batch {bs}: onnxruntime (distill export + session) {summary[bs]:.2f}x PyTorch eager "
            f"(pooled over {len(pooled[bs]['distill'])} runs); fp32 GFLOP/s: onnxruntime "
            f"{flops * bs / ort_s / 1e9:.0f}, PyTorch {flops * bs / torch_s / 1e9:.0f}"
        )
    record["speedup"] = summary
    record["load_average_end"] = os.getloadavg()[0]
    if args.json:
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
