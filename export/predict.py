"""`distill predict`: classify image files with an exported ONNX model (or a checkpoint, run by
PyTorch).

Everything the model needs comes from the file's checked metadata: class names, input size and
the [0,1] range (normalisation is inside the graph). Images of any size and mode (grayscale,
RGBA, palette, ...) are converted to RGB and resized exactly as `distill.data` prepares image
folders for training, so a prediction sees what training saw.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill.console import note
from distill.data.images import check_image, is_image_name, read_image
from distill.errors import UserError
from distill.files import not_a_file
from distill.memory import inference_batch
from export.engines import open_engine
from export.metadata import read_metadata
from export.runtime import batched_logits

BATCH_SIZE = 64


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    path: str
    top: tuple[ClassScore, ...]  # best first

    def to_dict(self) -> dict:
        return {"path": self.path, "top_k": [asdict(c) for c in self.top]}


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given, and every visible file under each folder (sorted); a folder's non-image
    files are skipped by extension, a file named explicitly must be an image."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            visible = [
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            found = sorted(f for f in visible if is_image_name(f))
            if not found:
                raise UserError(f"{p} holds no image files; pass images or folders of images")
            skipped = [f for f in visible if not is_image_name(f)]
            if skipped:
                note(
                    f"skipped {len(skipped):,} file{'s' * (len(skipped) != 1)} in {p} that "
                    f"{'are' if len(skipped) != 1 else 'is'} not an image by extension "
                    f"(e.g. {skipped[0].name})"
                )
            files += found
        elif why := not_a_file(p):
            raise UserError(f"{p} {why}; pass image files or folders of images")
        else:
            files.append(p)
    return files


def predict(
    onnx_path: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    top_k: int = 3,
    *,
    threads: int | None = None,
    engine: str = "onnxruntime",
    device: str = "cpu",
) -> list[Prediction]:
    """Top-k classes with softmax probabilities for every image in `paths` (files or folders),
    run by `engine` (onnxruntime/ort or openvino) on `device` (cpu, cuda or auto).

    The file's metadata is checked first, then every image's header (a file that is not an
    image, or cannot be read faithfully, is refused naming it before the model runs); then the
    images are decoded and classified a batch at a time, so any number of them fits in memory.
    """
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    from_checkpoint = Path(onnx_path).suffix == ".pt"
    if from_checkpoint:
        from distill.checkpoint import load_checkpoint

        meta = load_checkpoint(onnx_path)
    else:
        meta = read_metadata(onnx_path)
    classes = meta["classes"]
    _, height, width = meta["input_size"]
    files = image_files(paths)
    if not files:
        raise UserError("no images given; pass image files or folders of images")
    for f in files:
        check_image(f)
    if from_checkpoint:
        run = checkpoint_runner(meta, device)
    else:
        precision = meta.get("precision", "fp32")
        run = open_engine(
            onnx_path, engine, precision=precision, device=device, threads=threads
        ).run
    k = min(top_k, len(classes))
    step = inference_batch(BATCH_SIZE, (height, width))
    out: list[Prediction] = []
    for start in range(0, len(files), step):
        chunk = files[start : start + step]
        pixels = np.stack([read_image(f, (height, width)) for f in chunk])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        probs = softmax(batched_logits(run, images, batch_size=step))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out += [
            Prediction(str(f), tuple(ClassScore(int(i), classes[i], float(p[i])) for i in idx))
            for f, p, idx in zip(chunk, probs, order, strict=True)
        ]
    return out


def checkpoint_runner(ckpt: dict, device: str):
    """A checkpoint's model as an engine's `run`: [0,1] float32 NCHW in, logits out (the module
    an export traces, so a .pt predicts what its .onnx predicts)."""
    from distill.device import resolve_device
    from export.wrappers import reference_module

    where = resolve_device(device)
    module = reference_module(ckpt).to(where)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(where)).float().cpu().numpy()

    return run


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # shift: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
