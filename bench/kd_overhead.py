"""What distillation and its companions cost a student's training step, measured in one run.

Variants of one training step (forward, loss, backward, optimizer step) on the same student and
batch, under the training's own precision (distill.device.choose_precision) and memory format
(the recipes' channels_last, on CPUs and GPUs alike, as `fit` uses it):

  labels  cross-entropy on labels alone: the baseline every ratio is divided by
  hinton  Hinton KD against the teacher (its forward pass in inference mode, no backward)
  dkd     decoupled KD against the same teacher (same teacher cost, a different loss)
  ema     labels plus the EMA-of-weights update `fit` runs after each step (recipe ema_decay)

The variants run in alternating blocks of `--steps` steps (export.timing.measure), so load from
other processes hits them alike; each block ends with a synchronisation on CUDA. A training step
is about three forwards, so KD's ratio should land near 1 + teacher MACs / (3 x student MACs).

    python bench/kd_overhead.py                                    # tiny, CPU, 1 thread
    python bench/kd_overhead.py --variants labels,hinton,dkd,ema --steps 2 --repeats 2
    python bench/kd_overhead.py --student resnet18-5m --teacher resnet34 \\
        --batch-size 512 --device cuda --steps 20 --variants labels,hinton,dkd,ema
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from distill.budget import count_macs, count_params
from distill.data.loader import Batch
from distill.device import choose_precision, configure_for_training, resolve_device
from distill.kd.objective import KDObjective
from distill.kd.table import training_step
from distill.losses import CrossEntropy
from distill.optim import EMA
from distill.recipes import get_recipe
from distill.registry import create_model
from distill.settings import KDSettings, resolve_kd
from distill.train_setup import Objective
from export.timing import Timing, measure

VARIANTS = ("labels", "hinton", "dkd", "ema")
EMA_DECAY = 0.9995  # the standard recipe's; the cost does not depend on it


def step_runner(
    student: torch.nn.Module,
    objective: Objective,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    precision,
    ema: EMA | None = None,
) -> Callable[[], None]:
    """A call that runs `steps` training steps the way `train_one_epoch` does and returns once
    they have finished (a sync point on CUDA: kernels run asynchronously)."""
    batch = Batch(images, labels, torch.arange(len(labels), device=images.device))
    after = (lambda: ema.update(student)) if ema is not None else None
    return training_step(student, objective, batch, optimizer, steps, precision, after)


def measure_variants(
    student_arch: str = "resnet18-quarter",
    teacher_arch: str = "resnet18-half",
    *,
    variants: tuple[str, ...] = ("labels", "hinton"),
    batch_size: int = 64,
    steps: int = 5,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: bool = True,
) -> dict[str, Any]:
    """Seconds per step of each variant, measured in one run; ratios to the labels-only step."""
    unknown = set(variants) - set(VARIANTS)
    if unknown or "labels" not in variants:
        raise SystemExit(f"--variants must include labels and come from {', '.join(VARIANTS)}")
    dev = resolve_device(device)
    configure_for_training(dev)  # cuDNN autotuning and TF32, as in training
    precision = choose_precision(dev, amp)
    cl = get_recipe("quick").channels_last  # every recipe's default, on every device
    memory_format = torch.channels_last if cl else torch.contiguous_format
    torch.manual_seed(0)
    student = create_model(student_arch)
    teacher = create_model(teacher_arch)
    # Counted on the CPU before the objective freezes the teacher (count_params counts trainable
    # parameters only).
    sizes = {"student_params": count_params(student), "teacher_params": count_params(teacher)}
    s_macs, t_macs = count_macs(student), count_macs(teacher)
    student = student.to(dev, memory_format=memory_format).train()
    teacher = teacher.to(dev, memory_format=memory_format)
    images = torch.randn(batch_size, 3, 32, 32, device=dev).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def kd(method: str) -> KDObjective:
        # Warm-up epochs change a scalar weight only, not the work: resolve for a 1-epoch run.
        settings = resolve_kd(KDSettings(method=method), 1, 10)
        return KDObjective(student, (teacher,), settings, input_size=(3, 32, 32),
                           precision=precision)  # fmt: skip

    def runner(name: str) -> Callable[[], None]:
        objective = kd(name) if name in ("hinton", "dkd") else CrossEntropy()
        ema = EMA(student, EMA_DECAY) if name == "ema" else None
        return step_runner(student, objective, images, labels, optimizer, steps, precision, ema)

    runners = {name: runner(name) for name in variants}
    # One block = one call of `steps` steps; min_seconds 0: exactly `repeats` blocks each.
    timing = Timing(warmup=warmup, min_runs=repeats, max_runs=repeats, min_seconds=0.0)
    times = measure(runners, timing)
    per_step = {name: statistics.median(t) / steps for name, t in times.items()}
    base = per_step["labels"]
    return {
        "student": student_arch,
        "teacher": teacher_arch,
        **sizes,
        "precision": precision.name,
        "channels_last": memory_format == torch.channels_last,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "steps_per_block": steps,
        "blocks": repeats,
        "ms_per_step": {k: v * 1e3 for k, v in per_step.items()},
        "images_per_s": {k: batch_size / v for k, v in per_step.items()},
        "ratio_to_labels": {k: v / base for k, v in per_step.items()},
        "kd_ratio_from_macs": 1 + t_macs / (3 * s_macs),
        "torch": torch.__version__,
    }


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(row name, result) pairs: the ratios this run measured."""
    ratio, ms = r["ratio_to_labels"], r["ms_per_step"]
    rows = []
    if "hinton" in ratio:
        rows.append(
            (
                f"KD step, {r['teacher']} teacher",
                f"{ratio['hinton']:.2f}x the labels-only step ({ms['hinton']:.1f} vs "
                f"{ms['labels']:.1f} ms, batch {r['batch_size']}); MAC estimate "
                f"{r['kd_ratio_from_macs']:.2f}x",
            )
        )
    if "dkd" in ratio:
        vs = f"; {ratio['dkd'] / ratio['hinton']:.2f}x Hinton's" if "hinton" in ratio else ""
        rows.append(("DKD step", f"{ratio['dkd']:.2f}x the labels-only step{vs}"))
    if "ema" in ratio:
        extra = ms["ema"] - ms["labels"]
        rows.append(
            ("EMA of weights", f"{ratio['ema']:.3f}x the step without EMA ({extra:+.2f} ms/step)")
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--student", default="resnet18-quarter")
    p.add_argument("--teacher", default="resnet18-half")
    p.add_argument("--variants", default="labels,hinton", help=f"from {','.join(VARIANTS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed blocks per variant")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (keep it low when shared)")
    p.add_argument("--fp32", action="store_true", help="no autocast (default: as training)")
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")
    p.add_argument("--rows", action="store_true", help="also print 'row<TAB>name<TAB>result'")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    r = measure_variants(
        args.student,
        args.teacher,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        batch_size=args.batch_size,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        amp=not args.fp32,
    )
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        layout = ", channels_last" if r["channels_last"] else ""
        print(
            f"{r['student']} ({r['student_params']:,} params), teacher {r['teacher']} "
            f"({r['teacher_params']:,}), batch {r['batch_size']}, {r['device']}, "
            f"{r['threads']} thread(s), {r['precision']}{layout}; "
            f"{r['blocks']} blocks of {r['steps_per_block']} steps per variant"
        )
        for name, ms in r["ms_per_step"].items():
            print(
                f"  {name:<7} {ms:8.2f} ms/step  {r['images_per_s'][name]:8.0f} img/s  "
                f"{r['ratio_to_labels'][name]:5.2f}x labels"
            )
        for name, text in summary_rows(r):
            print(f"{name}: {text}")
    if args.rows:
        for name, text in summary_rows(r):
            print(f"row\t{name}\t{text}")


if __name__ == "__main__":
    main()
