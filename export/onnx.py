"""ONNX export (SPEC 7): normalisation inside the graph, dynamic batch, metadata, checked parity.

The graph takes float32 NCHW RGB in [0,1] and returns logits, whatever the precision inside:
fp32; fp16 (the model exported in half, the input cast after normalising in float32 and the logits
cast back, so every consumer feeds the same float32 array and the cast costs nothing next to a
convolution); or int8 (onnxruntime static QDQ quantisation, per-channel weights, calibrated on
training images).

Nothing lands at the output path until the file has passed `onnx.checker` (full check) and agrees
with PyTorch on real validation images: it is written to a temp file beside the output, checked,
then moved into place with `os.replace`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch import nn

from distill.errors import UserError
from export.runtime import Progress, make_session, run_logits

OPSET = 18  # pinned: onnxruntime >= 1.14 runs it and torch's dynamo exporter targets it natively
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16", "int8")

PARITY_IMAGES = 500  # validation images the exported graph is compared on
CALIBRATION_IMAGES = 512  # training images that set the int8 activation ranges
RANDOM_IMAGES = 64  # fallback when the data is not on this machine (labelled as such)
INT8_MAX_ACCURACY_DROP = 0.02  # refuse an int8 file that loses more than 2 points of top-1

# Metadata values that are JSON (the rest are plain strings). `input_range` reads "[0,1]" by
# spec and stays a string.
JSON_KEYS = frozenset(
    {
        "classes",
        "mean",
        "std",
        "input_size",
        "params",
        "val_accuracy",
        "source_val_accuracy",
        "fp32_val_accuracy",
        "opset",
        "calibration_images",
    }
)


class ParityError(RuntimeError):
    """The exported graph disagrees with PyTorch: nothing was written."""


@dataclass(frozen=True)
class Tolerance:
    rel_max_abs_diff: float  # max |onnx - torch| over max |torch logit|, floored at 1
    min_agreement: float  # top-1 agreement with PyTorch

    def holds(self, parity: Parity) -> bool:
        return (
            parity.max_abs_diff <= self.rel_max_abs_diff * max(1.0, parity.logit_scale)
            and parity.top1_agreement >= self.min_agreement
        )


# fp32 differs from PyTorch only by summation order (~1e-6 relative), so 1e-3 catches any real
# bug. fp16 keeps ~3 significant digits through ~20 layers. int8 is gated on accuracy instead.
TOLERANCES = {"fp32": Tolerance(1e-3, 0.999), "fp16": Tolerance(5e-2, 0.99)}


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float
    logit_scale: float  # max |PyTorch logit|: the diff reads relative to it
    source: str  # which images, e.g. "500 validation images of cifar10"

    def line(self) -> str:
        return (
            f"parity vs PyTorch on {self.source}: max abs diff {self.max_abs_diff:.2e} "
            f"(logits up to {self.logit_scale:.1f}), top-1 agreement {self.top1_agreement:.2%}"
        )


@dataclass(frozen=True)
class ExportReport:
    path: Path
    precision: str
    size_bytes: int
    parity: Parity
    metadata: dict[str, Any]  # as read back from the written file
    seconds: float
    real_images: bool  # False: parity ran on random images because the data was not on hand
    accuracy: float | None = None  # this file's validation top-1 (int8 only: measured here)
    fp32_accuracy: float | None = None  # the fp32 graph's on the same images (int8 only)
    fp32_size_bytes: int | None = None  # int8 only
    eval_images: int = 0  # images behind accuracy / fp32_accuracy


class Normalized(nn.Module):
    """[0,1] float32 NCHW RGB in, float32 logits out: normalisation travels inside the graph."""

    def __init__(
        self,
        model: nn.Module,
        mean: list[float],
        std: list[float],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype
        # Not "mean"/"std": the exporter names the global-pool op's output "mean", and without its
        # optimizer pass that clashes with an initializer of the same name.
        self.register_buffer(
            "input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (the same arithmetic as training), then cast for a half model.
        x = (x - self.input_mean) / self.input_std
        return self.model(x.to(self.dtype)).float()


# ---------------------------------------------------------------------------------------------
# Graph, metadata


def export_graph(module: nn.Module, input_size: list[int], path: str | os.PathLike) -> None:
    """torch.export-based exporter (torch's default since 2.9; the TorchScript one is deprecated)
    with a dynamic batch axis, written as one self-contained file."""
    # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
    example = torch.rand(2, *input_size, dtype=torch.float32)
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # exporter chatter about internals, not about the model
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            # The onnxscript optimizer folds BatchNorm into the convolutions and drops the
            # Shape/Expand/CastLike plumbing around it; without it onnxruntime keeps 20 BN nodes
            # and resnet18-5m runs 1.3-1.6x slower (bench/onnx_speed.py).
            optimize=True,
            verbose=False,
        )


def write_metadata(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Set metadata_props (strings; JSON for structured values) and run the full checker."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in values.items():
        text = json.dumps(value) if key in JSON_KEYS else str(value)
        model.metadata_props.add(key=key, value=text)
    model.doc_string = f"distill export of {values.get('arch', '?')}; inputs [0,1] NCHW RGB"
    onnx.save(model, str(path))
    # full_check adds strict shape inference on top of the structural checks.
    onnx.checker.check_model(str(path), full_check=True)


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    """metadata_props strings -> values (JSON keys decoded)."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        if key in JSON_KEYS:
            try:
                out[key] = json.loads(text)
            except json.JSONDecodeError:
                out[key] = text
        else:
            out[key] = text
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The distill metadata of an exported file; a file without it is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an .onnx file written by distill export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf decode errors
        raise UserError(
            f"{path} is not an ONNX file; pass an .onnx file written by distill export"
        ) from None
    return check_metadata(path, {p.key: p.value for p in model.metadata_props})


def check_metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    meta = parse_metadata(props)
    missing = [k for k in ("classes", "input_size", "input_range") if k not in meta]
    if missing:
        raise UserError(
            f"{path} lacks distill metadata ({', '.join(missing)}); export it with "
            "`distill export onnx MODEL.pt`"
        )
    return meta


# ---------------------------------------------------------------------------------------------
# Checks


def check_parity(
    onnx_path: str | os.PathLike,
    reference: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    source: str = "",
    session=None,
) -> Parity:
    """Compare the file's logits with `reference` (a module taking [0,1] input, e.g.
    `Normalized`) on `images` (uint8 [N,3,H,W] or float in [0,1]), batch by batch."""
    session = session or make_session(onnx_path)
    got = run_logits(session, images, batch_size=batch_size)
    want = torch_logits(reference, images, batch_size=batch_size)
    return Parity(
        images=len(images),
        max_abs_diff=float(np.abs(got - want).max()),
        top1_agreement=float((got.argmax(1) == want.argmax(1)).mean()),
        logit_scale=float(np.abs(want).max()),
        source=source or f"{len(images)} images",
    )


@torch.inference_mode()
def torch_logits(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        x = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        out.append(model(x).float().numpy())
    return np.concatenate(out)


def accuracy(logits: np.ndarray, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels.numpy()).mean())


# ---------------------------------------------------------------------------------------------
# int8


class _CalibrationReader(CalibrationDataReader):
    """Feeds calibration batches to onnxruntime's calibrator: one input dict per `get_next()`,
    then None."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.batches = iter(images.split(batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        return {INPUT_NAME: batch.float().div_(255.0).numpy()}


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: torch.Tensor,
    *,
    batch_size: int = 64,
) -> None:
    """Static QDQ quantisation: int8 per-channel weights, uint8 activations whose ranges come
    from `calibration` (uint8 [N,3,H,W] training images, never validation ones)."""
    reader = _CalibrationReader(calibration, batch_size)
    with tempfile.TemporaryDirectory(prefix="distill-int8-") as tmp:
        # Shape inference + graph clean-up first, as onnxruntime recommends before quantising.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # U8 activations x S8 weights is the pair the x86 VNNI kernels run fastest; this CPU
            # has VNNI, so no reduce_range is needed against saturation.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


# ---------------------------------------------------------------------------------------------
# Data for the checks


@dataclass(frozen=True, eq=False)
class CheckImages:
    """Images the export checks itself on (uint8 [N,3,H,W])."""

    val_images: torch.Tensor
    val_labels: torch.Tensor | None  # None for random images
    train_images: torch.Tensor | None  # calibration source; None unless real data loaded
    description: str  # "validation images of cifar10", or why random images were used
    real: bool


def load_check_images(
    ckpt: dict[str, Any],
    data: str | None = None,
    *,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
) -> CheckImages:
    """The checkpoint's own validation/training split, rebuilt from its `data` record (or from
    `data`, the same source moved elsewhere). When the recorded source is not on this machine,
    random images stand in (labelled so); a `data` the user named must load."""
    record = ckpt.get("data") or {}
    source = data or record.get("source")
    _, height, _ = ckpt["input_size"]
    if not source:
        return _random_images(ckpt, "the checkpoint records no data source; pass --data")
    from distill.data import DataSettings, load_data

    roots = {k: v for k, v in (("data_root", data_root), ("cache_dir", cache_dir)) if v}
    train_size = record.get("train_size")
    config = DataSettings(
        source=str(source),
        val_size=int(record.get("val_size", 5000)),
        train_size=int(train_size) if train_size else None,
        split_seed=int(record.get("split_seed", 0)),
        image_size=int(height),
        **roots,
    )
    try:
        dataset = load_data(config)
    except UserError as e:
        if data:  # the user named it: their mistake to fix
            raise
        return _random_images(ckpt, f"data {source} is not available here ({e}); pass --data")
    if list(dataset.classes) != list(ckpt["classes"]):
        raise UserError(
            f"data {source} has classes {list(dataset.classes)[:5]}..., the model "
            f"{list(ckpt['classes'])[:5]}...; pass the --data the model was trained on"
        )
    val = dataset.val if len(dataset.val) else dataset.test
    if val is None or not len(val):
        return _random_images(ckpt, f"data {source} has no validation or test images")
    return CheckImages(val.images, val.labels, dataset.train.images, f"images of {source}", True)


def _random_images(ckpt: dict[str, Any], why: str) -> CheckImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (RANDOM_IMAGES, *ckpt["input_size"]), generator=g)
    return CheckImages(images.to(torch.uint8), None, None, f"RANDOM images ({why})", False)


def evenly_spaced(n_total: int, n: int) -> torch.Tensor:
    """Indices of n images spread over the split (its order may be grouped by class)."""
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long().unique()


# ---------------------------------------------------------------------------------------------
# The whole export


def _chmod_like_a_new_file(path: Path) -> None:
    """mkstemp creates 0600; a deployed model should get the usual 0666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def default_output(ckpt_path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Beside the checkpoint, same stem: m.pt -> m.onnx, m.int8.onnx, m.fp16.onnx."""
    ckpt_path = Path(ckpt_path)
    suffix = ".onnx" if precision == "fp32" else f".{precision}.onnx"
    return ckpt_path.with_name(ckpt_path.stem + suffix)


def export_onnx(
    ckpt_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    int8: bool = False,
    fp16: bool = False,
    force: bool = False,
    data: str | None = None,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    stage: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> ExportReport:
    """Export a distill checkpoint to ONNX, check it, and only then move it to `out`.

    Raises UserError on bad input (before anything is written) and ParityError when the graph
    disagrees with PyTorch (nothing is written). `stage` hears each step's name; `progress`
    hears (done, total) while images are evaluated.
    """
    from distill.budget import count_params
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.files import check_output, file_sha256

    started = time.perf_counter()
    if int8 and fp16:
        raise UserError("--int8 and --fp16 are separate exports; pass one of them")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    ckpt = load_checkpoint(ckpt_path)
    out = check_output(out or default_output(ckpt_path, precision), force, (".onnx",))
    say = stage or (lambda _msg: None)

    say("loading the model and check images")
    model = model_from_checkpoint(ckpt)
    reference = Normalized(model, ckpt["mean"], ckpt["std"])
    images = load_check_images(ckpt, data, data_root=data_root, cache_dir=cache_dir)
    if int8 and not images.real:
        raise UserError(
            f"int8 calibration needs the model's training images, but {images.description}"
        )
    parity_idx = evenly_spaced(len(images.val_images), PARITY_IMAGES)
    parity_images = images.val_images[parity_idx]
    kind = "validation " if images.real else ""
    parity_source = f"{len(parity_idx)} {kind}{images.description}"

    src_val = (ckpt.get("metrics") or {}).get("val_accuracy")
    metadata: dict[str, Any] = {
        "classes": list(ckpt["classes"]),
        "mean": list(ckpt["mean"]),
        "std": list(ckpt["std"]),
        "input_layout": "NCHW",
        "input_range": "[0,1]",
        "input_size": list(ckpt["input_size"]),
        "arch": ckpt["arch"],
        "params": count_params(model),
        "source_sha256": file_sha256(ckpt_path),
        "source": Path(ckpt_path).name,
        "val_accuracy": src_val,
        "source_val_accuracy": src_val,
        "precision": precision,
        "opset": OPSET,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with tempfile.TemporaryDirectory(prefix="distill-export-") as work:
            extra: dict[str, Any] = {}
            if precision == "fp16":
                say("exporting the fp16 graph")
                half = Normalized(
                    model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"], torch.float16
                )
                export_graph(half, ckpt["input_size"], tmp)
            else:
                fp32 = Path(work) / "fp32.onnx" if int8 else tmp
                say("exporting the fp32 graph")
                export_graph(reference, ckpt["input_size"], fp32)
                if int8:
                    extra = _quantize_checked(
                        fp32, tmp, reference, images, parity_images, parity_source, say, progress
                    )
                    metadata.update(extra.pop("metadata"))
            say("writing metadata and running the ONNX checker")
            write_metadata(tmp, metadata)
            say("comparing with PyTorch")
            parity = check_parity(tmp, reference, parity_images, source=parity_source)
            if precision in TOLERANCES and not TOLERANCES[precision].holds(parity):
                raise ParityError(
                    f"the exported graph disagrees with PyTorch ({parity.line()}); "
                    f"{out} was not written"
                )
        _chmod_like_a_new_file(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=out,
        precision=precision,
        size_bytes=out.stat().st_size,
        parity=parity,
        metadata=read_metadata(out),
        seconds=time.perf_counter() - started,
        real_images=images.real,
        **extra,
    )


def _quantize_checked(
    fp32: Path,
    tmp: Path,
    reference: nn.Module,
    images: CheckImages,
    parity_images: torch.Tensor,
    parity_source: str,
    say: Callable[[str], None],
    progress: Progress | None,
) -> dict[str, Any]:
    """Check the fp32 graph, quantise it, and measure both on the whole validation split."""
    fp32_parity = check_parity(fp32, reference, parity_images, source=parity_source)
    if not TOLERANCES["fp32"].holds(fp32_parity):
        raise ParityError(f"the fp32 graph disagrees with PyTorch ({fp32_parity.line()})")
    g = torch.Generator().manual_seed(0)
    train = images.train_images
    calib = train[torch.randperm(len(train), generator=g)[:CALIBRATION_IMAGES]]
    say(f"calibrating int8 on {len(calib)} training images")
    quantize_int8(fp32, tmp, calib)
    n = len(images.val_images)
    say(f"fp32 accuracy on {n:,} validation images")
    fp32_acc = accuracy(
        run_logits(make_session(fp32), images.val_images, progress=progress), images.val_labels
    )
    say(f"int8 accuracy on {n:,} validation images")
    int8_acc = accuracy(
        run_logits(make_session(tmp), images.val_images, progress=progress), images.val_labels
    )
    if int8_acc < fp32_acc - INT8_MAX_ACCURACY_DROP:
        raise ParityError(
            f"int8 loses too much accuracy (val top-1 {int8_acc:.2%} vs fp32 {fp32_acc:.2%}, "
            f"more than {INT8_MAX_ACCURACY_DROP:.0%} lower); the int8 file was not written"
        )
    return {
        "accuracy": int8_acc,
        "fp32_accuracy": fp32_acc,
        "fp32_size_bytes": fp32.stat().st_size,
        "eval_images": n,
        "metadata": {
            "val_accuracy": int8_acc,
            "fp32_val_accuracy": fp32_acc,
            "calibration_images": len(calib),
            "quantization": "onnxruntime static QDQ, per-channel int8 weights, uint8 "
            "activations, MinMax calibration",
        },
    }
