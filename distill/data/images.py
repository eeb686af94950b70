"""Reading image files: one function for training's image folders and for `distill predict`, so a
prediction sees exactly what training saw and every reader refuses a bad file the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.errors import UserError


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB of `path`, resized to `size` (H, W) where it differs.

    Any mode (palette, grey, RGBA, CMYK, 16-bit) becomes three uint8 channels. A file that is not
    an image, is truncated, or is a decompression bomb (more pixels than PIL's safety limit) is a
    UserError naming it.
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:
                raise UserError(
                    f"{path} is {im.width}x{im.height} pixels, over the {Image.MAX_IMAGE_PIXELS:,}"
                    "-pixel limit for safe decoding (a decompression bomb?); resize it or remove it"
                )
            if im.mode != "RGB":
                im = im.convert("RGB")
            if im.size != (size[1], size[0]):
                # PIL widens the bilinear filter when shrinking, so downscaling does not alias.
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except UserError:
        raise
    except Exception as e:  # any failure to decode means the file is not an image we can use
        reason = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable image ({reason}); remove it or replace it with an image"
        ) from None


def decode_images(paths: Sequence[Path], size: int, chunk: int = 512) -> torch.Tensor:
    """Decode files into one uint8 [N, 3, size, size] tensor with a thread pool (PIL releases the
    GIL while decoding; chunks keep the pool's per-task overhead small)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            out[i] = read_image(paths[i], (size, size))

    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(work, range(0, len(paths), chunk)):
            pass
    finally:
        # On a bad file, stop at once rather than decode the rest of the folder first.
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
