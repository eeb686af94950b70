"""Batched augmentation on the training device: whole-batch tensor ops, no per-image Python."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentConfig:
    crop_pad: int = 4  # random crop with this much zero padding; 0: off
    flip: bool = True  # horizontal flip with probability 1/2
    cutout: int = 0  # side of a zeroed square at a random centre; 0: off
    grayscale: float = 0.0  # probability an image is turned to grayscale
    mixup: float = 0.0  # Beta(alpha, alpha) parameter; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) parameter; 0: off
    resized_crop: bool = False  # random-resized-crop (scale 0.35-1, ratio 3/4-4/3) back to size

    @property
    def mixes(self) -> bool:
        """True when targets become soft label distributions (Mixup or CutMix)."""
        return self.mixup > 0 or self.cutmix > 0


# CONTRACT (implemented by the data/augmentation work):
# def augment_batch(images: uint8 [B,C,H,W] on device, labels: int64 [B], num_classes: int,
#                   config: AugmentConfig, generator: torch.Generator)
#     -> (float32 [B,C,H,W] in [0,1], targets)
#   targets: int64 labels [B] when not config.mixes, else float32 [B,num_classes] rows summing to 1.
