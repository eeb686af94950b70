"""Deployment from Python: a checkpoint as a ready module, its ONNX export, the engines'
benchmark, and evaluation of a .pt or .onnx on its own validation split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from distill.api.args import (
    EVAL_DATA_FIELDS,
    PathLike,
    source,
    split_overrides,
    with_source,
)
from distill.settings import BenchSettings, ExportSettings, build

if TYPE_CHECKING:
    from export.onnx import ExportReport


def load_model(path: PathLike) -> nn.Module:
    """The model in a distill checkpoint (.pt), ready to run: eval mode, normalisation inside.

    It takes what the ONNX export takes, float32 NCHW RGB in [0,1], and returns logits (the
    module is the one `export_onnx` traces). `model.classes` names each output position and
    `model.input_size` is the [C, H, W] it was trained on.
    """
    from distill.checkpoint import load_checkpoint
    from export.wrappers import reference_module

    ckpt = load_checkpoint(path)
    model = reference_module(ckpt)
    model.classes = list(ckpt["classes"])
    model.input_size = list(ckpt["input_size"])
    return model


def export_onnx(
    checkpoint: PathLike,
    out: PathLike | None = None,
    settings: ExportSettings | None = None,
    *,
    force: bool = False,
    data: PathLike | None = None,
    data_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    reduce_range: bool | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ExportReport:
    """Export `checkpoint` to one checked ONNX file (default beside it: s.pt -> s.onnx,
    s.int8.onnx, s.fp16.onnx); return the export's report (path, parity with PyTorch, accuracy,
    metadata; `to_dict(report)` for plain values).

    `settings` whole, or its fields as options: `int8=True`, `fp16=True`, `tta=True`,
    `int8_max_drop=`. `data`: where the model's data is, when not where its checkpoint
    recorded it. `reduce_range`: the int8 weight range (None: decided for this CPU).
    `stage`/`progress`: callbacks for what is being done and how far.
    """
    from export.onnx import export_onnx as export

    given = split_overrides(
        options, "export_onnx", export=tuple(f.name for f in fields(ExportSettings))
    )
    # Options on top of settings given whole are type-checked like the rest (not `replace`d).
    settings = build(ExportSettings, given["export"], base=settings)
    return export(
        checkpoint,
        out,
        settings,
        force=force,
        data=None if data is None else source(data),
        data_root=None if data_root is None else Path(data_root),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        reduce_range=reduce_range,
        stage=stage,
        progress=progress,
    )


def bench(
    model: PathLike,
    settings: BenchSettings | None = None,
    *,
    checkpoint: PathLike | None = None,
    int8: PathLike | None = None,
    data: PathLike | None = None,
    data_root: PathLike | None = None,
    cache_dir: PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Latency, images/s, accuracy and GFLOP/s of every engine and precision for an .onnx (or
    a .pt), measured in one run in alternating blocks; return the record.

    `settings` whole, or BenchSettings fields as options (`batch_sizes=(1, 32)`, `device=`,
    `threads=`, `engines=`, `accuracy=`, `seconds=`).
    """
    from export.benchmark import benchmark
    from export.timing import Timing

    given = split_overrides(options, "bench", bench=tuple(f.name for f in fields(BenchSettings)))
    settings = build(BenchSettings, given["bench"], base=settings)
    return benchmark(
        Path(model),
        settings.batch_sizes,
        settings.device,
        settings.threads,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        engines=list(settings.engines) or None,
        int8=None if int8 is None else Path(int8),
        accuracy=settings.accuracy,
        data=None if data is None else source(data),
        data_root=None if data_root is None else Path(data_root),
        cache_dir=None if cache_dir is None else Path(cache_dir),
        timing=Timing(min_seconds=settings.seconds),
        progress=progress,
    )


def evaluate(
    model_path: PathLike,
    *,
    split: str = "val",
    data: PathLike | None = None,
    device: str = "auto",
    tta: bool = False,
    **data_overrides: Any,
) -> dict[str, Any]:
    """Top-1 (`accuracy`), `top5`, `loss`, `per_class` and `confusion` of a .pt or .onnx model
    on the split it was validated on (`split="test"`: the data's test split), and the
    `input_size` its images were decoded at (the model's own).

    `data` and the overrides (`cache_dir`, `data_root`, `val_size`, `split_seed`) say where the
    model's data is when not where it recorded; a split other than the model's is refused.
    """
    from distill.evaluation import evaluate_file

    given = split_overrides(data_overrides, "evaluate", data=EVAL_DATA_FIELDS)
    return evaluate_file(
        model_path,
        data=with_source(given["data"], data),
        split=split,
        device=device,
        tta=tta,
    )
