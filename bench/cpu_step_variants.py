"""What each way of running a training step, and a KD teacher's forward pass, is worth on this
CPU: one model, one batch, the variants timed in alternating blocks (export.timing.measure) in
one process, so the host's drift hits them alike. Median images/s and the ratio to distill's
default (eager, channels_last).

  training step  eager contiguous | eager channels_last (the default) | batch 128 and 512 |
                 torch.compile (Inductor CPU), contiguous and channels_last (--compile)
  teacher (KD)   eager contiguous | eager channels_last (the default) | conv+BN folded
                 (torch.fx) | TorchScript freeze + optimize_for_inference (folding and oneDNN
                 conv+ReLU fusion) | torch.compile (--compile)
  allocator      (--allocator) the default step in two child processes, glibc's defaults
                 against freed blocks kept (mallopt: up to 32 MiB from the heap, no trimming),
                 A B A B: images/s, page faults per step and peak resident memory
  profile        (--profile) where the default step's time goes (torch.profiler, self time by
                 kind of op) and each convolution's achieved GFLOP/s, forward and backward,
                 against the CPU's measured matmul peak

    python bench/cpu_step_variants.py                  # about 2 minutes on 2 cores
    python bench/cpu_step_variants.py --compile        # + compiled rows (a C++ compiler; minutes)
    python bench/cpu_step_variants.py --allocator      # + the allocator rows
    python bench/cpu_step_variants.py --profile        # + the step's profile
    python bench/cpu_step_variants.py --smoke          # every row at toy sizes, seconds

Precision is the training's own (distill.device.choose_precision: bf16 where the CPU has it
natively, fp32 elsewhere). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.device import autocast, choose_precision  # noqa: E402
from distill.optim import make_optimizer  # noqa: E402
from distill.recipes import get_recipe  # noqa: E402
from distill.registry import create_model  # noqa: E402
from export.timing import Timing, measure  # noqa: E402

CPU = torch.device("cpu")
DEFAULT = "eager, channels_last"


def batch(size: int, channels_last: bool, image: int) -> torch.Tensor:
    x = torch.randn(size, 3, image, image)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def trainer(arch: str, size: int, channels_last: bool, compiled: bool, image: int):
    """One step of the `quick` recipe (its optimizer, lr, smoothing and precision) on a fresh
    model and a fixed batch, as a callable."""
    torch.manual_seed(0)
    recipe = get_recipe("quick")
    model = create_model(arch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, recipe, recipe.lr_at(size))
    net = torch.compile(model) if compiled else model
    x, y = batch(size, channels_last, image), torch.randint(0, 10, (size,))
    precision = choose_precision(CPU, recipe.amp)

    def step() -> None:
        with autocast(CPU, precision):
            loss = F.cross_entropy(net(x).float(), y, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def teacher(arch: str, size: int, channels_last: bool, how: str, image: int):
    """The frozen teacher's inference forward on a fixed batch, as a callable."""
    torch.manual_seed(0)
    model = create_model(arch).eval().requires_grad_(False)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # A trained network's statistics, roughly: folding the defaults (0, 1) would prove little.
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.2, 0.2)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = batch(size, channels_last, image)
    if how == "folded":
        model = fuse(model).to(memory_format=torch.channels_last)
    elif how == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
    elif how == "compiled":
        model = torch.compile(model)
    precision = choose_precision(CPU, amp=True)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast(CPU, precision):
            return model(x).float()

    return forward


def first_call(make: Callable[[], Callable[[], object]]) -> tuple[Callable[[], object], float]:
    """(the runner, seconds of its first call): a compiled runner compiles there."""
    run = make()
    start = time.perf_counter()
    run()
    return run, time.perf_counter() - start


def agreement(forwards: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float]:
    """Largest absolute logit difference of each forward from the default's: a faster variant
    must compute the same function (up to float rounding) to count."""
    ref = forwards[DEFAULT]()
    return {n: float((f() - ref).abs().max()) for n, f in forwards.items()}


def table(title: str, makers: dict[str, tuple[Callable, int]], timing: Timing) -> list[dict]:
    """Build each variant (timing its first call), time them all, print and return the rows."""
    built = {name: first_call(make) for name, (make, _) in makers.items()}
    runners = {name: run for name, (run, _) in built.items()}
    seconds = measure(runners, timing)
    rate = {n: makers[n][1] / statistics.median(s) for n, s in seconds.items()}
    same = agreement(runners) if title.startswith("teacher") else {}
    print(f"\n{title}")
    head = f"{'images/s':>9s} {'vs default':>10s} {'first call':>10s} {'runs':>5s}"
    print(f"  {'variant':44s} {head}")
    rows = []
    for name in runners:
        row = {"table": title, "variant": name, "images_per_s": rate[name],
               "vs_default": rate[name] / rate[DEFAULT], "first_call_s": built[name][1],
               "runs": len(seconds[name])}  # fmt: skip
        if same:
            row["max_abs_diff"] = same[name]
        rows.append(row)
        print(f"  {name:44s} {rate[name]:9.0f} {row['vs_default']:9.2f}x "
              f"{row['first_call_s']:9.1f}s {row['runs']:5d}")  # fmt: skip
    if same:
        diffs = ", ".join(f"{n} {d:.1e}" for n, d in same.items() if n != DEFAULT)
        print(f"  largest logit difference from the default: {diffs}")
    return rows


