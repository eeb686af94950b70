"""ONNX export (SPEC 7): normalisation inside the graph, dynamic batch, metadata, checked parity.

The graph takes float32 NCHW RGB in [0,1] and returns logits, whatever the precision inside:
fp32; fp16 (the model exported in half, the input cast after normalising in float32 and the logits
cast back, so every consumer feeds the same float32 array and the cast costs nothing next to a
convolution); or int8 (onnxruntime static QDQ quantisation, per-channel weights, calibrated on
training images). `tta=True` bakes the flip average (logits of the image and of its mirror,
averaged) into the graph.

Nothing lands at the output path until the file has passed `onnx.checker` (full check) and agrees
with PyTorch on real validation images: it is built in a temp file beside the output and moved
into place by `distill.files.atomic_write`. Every temporary file and folder carries our pid, is
removed on any exit the process sees, and is swept by the next export if we were killed.

Its parts: the graph (graph.py), the checks and their images (checks.py), int8 (quantize.py),
the metadata (metadata.py); this module runs them in order and writes the report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import UserError
from distill.settings import ExportSettings
from export.checks import (
    TOLERANCES,
    CheckImages,
    Parity,
    ParityError,
    accuracy,
    check_parity,
    evenly_spaced,
    load_check_images,
)
from export.graph import OPSET, export_graph
from export.metadata import read_metadata, write_metadata
from export.model_files import default_output
from export.quantize import int8_scheme, quantize_int8
from export.runtime import Progress, make_session, run_logits
from export.wrappers import reference_module

PARITY_IMAGES = 500  # validation images the exported graph is compared on
CALIBRATION_IMAGES = 512  # training images that set the int8 activation ranges
MIN_CALIBRATION_IMAGES = 32  # fewer when their recorded activations would not fit; never below
# Refuse an int8 file that loses more than this much val top-1 (its one default: the settings).
DATA_KEYS = ("source", "val_size", "split_seed", "train_size")  # enough to rebuild the split


@dataclass(frozen=True)
class ExportReport:
    path: Path
    precision: str
    size_bytes: int
    parity: Parity
    metadata: dict[str, Any]  # as read back from the written file
    seconds: float
    real_images: bool  # False: parity ran on random images because the data was not on hand
    accuracy: float | None = None  # this file's validation top-1, measured on it (None: no data)
    source_accuracy: float | None = None  # the checkpoint's recorded validation top-1
    fp32_accuracy: float | None = None  # the fp32 graph's on the same images (int8 only)
    fp32_size_bytes: int | None = None  # int8 only
    eval_images: int = 0  # images behind accuracy / fp32_accuracy
    int8_scheme: str | None = None  # int8 only: the arithmetic chosen for this CPU, and why
    tta: bool = False


# ---------------------------------------------------------------------------------------------
# The whole export


def export_onnx(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    settings: ExportSettings | None = None,
    *,
    force: bool = False,
    data: str | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    reduce_range: bool | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export a distill checkpoint to ONNX, check it, and only then move it to `out`.

    `settings` (default ExportSettings()): `int8`/`fp16` the precision, `tta` bakes the flip
    average into the graph, `int8_max_drop` is the most validation top-1 (a fraction: 0.05 is
    5 points) the int8 file may lose against the fp32 graph. `reduce_range`
    forces the int8 weight range (None: decided for this CPU). Raises UserError on bad input
    (before anything is written) and ParityError when the graph disagrees with PyTorch or int8
    loses too much (nothing is written). `stage` hears each step's name; `progress` hears
    (done, total) while images are evaluated.
    """
    from distill.budget import count_macs, count_params
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.files import atomic_write, check_output, file_sha256, sweep_stale, temp_dir
    from export.machine import int8_reduce_range

    started = time.perf_counter()
    settings = settings or ExportSettings()  # checked when built: int8 with fp16, the drop
    int8, fp16, tta = settings.int8, settings.fp16, settings.tta
    int8_max_drop = settings.int8_max_drop
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    ckpt = load_checkpoint(ckpt_path)
    out = check_output(out or default_output(ckpt_path, precision), force, (".onnx",))
    # Temp files of exports that were killed (-9, power loss) before they could clean up.
    sweep_stale()
    sweep_stale(out.parent)
    say = stage or (lambda _msg: None)

    say("loading the model and check images")
    model = model_from_checkpoint(ckpt)
    reference = reference_module(ckpt, tta=tta)
    images = load_check_images(ckpt, data, data_root=data_root, cache_dir=cache_dir)
    if int8 and not images.real:
        raise UserError(
            f"int8 calibration needs the model's training images, but {images.description}"
        )
    if int8 and reduce_range is None:
        reduce_range = int8_reduce_range()
    parity_idx = evenly_spaced(len(images.val_images), PARITY_IMAGES)
    parity_images = images.val_images[parity_idx]
    kind = "validation " if images.real else ""
    parity_source = f"{len(parity_idx)} {kind}{images.description}"

    src_val = (ckpt.get("metrics") or {}).get("val_accuracy")
    record = ckpt.get("data") or {}
    metadata: dict[str, Any] = {
        "classes": list(ckpt["classes"]),
        "mean": list(ckpt["mean"]),
        "std": list(ckpt["std"]),
        "input_layout": "NCHW",
        "input_range": "[0,1]",
        "input_size": list(ckpt["input_size"]),
        "arch": ckpt["arch"],
        "params": count_params(model),
        # Per image, of the graph: the flip average runs the model twice.
        "macs": count_macs(model, tuple(ckpt["input_size"])) * (2 if tta else 1),
        "source_sha256": file_sha256(ckpt_path),
        "source": Path(ckpt_path).name,
        "val_accuracy": None,  # measured on the file below, when the data is here
        "source_val_accuracy": src_val,
        "precision": precision,
        "tta": tta,
        "opset": OPSET,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
    }
    if record.get("source"):
        metadata["data"] = {k: record[k] for k in DATA_KEYS if record.get(k) is not None}

    results: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        with temp_dir("export") as work:
            if precision == "fp16":
                say("exporting the fp16 graph")
                half = reference_module(ckpt, tta=tta, dtype=torch.float16)
                export_graph(half, ckpt["input_size"], tmp)
            else:
                fp32 = work / "fp32.onnx" if int8 else tmp
                say("exporting the fp32 graph")
                export_graph(reference, ckpt["input_size"], fp32)
                if int8:
                    results.update(
                        _quantize_checked(
                            fp32,
                            tmp,
                            reference,
                            images,
                            parity_images,
                            parity_source,
                            reduce_range=bool(reduce_range),
                            max_drop=int8_max_drop,
                            say=say,
                            progress=progress,
                        )
                    )
            say("comparing with PyTorch")
            session = make_session(tmp)
            parity = check_parity(
                tmp, reference, parity_images, source=parity_source, session=session
            )
            if precision in TOLERANCES and not TOLERANCES[precision].holds(parity):
                raise ParityError(
                    f"the exported graph disagrees with PyTorch ({parity.line()}); "
                    f"{out} was not written"
                )
            results["parity"] = parity
            if images.real and "accuracy" not in results:
                n = len(images.val_images)
                say(f"{precision} accuracy on {n:,} validation images")
                logits = run_logits(session, images.val_images, progress=progress)
                results["accuracy"] = accuracy(logits, images.val_labels)
                results["eval_images"] = n
            metadata.update(results.pop("metadata", {}))
            if "accuracy" in results:
                n = results["eval_images"]
                metadata["val_accuracy"] = results["accuracy"]
                metadata["val_images"] = n
                metadata["val_accuracy_measured_on"] = f"this file, {n:,} val images"
            say("writing metadata and running the ONNX checker")
            write_metadata(tmp, metadata)

    atomic_write(out, build)
    from distill.tracking import log_files

    log_files(ckpt.get("tracking"), [out])  # the checkpoint's tracking run, when it has one
    return ExportReport(
        path=out,
        precision=precision,
        size_bytes=out.stat().st_size,
        metadata=read_metadata(out),
        seconds=time.perf_counter() - started,
        real_images=images.real,
        source_accuracy=src_val,
        int8_scheme=metadata.get("int8_scheme"),
        tta=tta,
        **results,
    )


