"""Which stem a model gets for its input size.

The CIFAR stem (3x3 conv, stride 1, no pooling) keeps every pixel of a 32x32 image, and the
stages then run at 32, 16, 8 and 4 pixels. At 96 pixels the same network costs 9x the MACs of
32 and at 224 pixels 49x, for detail the first layers cannot use. The ImageNet stem (7x7 stride
2 then a 3x3 stride-2 max-pool, He et al. 2016) divides the side by four first: at 96 pixels a
network costs about half what it costs at 32 with the CIFAR stem. `auto` picks it from 64
pixels up, where its stages still see at least 16x16 maps.
"""

from __future__ import annotations

from typing import Literal

StemChoice = Literal["auto", "cifar", "imagenet"]
IMAGENET_STEM_FROM = 64  # pixels, the shorter side of the model's input
STEM_HELP = (
    "The model's stem: cifar (3x3, stride 1, no pooling), imagenet (7x7 stride 2 + max-pool: "
    f"a quarter of the side, for large images), or auto: imagenet from {IMAGENET_STEM_FROM} "
    "pixels up. Counted in the budget and MACs."
)


def choose_stem(asked: str, side: int) -> str:
    """The stem for an input of `side` pixels when `asked` is auto, else `asked`."""
    if asked == "auto":
        return "imagenet" if side >= IMAGENET_STEM_FROM else "cifar"
    return asked
