"""One trial: an ordinary distill run in its own folder, through the same library calls as
`distill student` (with a teacher) or `distill teacher train` (labels only).

A trial's folder `OUT/trials/NNNN/` holds `model.pt` (the checkpoint, with its record),
`model.metrics.csv` and, while it runs, `model.last.pt`: a trial taken up again after its worker
died continues from there, not from step 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from distill import api
from distill.sweep.job import SweepJob
from distill.sweep.space import resolve

TRIALS = "trials"
MODEL = "model.pt"
DEFAULT_RECIPE = "standard"  # as for `distill student`: a space's `recipe` names another


def trial_folder(out: Path, number: int) -> Path:
    return Path(out) / TRIALS / f"{number:04d}"


def feasibility(job: SweepJob, arch: str, num_classes: int) -> tuple[int, int, str | None]:
    """(params, MACs, why it may not train or None), from the architecture alone: an
    infeasible point costs no training."""
    from distill.budget import count_macs, count_params
    from distill.registry import create_model

    model = create_model(arch, num_classes)
    params, macs = count_params(model), count_macs(model, (3, 32, 32))
    s = job.settings
    if params > s.budget_params:
        return params, macs, f"{params:,} parameters, over the budget of {s.budget_params:,}"
    if s.mac_limit is not None and macs > s.mac_limit:
        return params, macs, f"{macs:,} MACs, over the ceiling of {s.mac_limit:,}"
    return params, macs, None


def resume_point(path: Path) -> dict[str, int] | None:
    """Where the resumable state beside `path` stands (None: nothing to resume)."""
    from distill.checkpoint import load_checkpoint
    from distill.resume import last_path

    state = last_path(path)
    if not state.exists():
        return None
    ts = load_checkpoint(state).get("train_state") or {}
    return {"epoch": int(ts.get("epoch", 0)), "step": int(ts.get("step", 0))}


def train(
    job: SweepJob,
    params: Mapping[str, Any],
    out: Path,
    *,
    seed: int = 0,
    on_epoch: Callable[[dict[str, Any]], bool] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train the trial `params` describe into `out`, continuing its resumable state if there is
    one; return the checkpoint."""
    from distill.checkpoint import load_checkpoint
    from distill.resume import last_path

    if out.exists() and not last_path(out).exists():  # trained, but its worker died before telling
        return load_checkpoint(out)
    ts = resolve(params, DEFAULT_RECIPE)
    data = dict(job.data)
    source = data.pop("source", None)
    run = {
        "device": job.device,
        "seed": seed,
        "resume": last_path(out).exists(),
        "force": not last_path(out).exists(),
    }
    if job.teachers:
        return api.train_student(
            list(job.teachers),
            ts.arch,
            source,
            out,
            budget=job.settings.budget_params,
            kd=ts.kd,
            recipe=ts.recipe,
            quiet=quiet,
            on_epoch=on_epoch,
            **data,
            **run,
        )
    return api.train_teacher(
        ts.arch,
        source,
        out,
        recipe=ts.recipe,
        quiet=quiet,
        on_epoch=on_epoch,
        # A label-only trial is a student baseline: the recipe's own smoothing, not a teacher's.
        label_smoothing=ts.recipe.label_smoothing,
        **data,
        **run,
    )


def onnx_latency_ms(checkpoint: Path, repeats: int = 50) -> float:
    """Median ms of one image through the checkpoint's ONNX export on onnxruntime's CPU engine
    (after 10 warm-up runs), with the threads this process trains with."""
    import numpy as np

    from export.runtime import make_session

    onnx = checkpoint.with_suffix(".onnx")
    api.export_onnx(checkpoint, onnx, force=True)
    session = make_session(onnx, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    shape = [1, *[int(d) if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape[1:]]]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def objective_values(job: SweepJob, ckpt: dict[str, Any], path: Path) -> list[float]:
    m = ckpt["metrics"]
    second = {
        "top1": None,
        "top1+params": lambda: float(m["params"]),
        "top1+macs": lambda: float(m["macs"]),
        "top1+latency": lambda: onnx_latency_ms(path),
    }[job.settings.objective]
    return [float(m["val_accuracy"])] + ([] if second is None else [second()])


def record(ckpt: dict[str, Any], folder: Path, out: Path) -> dict[str, Any]:
    """What the trials table shows of a finished trial."""
    m = ckpt["metrics"]
    return {
        "folder": str(folder.relative_to(out)),
        "params": m["params"],
        "macs": m["macs"],
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "val_top1": m["val_accuracy"],
        "train_seconds": m["train_seconds"],
    }
