"""`distill predict`: classify image files with an exported ONNX model.

Everything the model needs comes from the file: class names, input size and the [0,1] range
(normalisation is inside the graph). Images of any size and mode (grayscale, RGBA, palette, ...)
are converted to RGB and resized exactly as `distill.data` prepares image folders for training,
so a prediction sees what training saw.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from distill.errors import UserError
from export.onnx import check_metadata
from export.runtime import make_session, run_logits

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
    known = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in known
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise UserError(f"{p} holds no image files; pass images or folders of images")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p} does not exist; pass image files or folders of images")
    return files


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 [3, H, W]: RGB, resized to `size` (H, W) like distill.data's image folders."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":  # grey, RGBA, palette, CMYK, 16-bit...: three uint8 channels
                im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                # PIL widens the bilinear filter when shrinking, so downscaling does not alias.
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not an image this can read ({reason}); pass PNG/JPEG/... files"
        ) from None


def predict(
    onnx_path: str | os.PathLike,
    paths: Sequence[str | os.PathLike],
    top_k: int = 3,
    *,
    threads: int | None = None,
) -> list[Prediction]:
    """Top-k classes with softmax probabilities for every image in `paths` (files or folders).

    Every image is read (and a bad one reported) before the model runs.
    """
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    session = make_session(onnx_path, threads=threads)
    meta = check_metadata(Path(onnx_path), session.get_modelmeta().custom_metadata_map)
    if meta["input_range"] != "[0,1]":
        raise UserError(f"{onnx_path} expects input range {meta['input_range']}; re-export it")
    classes = meta["classes"]
    _, height, width = meta["input_size"]
    files = image_files(paths)
    if not files:
        raise UserError("no images given; pass image files or folders of images")
    images = torch.from_numpy(np.stack([load_image(f, (height, width)) for f in files]))
    logits = run_logits(session, images, batch_size=BATCH_SIZE)
    probs = softmax(logits)
    k = min(top_k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Prediction(
            str(f),
            tuple(ClassScore(int(i), classes[i], float(p[i])) for i in idx),
        )
        for f, p, idx in zip(files, probs, order, strict=True)
    ]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # shift: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
