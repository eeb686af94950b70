"""How an image of any shape becomes the model's square input, for training, evaluation and
prediction alike: the shorter side is resized to the target and the centre cropped, so an
image keeps its aspect ratio (a stretched 4:3 photo is not what the camera saw) and loses only
its borders. This is the evaluation view; training augments it on the device with the recipe's
pad-and-crop or random-resized-crop (distill/augment.py), so nothing here is random."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from PIL import Image

POLICY = "resized on the shorter side and centre-cropped"


def fit_to(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`im` resized so that it covers `size` (H, W), then centre-cropped to it."""
    height, width = size
    if im.size == (width, height):
        return im
    scale = max(width / im.width, height / im.height)
    w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
    left, top = (w - width) // 2, (h - height) // 2
    # PIL widens the bilinear filter when shrinking, so downscaling does not alias; `box`
    # crops in the source's coordinates, so only the kept part is resampled.
    box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
    return im.resize((width, height), Image.Resampling.BILINEAR, box=box)


def size_note(sizes: Iterable[tuple[int, int]], side: int, where: str) -> str | None:
    """What was done to the images of `where` that were not `side` x `side` (sizes are PIL's
    (width, height)), or None when all were."""
    counts = Counter(s for s in sizes)
    total = sum(counts.values())
    other = {s: n for s, n in counts.items() if s != (side, side)}
    if not other:
        return None
    n = sum(other.values())
    common = ", ".join(f"{w}x{h}" for (w, h), _ in Counter(other).most_common(3))
    more = f" and {len(other) - 3} other sizes" if len(other) > 3 else ""
    return (
        f"{n:,} of {total:,} images in {where} are not {side}x{side} ({common}{more}); each is "
        f"{POLICY} to {side}x{side} (--image-size sets the side)"
    )
