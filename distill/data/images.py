"""Reading image files: one function for training's image folders and for `distill predict`, so a
prediction sees exactly what training saw and every reader refuses a bad file the same way."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

from distill.data.resize import fit_to
from distill.errors import UserError, first_line

# PIL's own default limit (Image.MAX_IMAGE_PIXELS, about 9459 x 9459), pinned so that a change
# upstream or elsewhere in the process cannot lift it.
MAX_PIXELS = 89_478_485
# read_image refuses images over MAX_PIXELS itself, with a message naming the file; PIL's
# warning for those between its limit and twice it would only add a second, vaguer line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether the file's extension is one PIL opens: what a folder of images is made of, for
    training and prediction alike (a Thumbs.db or notes.txt beside the images is not one)."""
    return os.path.splitext(path)[1].lower() in _OPENABLE


_OPENABLE = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


# Modes PIL converts to RGB without losing what the image means: 8-bit grey, palette, bilevel,
# alpha (dropped: the colour under it is kept, as torchvision's loader does), CMYK, YCbCr.
_TO_RGB = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
)
# Integer modes of more than 8 bits (16-bit PNG and TIFF): PIL's convert("RGB") clips them at
# 255, which turns a 16-bit image white, so they are scaled to 8 bits here instead.
_WIDE_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# What a data summary calls each converted mode.
_MODE_NAMES = {"1": "bilevel", "L": "greyscale", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr"}


def _mode_name(mode: str) -> str:
    if mode in _WIDE_GREY:
        return "16-bit greyscale"
    if "A" in mode or mode == "RGBa":
        return "with alpha"
    return _MODE_NAMES.get(mode, mode)


def _wide_grey_to_rgb(im: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer holding 16-bit) grey image as 8-bit RGB, scaled, not clipped."""
    grey = np.asarray(im).astype(np.int64)
    if grey.size and (grey.min() < 0 or grey.max() > 65535):
        raise ValueError(f"{im.mode} pixel values outside 0..65535")
    eight = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # rounded: 65535 -> 255, 257 -> 1
    return Image.fromarray(eight, "L").convert("RGB")


def to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """`im` upright (by its EXIF orientation) in 8-bit RGB, and what was done to get there.

    Every mode PIL opens is either converted faithfully or refused by name (floating point,
    LAB, HSV and multi-channel 16-bit would need a choice of range the file does not state).
    """
    done = []
    orientation = im.getexif().get(0x0112, 1)  # 0x0112: EXIF Orientation; 1 is upright
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        done.append("turned upright by its EXIF orientation")
    if im.mode == "RGB":
        return im, done
    if im.mode in _WIDE_GREY:
        rgb = _wide_grey_to_rgb(im)
    elif im.mode in _TO_RGB:
        rgb = im.convert("RGB")
    else:
        raise _Unsupported(im.mode)
    return rgb, [*done, f"converted from {_mode_name(im.mode)}"]


class _Unsupported(Exception):
    def __init__(self, mode: str) -> None:
        super().__init__(mode)
        self.mode = mode


def read_image(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB of `path`, upright, at `size` (H, W): resized on its shorter side and
    centre-cropped where it differs (distill/data/resize.py)."""
    return read_image_noting(path, size)[0]


def read_image_noting(
    path: str | os.PathLike, size: tuple[int, int], seen: list[tuple[int, int]] | None = None
) -> tuple[np.ndarray, list[str]]:
    """`read_image` and what was done to the file on the way (for the data summary); `seen`
    collects each file's own (width, height).

    Every reader of image files comes here (training's image folders, `distill predict`, int8
    calibration through the training data), so a file is accepted or refused the same way
    everywhere (`to_rgb`); an image of more than MAX_PIXELS pixels (a decompression bomb: a
    small file that decodes to gigabytes) and a file that is not an image are UserErrors
    naming it.
    """
    with _refused_by_name(path), _opened(path) as im:
        im, done = to_rgb(im)
        if seen is not None:
            seen.append(im.size)
        return np.asarray(fit_to(im, size)), done


def check_image(path: str | os.PathLike) -> None:
    """What `read_image` would refuse that the header tells (not an image, a decompression
    bomb, a mode with no faithful RGB form), found without decoding the pixels: a reader of
    many files checks them all before spending time on any."""
    with _refused_by_name(path), _opened(path) as im:
        if im.mode != "RGB" and im.mode not in _WIDE_GREY and im.mode not in _TO_RGB:
            raise _Unsupported(im.mode)


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[Image.Image]:
    with Image.open(path) as im:  # reads the header only: the size is known before decoding
        if im.width * im.height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"{im.width}x{im.height}")
        yield im


@contextlib.contextmanager
def _refused_by_name(path: str | os.PathLike) -> Iterator[None]:
    """Any failure to read `path` as a UserError naming it and saying what to do."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # (warnings as errors)
        raise UserError(
            f"{path} has more than {MAX_PIXELS:,} pixels, the limit for an image (a guard against "
            "decompression bombs); downscale it or remove it"
        ) from None
    except _Unsupported as e:
        raise UserError(
            f"{path} is a {e.mode!r} image, which has no faithful 8-bit RGB form; save it as "
            "8-bit RGB, greyscale or 16-bit greyscale, or remove it"
        ) from None
    except Exception as e:  # any failure to decode means the file is not an image we can use
        reason = first_line(e, 80)
        raise UserError(
            f"{path} is not a readable image ({reason}); remove it or replace it with an image"
        ) from None
