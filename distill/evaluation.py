"""Evaluating a model: `evaluate` on a loader (what training validates with) and `evaluate_file`
(what `distill eval` runs on a .pt or .onnx file).

Evaluation is always float32: a checkpoint's recorded accuracy must not depend on whether the
machine that trained it had bf16, and must equal `distill eval` of it and of its fp32 ONNX export
on the same split. Sums stay on the device until one host sync at the end, and under several
processes each rank evaluates its own shard and the sums are added: the result equals a single
process's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.data import BatchLoader, Dataset, Split, load_data
from distill.device import exact_float32
from distill.errors import UserError
from distill.files import not_a_file
from distill.memory import inference_batch
from distill.settings import data_for_model

EVAL_BATCH = 1000
# On a CPU the activations of a large batch spill out of the caches: resnet18-quarter evaluates
# 5,000 images at 1,025 images/s in batches of 1000 and 1,937 in batches of 125 (2-core Zen 3,
# fp32, interleaved repeats); GPUs want the large batch.
CPU_EVAL_BATCH = 128


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    top5: float
    per_class: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    count: int
    agreement: float | None = None  # top-1 agreement with a reference model (a teacher)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_loader(
    split: Split, data: Dataset, device: torch.device, channels_last: bool = False
) -> BatchLoader:
    """This rank's shard of `split`, every image exactly once over all ranks."""
    base = EVAL_BATCH if torch.device(device).type == "cuda" else CPU_EVAL_BATCH
    return BatchLoader.of(
        data,
        split,
        inference_batch(base, data.input_size),
        device=device,
        rank=distributed.rank(),
        world_size=distributed.world_size(),
        channels_last=channels_last,
        even_shards=False,
    )


def flip_average(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation: the mean of the logits of the images and their mirrors."""
    return (model(x).float() + model(x.flip(3)).float()) / 2


@torch.inference_mode()
@exact_float32()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    *,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tta: bool = False,
) -> EvalResult:
    """Loss, top-1, top-5, per-class accuracy and confusion on the loader's images, in eval mode
    and float32 (exact on CUDA: no TF32, deterministic cuDNN); `reference(x)` (a teacher's
    logits) adds the top-1 agreement with it."""
    k, device = loader.num_classes, loader.device
    weights = next(model.parameters()).device
    if weights.type != device.type:  # (a model built on the CPU, batches on the GPU)
        raise ValueError(f"the model is on {weights} but the batches on {device}")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    counts = torch.zeros(3, device=device, dtype=torch.long)  # top-5 hits, agreements, spare
    confusion = torch.zeros(k * k, device=device, dtype=torch.long)
    for x, y in loader.epoch(0):
        logits = flip_average(model, x) if tta else model(x).float()
        pred = logits.argmax(1)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        # index_add_, not bincount: bincount sizes its output from the data (a host sync).
        confusion.index_add_(0, y * k + pred, torch.ones_like(y))
        top5 = logits.topk(min(5, k), 1).indices
        counts[0] += (top5 == y[:, None]).any(1).sum()
        if reference is not None:
            counts[1] += (reference(x).argmax(1) == pred).sum()
    model.train(was_training)
    for t in (loss_sum, counts, confusion):
        distributed.all_reduce_sum(t)
    conf = confusion.view(k, k).cpu()  # the one host sync
    n = int(conf.sum())
    hits = counts.cpu()
    return EvalResult(
        loss=float(loss_sum) / max(n, 1),
        accuracy=float(conf.diag().sum()) / max(n, 1),
        top5=float(hits[0]) / max(n, 1),
        per_class=(conf.diag().double() / conf.sum(1).clamp(min=1)).tolist(),
        confusion=conf.tolist(),
        count=n,
        agreement=float(hits[1]) / max(n, 1) if reference is not None else None,
    )


def summarize(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """EvalResult from logits computed elsewhere (onnxruntime)."""
    k = logits.shape[1]
    conf = torch.zeros(k * k, dtype=torch.long).index_add_(
        0, labels * k + logits.argmax(1), torch.ones_like(labels)
    )
    conf = conf.view(k, k)
    n = int(conf.sum())
    top5 = logits.topk(min(5, k), 1).indices
    return EvalResult(
        loss=float(F.cross_entropy(logits.float(), labels)),
        accuracy=float(conf.diag().sum()) / max(n, 1),
        top5=float((top5 == labels[:, None]).any(1).sum()) / max(n, 1),
        per_class=(conf.diag().double() / conf.sum(1).clamp(min=1)).tolist(),
        confusion=conf.tolist(),
        count=n,
    )


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


def evaluate_file(
    path: str | Path,
    *,
    data: dict[str, Any] | None = None,
    split: str = "val",
    device: str = "auto",
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint or ONNX file; by default on the split the model was validated on.

    `data`: DataSettings fields overriding what the model recorded (`source`, `val_size`,
    `split_seed`, `data_root`, `cache_dir`); an explicit split other than the model's is refused.
    """
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.device import resolve_device

    path = Path(path)
    if why := not_a_file(path):
        raise UserError(f"{path} {why}; pass a .pt checkpoint or an exported .onnx file")
    if path.suffix == ".onnx":
        from export.metadata import read_metadata

        meta = read_metadata(path)
        classes, record = meta["classes"], meta.get("data") or {}
        if not isinstance(record, dict):
            record = {}
    else:
        ckpt = load_checkpoint(path)
        classes, record = ckpt["classes"], ckpt["data"]
    input_size = meta["input_size"] if path.suffix == ".onnx" else ckpt["input_size"]
    if input_size[1] != input_size[2]:
        raise UserError(f"{path} takes {input_size[1]}x{input_size[2]} images; distill's data "
                        "are square, so it cannot be evaluated here")  # fmt: skip
    # The model's own size, whatever the data record or the flags say: images at another size
    # would run (the network is convolutional) and score as noise.
    settings = replace(data_for_model(record, data or {}, str(path)), image_size=input_size[1])
    if split != "val" and split != "test":
        raise UserError(f"unknown split {split!r}; use val or test")
    dataset = load_data(settings)
    check_classes(classes, dataset, str(path))
    chosen = pick_split(dataset, split)
    if path.suffix == ".onnx":
        result = _evaluate_onnx(path, chosen, device, tta)
    else:
        torch_device = resolve_device(device)
        # channels_last: the layout convolutions run fastest in, on GPUs and CPUs alike.
        model = model_from_checkpoint(ckpt).to(torch_device, memory_format=torch.channels_last)
        # The weights were learned under the checkpoint's normalisation: evaluate under it.
        norm = replace(dataset, mean=tuple(ckpt["mean"]), std=tuple(ckpt["std"]))
        result = evaluate(model, eval_loader(chosen, norm, torch_device, True), tta=tta)
    return result.as_dict() | {
        "classes": list(classes),
        "source": settings.source,
        "split": split,
        "tta": tta,
        "input_size": list(input_size),  # the model's own, whatever size the data's files are
    }


def _evaluate_onnx(path: Path, split: Split, device: str, tta: bool) -> EvalResult:
    """An exported model (input float32 NCHW in [0,1], normalisation inside) on a split."""
    from distill.console import note
    from export.runtime import make_session, resolve_device, run_logits

    if tta:
        raise UserError(
            "--tta averages a model's logits with its mirror's; for an ONNX file, export it "
            "with `distill export onnx --tta` instead"
        )
    session = make_session(path, device=resolve_device(device, say=note))
    return summarize(torch.from_numpy(run_logits(session, split.images)), split.labels)