def calibration_images(graph: Path) -> int:
    """How many training images calibrate int8: CALIBRATION_IMAGES, or as many as half the free
    memory holds when onnxruntime records every activation of each (a model of large images:
    1.4 MiB an image for resnet18-quarter at 32x32, 67 MiB at 224x224), at least
    MIN_CALIBRATION_IMAGES; refused when even those cannot fit."""
    from distill.memory import available, require
    from export.footprint import all_elements_per_image

    per_image = 4 * all_elements_per_image(graph)
    fits = available() // 2 // max(per_image, 1)
    n = max(MIN_CALIBRATION_IMAGES, min(CALIBRATION_IMAGES, fits))
    require(n * per_image, f"int8 calibration on {n} images", "export without --int8")
    return n


def _quantize_checked(
    fp32: Path,
    tmp: Path,
    reference: nn.Module,
    images: CheckImages,
    parity_images: torch.Tensor,
    parity_source: str,
    *,
    reduce_range: bool,
    max_drop: float,
    say: Callable[[str], None],
    progress: Progress | None,
) -> dict[str, Any]:
    """Check the fp32 graph, quantise it, and measure both on the whole validation split."""
    fp32_parity = check_parity(fp32, reference, parity_images, source=parity_source)
    if not TOLERANCES["fp32"].holds(fp32_parity):
        raise ParityError(f"the fp32 graph disagrees with PyTorch ({fp32_parity.line()})")
    g = torch.Generator().manual_seed(0)
    train = images.train_images
    calib = train[torch.randperm(len(train), generator=g)[: calibration_images(fp32)]]
    scheme = int8_scheme(reduce_range)
    fewer = (
        f"; not {CALIBRATION_IMAGES}: their recorded activations would pass half the free memory"
        if len(calib) < min(CALIBRATION_IMAGES, len(train))
        else ""
    )
    say(f"calibrating int8 on {len(calib)} training images ({scheme.split(':')[0]}{fewer})")
    quantize_int8(fp32, tmp, calib, reduce_range=reduce_range)
    n = len(images.val_images)
    say(f"fp32 accuracy on {n:,} validation images")
    fp32_acc = accuracy(
        run_logits(make_session(fp32), images.val_images, progress=progress), images.val_labels
    )
    say(f"int8 accuracy on {n:,} validation images")
    int8_acc = accuracy(
        run_logits(make_session(tmp), images.val_images, progress=progress), images.val_labels
    )
    if int8_acc < fp32_acc - max_drop:
        raise ParityError(
            f"int8 loses too much accuracy (val top-1 {int8_acc:.2%} vs fp32 {fp32_acc:.2%}, "
            f"more than {100 * max_drop:.1f} points lower); the int8 file was not written; raise "
            "--int8-max-drop to accept it"
        )
    return {
        "accuracy": int8_acc,
        "fp32_accuracy": fp32_acc,
        "fp32_size_bytes": fp32.stat().st_size,
        "eval_images": n,
        "metadata": {
            "fp32_val_accuracy": fp32_acc,
            "calibration_images": len(calib),
            "int8_scheme": scheme,
            "quantization": "onnxruntime static QDQ, per-channel int8 weights, uint8 "
            "activations, MinMax calibration" + (", reduce_range" if reduce_range else ""),
        },
    }
