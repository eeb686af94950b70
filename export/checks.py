"""What an export is checked on and against: the images (the model's own validation split,
rebuilt from its data record, or labelled random images when the data is not on this machine),
parity of the graph's logits with PyTorch's, the tolerance each precision must hold, and top-1
accuracy. `distill bench` measures accuracy on the same images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import UserError
from export.runtime import batched_logits, make_session, run_logits

RANDOM_IMAGES = 64  # fallback when the data is not on this machine (labelled as such)


class ParityError(RuntimeError):
    """The exported graph disagrees with PyTorch: nothing was written."""


# ---------------------------------------------------------------------------------------------
# Parity


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
    """Logits of a PyTorch module, batched and fed exactly as the graph is (runtime.py)."""
    return batched_logits(
        lambda x: model(torch.from_numpy(x)).float().numpy(), images, batch_size=batch_size
    )


def accuracy(logits: np.ndarray, labels: torch.Tensor) -> float:
    """Top-1 accuracy of logits [N, classes] against labels [N]."""
    return float((logits.argmax(1) == labels.numpy()).mean())


# ---------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True, eq=False)
class CheckImages:
    """Images the export checks itself on (uint8 [N,3,H,W])."""

    val_images: torch.Tensor
    val_labels: torch.Tensor | None  # None for random images
    train_images: torch.Tensor | None  # calibration source; None unless real data loaded
    description: str  # "validation images of cifar10", or why random images were used
    real: bool


def load_check_images(
    record: dict[str, Any],
    data: str | None = None,
    *,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
) -> CheckImages:
    """The model's own validation/training split, rebuilt from the `data` record of `record` (a
    checkpoint, or an exported file's metadata: both hold `data`, `input_size` and `classes`),
    or from `data`, the same source moved elsewhere. When the recorded source is not on this
    machine, random images stand in (labelled so); a `data` the user named must load."""
    from distill.data import DataSettings, load_data
    from distill.typed import build

    info = record.get("data") or {}
    source = data or info.get("source")
    _, height, _ = record["input_size"]
    if not source:
        return _random_images(record, "the model records no data source; pass --data")
    roots = {k: v for k, v in (("data_root", data_root), ("cache_dir", cache_dir)) if v}
    # The recorded split (what is missing takes the settings' defaults), type-checked.
    split = {
        k: info[k] for k in ("val_size", "train_size", "split_seed") if info.get(k) is not None
    }
    config = build(
        DataSettings,
        {**split, "source": str(source), "image_size": int(height), **roots},
        label=lambda key: f"the model's data record: {key}",
    )
    try:
        dataset = load_data(config)
    except UserError as e:
        if data:  # the user named it: their mistake to fix
            raise
        return _random_images(record, f"data {source} is not available here ({e}); pass --data")
    if list(dataset.classes) != list(record["classes"]):
        raise UserError(
            f"data {source} has classes {list(dataset.classes)[:5]}..., the model "
            f"{list(record['classes'])[:5]}...; pass the --data the model was trained on"
        )
    val = dataset.val if len(dataset.val) else dataset.test
    if val is None or not len(val):
        return _random_images(record, f"data {source} has no validation or test images")
    return CheckImages(val.images, val.labels, dataset.train.images, f"images of {source}", True)


def _random_images(record: dict[str, Any], why: str) -> CheckImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (RANDOM_IMAGES, *record["input_size"]), generator=g)
    return CheckImages(images.to(torch.uint8), None, None, f"RANDOM images ({why})", False)


def evenly_spaced(n_total: int, n: int) -> torch.Tensor:
    """Indices of n images spread over the split (its order may be grouped by class)."""
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long().unique()
