"""Reading image files: one function for training's image folders and for `distill predict`, so a
prediction sees exactly what training saw and every reader refuses a bad file the same way."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distill.console import note
from distill.data.resize import fit_to, size_note
from distill.errors import UserError

# PIL's own default limit (Image.MAX_IMAGE_PIXELS, about 9459 x 9459), pinned so that a change
# upstream or elsewhere in the process cannot lift it.
MAX_PIXELS = 89_478_485
# read_image refuses images over MAX_PIXELS itself, with a message naming the file; PIL's
# warning for those between its limit and twice it would only add a second, vaguer line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the file's extension is one PIL opens: what a folder of images is made of, for
    training and prediction alike (a Thumbs.db or notes.txt beside the images is not one)."""
    return Path(path).suffix.lower() in _OPENABLE


_OPENABLE = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


def read_image(
    path: str | os.PathLike, size: tuple[int, int], seen: list[tuple[int, int]] | None = None
) -> np.ndarray:
    """uint8 [H, W, 3] RGB of `path` at `size` (H, W): resized on its shorter side and
    centre-cropped where it differs (distill/data/resize.py). `seen` collects each file's own
    (width, height).

    Every reader of image files comes here (training's image folders, `distill predict`), so a
    file is accepted or refused the same way everywhere: any mode (palette, grey, RGBA, CMYK,
    16-bit) becomes three uint8 channels; an image of more than MAX_PIXELS pixels (a
    decompression bomb: a small file that decodes to gigabytes) and a file that is not an image
    are UserErrors naming it.
    """
    try:
        with Image.open(path) as im:  # reads the header only: the size is known before decoding
            if im.width * im.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{im.width}x{im.height}")
            if im.mode != "RGB":
                im = im.convert("RGB")
            if seen is not None:
                seen.append(im.size)  # list.append is atomic: decode_images' threads share it
            return np.asarray(fit_to(im, size))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # (warnings as errors)
        raise UserError(
            f"{path} has more than {MAX_PIXELS:,} pixels, the limit for an image (a guard against "
            "decompression bombs); downscale it or remove it"
        ) from None
    except Exception as e:  # any failure to decode means the file is not an image we can use
        reason = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable image ({reason}); remove it or replace it with an image"
        ) from None


def decode_images(
    paths: Sequence[Path], size: int, chunk: int = 512, where: str = "the folder"
) -> torch.Tensor:
    """Decode files into one uint8 [N, 3, size, size] tensor with a thread pool (PIL releases the
    GIL while decoding; chunks keep the pool's per-task overhead small). One note says what was
    done to the images of another size."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    seen: list[tuple[int, int]] = []

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            out[i] = read_image(paths[i], (size, size), seen)

    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(work, range(0, len(paths), chunk)):
            pass
    finally:
        # On a bad file, stop at once rather than decode the rest of the folder first.
        pool.shutdown(wait=True, cancel_futures=True)
    said = size_note(seen, size, where)
    if said:
        note(said)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
