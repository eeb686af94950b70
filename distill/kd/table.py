"""`distill kd-methods`: every distillation method, what it needs, the parameters it trains
beside a given student, and its training step's cost measured against Hinton KD in one run.

A step is what `train_one_epoch` runs: the method's `forward_train` (student and teacher forward
passes, the loss), backward and an SGD step of the student and the method's modules, on one
random batch, under the training's precision. The methods are timed in alternating blocks
(`export.timing.measure`), so load from other processes hits them alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distill.budget import count_params
from distill.data.loader import Batch
from distill.device import autocast, choose_precision, configure_for_training, resolve_device
from distill.kd.objective import FEATURE_METHODS, KDObjective, check_crd_memory
from distill.memory import check_training_step
from distill.registry import create_model
from distill.settings import KD_METHOD_HELP, KDSettings, resolve_kd
from export.timing import Timing, measure

NEEDS = {
    "hinton": "logits",
    "dkd": "logits",
    "dist": "logits",
    "mlkd": "logits of a weak and a strong view (2x batch)",
    "crd": "pooled embeddings, image indices, a bank of 2 x 128 floats per training image",
    "fitnet": "one stage's feature map",
    "at": "every stage's feature map",
    "reviewkd": "every stage's output + teacher pre-activations",
}
# The random training set CRD's bank is sized to when the table is made without data.
TABLE_DATA_SIZE = 50_000


def training_step(
    student: nn.Module,
    objective: Any,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    steps: int,
    precision,
    after_step: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """A call that runs `steps` training steps the way `train_one_epoch` does (`after_step`, e.g.
    an EMA update, after each) and returns once they have finished (a sync point on CUDA:
    kernels run asynchronously)."""
    device = batch.x.device
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None

    def run() -> None:
        for _ in range(steps):
            with autocast(device, precision):
                _, loss = objective.forward_train(student, batch, 1.0)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if after_step is not None:
                after_step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def method_table(
    student_arch: str = "resnet8x4",
    teacher_arch: str = "resnet32x4",
    *,
    num_classes: int = 100,
    methods: tuple[str, ...] = tuple(KD_METHOD_HELP),
    batch_size: int = 64,
    steps: int = 2,
    repeats: int = 3,
    device: str = "cpu",
    amp: bool = True,
    crd_negatives: int | None = None,
    timed: bool = True,
) -> dict[str, Any]:
    """One row per method: description, needs, extra trainable parameters and extra state (CRD's
    bank) for this pair, and, when `timed`, ms per step and the ratio to Hinton's step."""
    dev = resolve_device(device)
    configure_for_training(dev)
    precision = choose_precision(dev, amp)
    torch.manual_seed(0)
    student = create_model(student_arch, num_classes).train()
    # A lower bound (the student's step beside the two views of the batch, the teacher not
    # counted) refuses a batch that cannot fit before a tensor of it is made.
    check_training_step(
        student, (3, 32, 32), batch_size, dev, data_bytes=2 * batch_size * 3 * 32 * 32 * 4
    )
    if "crd" in methods:
        kd = KDSettings(method="crd", **({"crd_negatives": crd_negatives} if crd_negatives else {}))
        check_crd_memory(kd, TABLE_DATA_SIZE, batch_size, dev, fix="lower --batch-size")
    student = student.to(dev)
    teacher = create_model(teacher_arch, num_classes).to(dev)
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=g).to(dev)
    strong = torch.randn(batch_size, 3, 32, 32, generator=g).to(dev)
    train_labels = torch.arange(TABLE_DATA_SIZE) % num_classes
    index = torch.randperm(TABLE_DATA_SIZE, generator=g)[:batch_size].to(dev)
    batch = Batch(images, train_labels[index.cpu()].to(dev), index, strong)
    rows, runners = [], {}
    for method in methods:
        extra = {"crd_negatives": crd_negatives} if crd_negatives else {}
        kd = resolve_kd(KDSettings(method=method, **extra), 240, num_classes)
        objective = KDObjective(student, [teacher], kd, input_size=(3, 32, 32),
                                train_labels=train_labels, precision=precision)  # fmt: skip
        params = objective.extra_parameters()
        state_bytes = sum(t.numel() * t.element_size() for t in objective.state_dict().values()
                          if isinstance(t, torch.Tensor))  # fmt: skip
        rows.append({
            "method": method,
            "description": KD_METHOD_HELP[method],
            "needs": NEEDS[method],
            "ensembles": method not in FEATURE_METHODS,
            "extra_params": params,
            "extra_state_mb": state_bytes / 2**20,
        })  # fmt: skip
        if timed:
            trained = nn.ModuleList([student, objective])
            optimizer = torch.optim.SGD(trained.parameters(), lr=1e-4, momentum=0.9)
            runners[method] = training_step(student, objective, batch, optimizer, steps, precision)
    if timed:
        # Hinton first: every ratio is divided by its step.
        order = sorted(runners, key=lambda m: m != "hinton")
        timing = Timing(warmup=1, min_runs=repeats, max_runs=repeats, min_seconds=0.0)
        times = measure({m: runners[m] for m in order}, timing)
        ms = {m: statistics.median(t) / steps * 1e3 for m, t in times.items()}
        base = ms.get("hinton")
        for r in rows:
            r["ms_per_step"] = ms[r["method"]]
            r["vs_hinton"] = ms[r["method"]] / base if base else None
    return {
        "student": student_arch,
        "teacher": teacher_arch,
        "num_classes": num_classes,
        "student_params": count_params(student),
        "batch_size": batch_size,
        "device": str(dev),
        "precision": precision.name,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