def keep_freed_memory() -> None:
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's own ceiling for its adaptive one
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: never trim the heap's top


def allocator_child(args: argparse.Namespace) -> None:
    """One process, one allocator setting: the default step, timed; prints a JSON line."""
    if args.keep_freed:
        keep_freed_memory()
    step = trainer(args.arch, args.batch_size, True, False, args.image)
    for _ in range(args.warmup_steps):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "images_per_s": args.steps * args.batch_size / seconds,
        "faults_per_step": (usage.ru_minflt - faults) / args.steps,
        "peak_gb": usage.ru_maxrss / 1024**2,
    }))  # fmt: skip


def allocator_rows(args: argparse.Namespace) -> list[dict]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        print("\nallocator: glibc (Linux) only; skipped")
        return []
    base = [sys.executable, __file__, "--allocator-child", "--arch", args.arch,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--warmup-steps", str(args.warmup_steps), "--image", str(args.image)]  # fmt: skip
    runs: dict[str, list[dict]] = {"glibc defaults": [], "freed blocks kept": []}
    for _ in range(args.pairs):
        for name, extra in (("glibc defaults", []), ("freed blocks kept", ["--keep-freed"])):
            out = subprocess.run(base + extra, capture_output=True, text=True, check=True)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nallocator ({args.pairs} alternating pairs of processes, {args.steps} steps each)")
    rows = []
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        rows.append({"table": "allocator", "variant": name, **med})
        print(
            f"  {name:20s} {med['images_per_s']:7.0f} images/s  "
            f"{med['faults_per_step']:8.0f} page faults/step  peak {med['peak_gb']:.2f} GB"
        )
    pairs = zip(runs["glibc defaults"], runs["freed blocks kept"], strict=True)
    ratios = [kept["images_per_s"] / default["images_per_s"] for default, kept in pairs]
    print(f"  kept / defaults, pair by pair: {' '.join(f'{r:.2f}' for r in ratios)}")
    return rows


# Self time by kind of op: a leaf op's own time, so nothing is counted twice. Ops run inside the
# optimizer's step (its per-parameter add_ and mul_ on a CPU) count as the optimizer's.
OP_KINDS = {
    "convolution forward": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward"),
    "convolution backward": ("aten::convolution_backward", "aten::mkldnn_convolution_backward"),
    "batch norm forward": ("aten::native_batch_norm", "aten::_native_batch_norm_legit"),
    "batch norm backward": ("aten::native_batch_norm_backward",),
    "ReLU and residual adds": ("aten::clamp_min", "aten::relu", "aten::threshold_backward",
                               "aten::add", "aten::add_"),
}  # fmt: skip
OTHER = "other (loss, pooling, allocation, autograd)"


def op_kind(event) -> str:
    """The kind of a profiler event (torch.autograd.profiler.FunctionEvent)."""
    up = event
    while up is not None:
        if up.name.startswith("Optimizer."):
            return "optimizer"
        up = up.cpu_parent
    return next((k for k, names in OP_KINDS.items() if event.name in names), OTHER)


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> dict[tuple, tuple[str, float, float]]:
    """(input shape, weight shape) -> (label, forward FLOPs, backward FLOPs) of each convolution,
    from one forward pass. Backward computes the input's gradient and the weight's, twice the
    forward's work, except where the input needs no gradient (the stem: the weight's only)."""
    found: dict[tuple, tuple[str, float, float]] = {}

    def hook(conv: torch.nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x_in = inputs[0]
        w = conv.weight
        fwd = 2.0 * out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        n, c, h, wd = x_in.shape
        label = f"{c}x{h}x{wd} -> {w.shape[0]}, {w.shape[2]}x{w.shape[3]} stride {conv.stride[0]}"
        bwd = fwd * (2 if x_in.requires_grad else 1)
        found[(tuple(x_in.shape), tuple(w.shape))] = (label, fwd, bwd)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    model(x)  # with autograd on, so each input says whether it needs a gradient; no backward
    for h in handles:
        h.remove()
    return found


def profile_rows(args: argparse.Namespace) -> list[dict]:
    """Where the default step's time goes, by kind of op, and each convolution's GFLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    from export.machine import peak_gflops

    torch.manual_seed(0)
    model = create_model(args.arch).to(memory_format=torch.channels_last)
    flops = conv_flops(model, batch(args.batch_size, True, args.image))
    step = trainer(args.arch, args.batch_size, True, False, args.image)
    for _ in range(args.warmup_steps):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.profile_steps):
            step()
    events = prof.events()
    total = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = {}
    convs: dict[str, dict[str, float]] = {}
    for e in events:
        kind = op_kind(e)
        by_kind[kind] = by_kind.get(kind, 0.0) + e.self_cpu_time_total
        if not kind.startswith("convolution"):
            continue
        shapes = [tuple(s) for s in e.input_shapes if s]
        # forward: (input, weight, ..); backward: (grad_output, input, weight, ..)
        forward = kind.endswith("forward")
        key = tuple(shapes[:2]) if forward else tuple(shapes[1:3])
        if key not in flops:
            continue
        label, fwd_flops, bwd_flops = flops[key]
        row = convs.setdefault(label, dict.fromkeys(("calls", "fwd_us", "fwd", "bwd_us", "bwd"), 0))
        side = "fwd" if forward else "bwd"
        row[f"{side}_us"] += e.self_cpu_time_total
        row[side] += fwd_flops if forward else bwd_flops
        row["calls"] += forward
    # The peak of the precision the step's convolutions run in: a bf16 step measured against
    # the fp32 peak read above 100% on a Zen 5.
    precision = choose_precision(CPU, get_recipe("quick").amp).name
    peak = peak_gflops("cpu", torch.get_num_threads())[precision]
    step_ms = total / args.profile_steps / 1000
    print(f"\nprofile ({args.profile_steps} steps of the default, {step_ms:.0f} ms of op time a "
          f"step; self time of each op)")  # fmt: skip
    rows = []
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        rows.append({"table": "profile", "variant": kind, "share": us / total})
        print(f"  {kind:44s} {100 * us / total:5.1f}%")
    print(
        f"\nconvolutions by shape (batch {args.batch_size}): achieved GFLOP/s, forward and "
        f"backward, against the CPU's {precision} matmul peak measured now ({peak:.0f} GFLOP/s)"
    )
    print(f"  {'input -> output channels, kernel':38s} {'calls':>5s} {'of step':>8s} "
          f"{'forward':>8s} {'backward':>9s}")  # fmt: skip
    for label, r in sorted(convs.items(), key=lambda kv: -(kv[1]["fwd_us"] + kv[1]["bwd_us"])):
        fwd = r["fwd"] / r["fwd_us"] / 1e3 if r["fwd_us"] else 0.0
        bwd = r["bwd"] / r["bwd_us"] / 1e3 if r["bwd_us"] else 0.0
        share = (r["fwd_us"] + r["bwd_us"]) / total
        calls = r["calls"] // args.profile_steps
        rows.append(
            {
                "table": "profile: convolutions",
                "variant": label,
                "share": share,
                "calls": calls,
                "forward_gflops": fwd,
                "backward_gflops": bwd,
                "peak_gflops": peak,
                "precision": precision,
            }
        )
        print(f"  {label:38s} {calls:5d} {100 * share:7.1f}% {fwd:8.0f} {bwd:9.0f}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet18-quarter", help="the student and the teacher")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="add torch.compile rows")
    p.add_argument("--allocator", action="store_true", help="add the allocator rows")
    p.add_argument("--pairs", type=int, default=3, help="allocator: process pairs")
    p.add_argument("--steps", type=int, default=20, help="allocator: timed steps per process")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="add the step's profile")
    p.add_argument("--profile-steps", type=int, default=3, help="profile: steps profiled")
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per variant")
    p.add_argument("--smoke", action="store_true", help="toy sizes: the plumbing, not a figure")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--allocator-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-freed", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.batch_size, args.image, args.seconds = 8, 16, 0.05
        args.pairs, args.steps, args.warmup_steps, args.profile_steps = 1, 2, 1, 1
    if args.allocator_child:
        return allocator_child(args)
    timing = Timing(warmup=1, min_runs=3, min_seconds=args.seconds, block_seconds=1.0)
    b, img, arch = args.batch_size, args.image, args.arch
    print(f"{arch}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, {choose_precision(CPU, True).name}")  # fmt: skip

    def train(size: int, cl: bool, compiled: bool = False) -> tuple[Callable, int]:
        return (lambda: trainer(arch, size, cl, compiled, img)), size

    def forward(cl: bool, how: str) -> tuple[Callable, int]:
        return (lambda: teacher(arch, b, cl, how, img)), b

    steps = {
        "eager, contiguous": train(b, False),
        DEFAULT: train(b, True),
        f"eager, channels_last, batch {b // 2}": train(b // 2, True),
        f"eager, channels_last, batch {b * 2}": train(b * 2, True),
    }
    forwards = {
        "eager, contiguous": forward(False, "eager"),
        DEFAULT: forward(True, "eager"),
        "conv+BN folded (torch.fx), channels_last": forward(True, "folded"),
        "TorchScript freeze + optimize_for_inference": forward(True, "torchscript"),
    }
    if args.compile:
        for cl, label in ((False, "contiguous"), (True, "channels_last")):
            steps[f"torch.compile, {label}"] = train(b, cl, compiled=True)
            forwards[f"torch.compile, {label}"] = forward(cl, "compiled")
    rows = table("training step", steps, timing)
    rows += table("teacher forward (KD)", forwards, timing)
    if args.allocator:
        rows += allocator_rows(args)
    if args.profile:
        rows += profile_rows(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    # A fresh compile cache: a warm one would hide what compiling costs a first run.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    main()
