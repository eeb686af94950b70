"""What a teacher costs a student: training-step time with distillation vs from labels alone.

Both steps run in the same process on the same batch, interleaved block by block (so a noisy
neighbour slows both alike), after a warm-up; the ratio of their medians is printed. The extra
cost is the teacher's forward pass (no backward), so the ratio should land near
1 + teacher MACs / (3 x student MACs): a training step is about three forwards.

    python bench/kd_overhead.py                                    # tiny, CPU, 1 thread
    python bench/kd_overhead.py --student resnet18-5m --teacher resnet34 \\
        --batch-size 256 --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch
from torch import nn

from distill.budget import count_macs, count_params
from distill.losses import DistillationObjective, KDConfig
from distill.train import CrossEntropy, Objective, autocast, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels are asynchronous: time their completion


def time_steps(
    student: nn.Module,
    objective: Objective,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    steps: int,
    amp: bool,
) -> float:
    """Seconds per training step (forward, loss, backward, update), averaged over `steps`."""
    _sync(images.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(images.device, amp):
            loss = objective(student(images), labels, images, 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(images.device)
    return (time.perf_counter() - t0) / steps


def measure(
    student_arch: str = "resnet18-quarter",
    teacher_arch: str = "resnet18-half",
    *,
    batch_size: int = 64,
    steps: int = 5,
    repeats: int = 3,
    warmup: int = 2,
    device: str = "cpu",
    kd: str = "hinton",
    amp: bool = True,
    channels_last: bool = True,
) -> dict[str, Any]:
    from distill.registry import create_model

    dev = resolve_device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    student = create_model(student_arch).to(dev, memory_format=memory_format).train()
    teacher = create_model(teacher_arch).to(dev, memory_format=memory_format)
    images = torch.randn(batch_size, 3, 32, 32, device=dev).to(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch_size,), device=dev)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    # Counted before the objective freezes the teacher (count_params counts trainable ones).
    sizes = {"student_params": count_params(student), "teacher_params": count_params(teacher)}
    s_macs, t_macs = count_macs(student), count_macs(teacher)
    objectives = {
        "labels": CrossEntropy(),
        "kd": DistillationObjective((teacher,), KDConfig.create(kd), amp=amp),
    }
    for objective in objectives.values():
        time_steps(student, objective, images, labels, optimizer, warmup, amp)
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for _ in range(repeats):  # interleaved: both see the same machine load
        for name, objective in objectives.items():
            seconds = time_steps(student, objective, images, labels, optimizer, steps, amp)
            times[name].append(seconds)
    plain, with_kd = statistics.median(times["labels"]), statistics.median(times["kd"])
    return {
        "student": student_arch,
        "teacher": teacher_arch,
        **sizes,
        "kd": kd,
        "bf16_autocast": isinstance(autocast(dev, amp), torch.autocast),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "ms_per_step_labels": plain * 1e3,
        "ms_per_step_kd": with_kd * 1e3,
        "images_per_s_labels": batch_size / plain,
        "images_per_s_kd": batch_size / with_kd,
        "ratio": with_kd / plain,
        "expected_ratio_from_macs": 1 + t_macs / (3 * s_macs),
        "torch": torch.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--student", default="resnet18-quarter")
    p.add_argument("--teacher", default="resnet18-half")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per block")
    p.add_argument("--repeats", type=int, default=3, help="interleaved blocks per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--kd", default="hinton", choices=["hinton", "dkd"])
    p.add_argument("--threads", type=int, default=1, help="CPU threads (keep it low when shared)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast (default: as training)")
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    r = measure(
        args.student,
        args.teacher,
        batch_size=args.batch_size,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        kd=args.kd,
        amp=not args.fp32,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"{r['student']} ({r['student_params']:,} params) taught by {r['teacher']} "
        f"({r['teacher_params']:,}), batch {r['batch_size']}, {r['device']}, "
        f"{r['threads']} thread(s), {'bf16 autocast' if r['bf16_autocast'] else 'fp32'}\n"
        f"  labels only : {r['ms_per_step_labels']:8.1f} ms/step  "
        f"{r['images_per_s_labels']:8.0f} img/s\n"
        f"  with teacher: {r['ms_per_step_kd']:8.1f} ms/step  {r['images_per_s_kd']:8.0f} img/s\n"
        f"  KD step time ratio {r['ratio']:.2f}x "
        f"(MAC estimate {r['expected_ratio_from_macs']:.2f}x)"
    )


if __name__ == "__main__":
    main()
