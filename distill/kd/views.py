"""MLKD's strong view of a batch, made on the device from the same uint8 images as the weak
one (whole-batch tensor ops, no host sync), like every other augmentation (distill.augment).

Jin et al.'s reference draws the strong view with torchvision's SimCLR-style pipeline: a
random-resized crop (scale 0.2-1), a flip, colour jitter (brightness, contrast and saturation
0.4, hue 0.1) applied with probability 0.8 and grayscale with probability 0.2. Hue jitter is left
out here (an HSV round trip per pixel for the smallest of the four changes).
"""

from __future__ import annotations

import torch

from distill.augment import LUMA, batch_flip, batch_grayscale, batch_resized_crop

STRONG_SCALE = (0.2, 1.0)
JITTER = 0.4
JITTER_P = 0.8
GRAYSCALE_P = 0.2


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def batch_color_jitter(
    x: torch.Tensor, strength: float, p: float, generator: torch.Generator
) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor uniform in [1 - s, 1 + s],
    per image, with probability p; float images in [0, 1]."""
    b = x.shape[0]
    u = torch.rand(4, b, 1, 1, 1, generator=generator, device=x.device)
    factors = 1 + strength * (2 * u[:3] - 1)
    on = (u[3] < p).to(x.dtype)
    factors = on * factors + (1 - on)  # images left alone keep factor 1
    out = x * factors[0]
    mean = _luma(out).mean((2, 3), keepdim=True)
    out = (out - mean) * factors[1] + mean
    gray = _luma(out)
    out = (out - gray) * factors[2] + gray
    return out.clamp(0, 1)


def strong_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 [B, 3, H, W] in [0, 1], strongly augmented."""
    x = batch_resized_crop(images.float() / 255, generator, scale=STRONG_SCALE)
    x = batch_flip(x, generator)
    x = batch_color_jitter(x, JITTER, JITTER_P, generator)
    if x.shape[1] == 3:
        x = batch_grayscale(x, GRAYSCALE_P, generator)
    return x
