"""`distill predict`: classify image files with an exported ONNX model.

Everything the model needs comes from the file's checked metadata: class names, input size and
the [0,1] range (normalisation is inside the graph). Images of any size and mode (grayscale,
RGBA, palette, ...) are converted to RGB and resized exactly as `distill.data` prepares image
folders for training, so a prediction sees what training saw.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.errors import UserError
from export.engines import open_engine
from export.metadata import read_metadata
from export.runtime import batched_logits

BATCH_SIZE = 64
# PIL's own default limit (Image.MAX_IMAGE_PIXELS, about 9459 x 9459), pinned so that a change
# upstream or elsewhere in the process cannot lift it.
MAX_PIXELS = 89_478_485
# read_image refuses images over MAX_PIXELS itself, with a message naming the file; PIL's
# warning for those between its limit and twice it would only add a second, vaguer line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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


def read_image(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3]: RGB, resized to `size` (H, W) as distill.data prepares image folders.

    Every reader of image files should come here, so that a file is accepted or refused the
    same way everywhere: an image of more than MAX_PIXELS pixels (a decompression bomb: a small
    file that decodes to gigabytes) and a file that is not an image are UserErrors naming it.
    """
    try:
        with Image.open(path) as im:  # reads the header only: the size is known before decoding
            if im.width * im.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{im.width}x{im.height}")
            if im.mode != "RGB":  # grey, RGBA, palette, CMYK, 16-bit...: three uint8 channels
                im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                # PIL widens the bilinear filter when shrinking, so downscaling does not alias.
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # (warnings as errors)
        raise UserError(
            f"{path} has more than {MAX_PIXELS:,} pixels, the limit for an image (a guard against "
            "decompression bombs); downscale it or remove it"
        ) from None
    except Exception as e:  # any failure to decode means the file is not an image we can use
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
    engine: str = "onnxruntime",
    device: str = "cpu",
) -> list[Prediction]:
    """Top-k classes with softmax probabilities for every image in `paths` (files or folders),
    run by `engine` (onnxruntime/ort or openvino) on `device` (cpu, cuda or auto).

    The file's metadata is checked first, then every image is read (and a bad one reported)
    before the model runs.
    """
    if top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    meta = read_metadata(onnx_path)
    classes = meta["classes"]
    _, height, width = meta["input_size"]
    files = image_files(paths)
    if not files:
        raise UserError("no images given; pass image files or folders of images")
    pixels = np.stack([read_image(f, (height, width)) for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    runner = open_engine(
        onnx_path, engine, precision=meta.get("precision", "fp32"), device=device, threads=threads
    )
    logits = batched_logits(runner.run, images, batch_size=BATCH_SIZE)
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
