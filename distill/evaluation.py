"""`distill eval`: top-1, per-class accuracy and confusion matrix of a .pt or .onnx model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.data import DataConfig, Dataset, Split, load_data
from distill.errors import UserError
from distill.train import EvalResult, evaluate, resolve_device


def pick_split(dataset: Dataset, split: str) -> Split:
    if split == "val":
        return dataset.val
    if split == "test":
        if dataset.test is None:
            raise UserError(
                f"{dataset.info.get('source')} has no test split; use --split val "
                "(or a source with test/<class>/ folders or official CIFAR test batches)"
            )
        return dataset.test
    raise UserError(f"unknown split {split!r}; use val or test")


def check_classes(model_classes: list[str], dataset: Dataset, what: str) -> None:
    if list(model_classes) != list(dataset.classes):
        raise UserError(
            f"{what} was trained on classes {list(model_classes)[:5]}... but the data has "
            f"{list(dataset.classes)[:5]}...; evaluate on the data it was trained on"
        )


def evaluate_onnx(onnx_path: Path, split: Split, device: str = "cpu") -> EvalResult:
    """Run an exported model (input float32 NCHW in [0,1], normalisation inside) on a split."""
    from export.runtime import make_session, run_logits

    session = make_session(onnx_path, device=device)
    return summarize(torch.from_numpy(run_logits(session, split.images)), split.labels)


def summarize(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """EvalResult from logits computed elsewhere (onnxruntime, ensembles)."""
    k = logits.shape[1]
    conf = torch.bincount(labels * k + logits.argmax(1), minlength=k * k).view(k, k)
    n = int(conf.sum())
    return EvalResult(
        loss=float(F.cross_entropy(logits.float(), labels)),
        accuracy=float(conf.diag().sum()) / max(n, 1),
        per_class=(conf.diag().double() / conf.sum(1).clamp(min=1)).tolist(),
        confusion=conf.tolist(),
        count=n,
    )


def evaluate_file(
    path: Path,
    *,
    data: str | None = None,
    split: str = "val",
    val_size: int | None = None,
    split_seed: int | None = None,
    data_root: Path = Path("~/.cache/distill").expanduser(),
    cache_dir: Path = Path("~/.cache/distill").expanduser(),
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate a checkpoint or ONNX file; by default on the split the model was validated on."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a .pt checkpoint or an exported .onnx file")
    if path.suffix == ".onnx":
        from export.onnx import read_metadata

        meta = read_metadata(path)
        if data is None:
            raise UserError("an .onnx file does not record its data; pass --data")
        classes, record = meta["classes"], {}
    else:
        ckpt = load_checkpoint(path)
        classes, record = ckpt["classes"], ckpt["data"]
    source = data or record.get("source")
    if source is None:
        raise UserError(f"{path} does not record its data source; pass --data")
    dataset = load_data(
        DataConfig(
            source=source,
            data_root=data_root,
            cache_dir=cache_dir,
            val_size=val_size if val_size is not None else record.get("val_size", 5000),
            seed=split_seed if split_seed is not None else record.get("split_seed", 0),
        )
    )
    check_classes(classes, dataset, str(path))
    chosen = pick_split(dataset, split)
    if path.suffix == ".onnx":
        result = evaluate_onnx(
            path, chosen, "cuda" if resolve_device(device).type == "cuda" else "cpu"
        )
    else:
        result = evaluate(
            model_from_checkpoint(ckpt),
            chosen,
            mean=tuple(ckpt["mean"]),
            std=tuple(ckpt["std"]),
            num_classes=len(classes),
            device=resolve_device(device),
        )
    return result.as_dict() | {"classes": list(classes), "source": source, "split": split}
