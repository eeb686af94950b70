"""Batched augmentation on the training device: whole-batch tensor ops, no per-image Python.

Every function takes a `torch.Generator` on the batch's device and draws all its randomness from
it, so a batch is a pure function of (images, generator seed). Nothing here reads a value back to
the host: no `.item()`, no boolean-mask indexing, hence no CUDA sync point in the training loop.
Geometric ops run on uint8 (a quarter of the memory traffic of float32); the rest on float.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.settings import AugmentSettings

# ITU-R 601-2 luma, the weights PIL and torchvision use for grayscale.
LUMA = (0.299, 0.587, 0.114)


def augment_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a uint8 [B, C, H, W] batch on its device.

    Returns (float32 [B, C, H, W] in [0, 1], targets): targets are the int64 labels [B], or, when
    `config.mixes`, float32 [B, num_classes] rows summing to 1. `resized_crop` takes the place of
    the padded crop when both are set. With both Mixup and CutMix on, each batch uses one of the
    two with probability 1/2 (as timm does).
    """
    x = images
    if config.resized_crop:
        x = batch_resized_crop(x.float(), generator)  # interpolation needs floats
    elif config.crop_pad > 0:
        x = batch_crop(x, config.crop_pad, generator)
    if config.flip:
        x = batch_flip(x, generator)
    if config.cutout > 0:
        x = batch_cutout(x, config.cutout, generator)
    x = x.float() / 255  # out of place: never writes into the caller's tensor
    if config.grayscale > 0:
        x = batch_grayscale(x, config.grayscale, generator)
    if not config.mixes:
        return x, labels
    targets = F.one_hot(labels, num_classes).float()
    if config.mixup > 0 and config.cutmix > 0:
        x_mix, t_mix = mixup(x, targets, config.mixup, generator)
        x_cut, t_cut = cutmix(x, targets, config.cutmix, generator)
        # Both are computed and one kept by a coin on the device: cheap next to the model, and
        # choosing on the host would need the coin's value there (a sync point).
        use_cut = torch.rand((), generator=generator, device=x.device) < 0.5
        return torch.where(use_cut, x_cut, x_mix), torch.where(use_cut, t_cut, t_mix)
    if config.mixup > 0:
        return mixup(x, targets, config.mixup, generator)
    return cutmix(x, targets, config.cutmix, generator)


def batch_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad every image by `pad` and crop it back to its size at its own random offset.

    One gather over the flattened padded batch with per-image index grids (no loop over the
    (2*pad+1)^2 offsets). Any dtype; pad 0 returns an equal tensor.
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b, 1, 1), generator=generator, device=dev)
    rows = offsets[0] + torch.arange(h, device=dev).view(1, h, 1)  # [B, H, 1]
    cols = offsets[1] + torch.arange(w, device=dev).view(1, 1, w)  # [B, 1, W]
    flat = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).view(b, c, h, w)


def batch_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    b = images.shape[0]
    flip = torch.rand(b, generator=generator, device=images.device) < p
    return torch.where(flip.view(b, 1, 1, 1), images.flip(3), images)


def batch_cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a size x size square per image at a uniformly random centre, clipped at the borders.

    The centre may lie anywhere in the image, so squares near an edge are partly outside it, as in
    DeVries & Taylor (2017), who found that this matters.
    """
    b, _, h, w = images.shape
    dev = images.device
    centre = torch.rand(2, b, 1, 1, generator=generator, device=dev)
    top = (centre[0] * h).long() - size // 2  # [B, 1, 1]
    left = (centre[1] * w).long() - size // 2
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside.unsqueeze(1), 0)


def batch_grayscale(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each float RGB image by its luma in all three channels with probability p."""
    b = images.shape[0]
    # Python-scalar weights: a weight tensor built from a list would be a blocking host-to-device
    # copy, i.e. a sync point, on every batch.
    red, green, blue = images.unbind(1)
    gray = (red * LUMA[0] + green * LUMA[1] + blue * LUMA[2]).unsqueeze(1).expand_as(images)
    chosen = torch.rand(b, generator=generator, device=images.device) < p
    return torch.where(chosen.view(b, 1, 1, 1), gray, images)


def batch_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Random-resized-crop of float images back to their size, one affine grid for the batch.

    Per image: area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`, each side
    clipped to the image (torchvision retries instead; clipping keeps it one tensor op), the box
    placed uniformly inside the image, then bilinear resampling.
    """
    b, c, h, w = images.shape
    dev = images.device
    u = torch.rand(4, b, generator=generator, device=dev)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    box_w = torch.sqrt(area * aspect).clamp(max=1.0)  # fraction of the image's width
    box_h = torch.sqrt(area / aspect).clamp(max=1.0)
    # In normalised coordinates ([-1, 1]) the box centre ranges over +-(1 - side).
    shift_x = (2 * u[2] - 1) * (1 - box_w)
    shift_y = (2 * u[3] - 1) * (1 - box_h)
    zero = torch.zeros_like(box_w)
    theta = torch.stack(
        [torch.stack([box_w, zero, shift_x], 1), torch.stack([zero, box_h, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _beta(alpha: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    # torch.distributions.Beta takes no generator; it samples through this same op.
    concentration = torch.full((2,), float(alpha), device=device)
    return torch._sample_dirichlet(concentration, generator=generator)[0]


def mixup(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): lam ~ Beta(alpha, alpha) for the batch, each image blended
    with a random partner; soft targets [B, K] blended with the same lam."""
    lam = _beta(alpha, generator, images.device)
    partner = torch.randperm(images.shape[0], generator=generator, device=images.device)
    # lerp(a, b, lam) = a + lam * (b - a) = lam * own + (1 - lam) * partner
    return (
        torch.lerp(images[partner], images, lam.to(images.dtype)),
        torch.lerp(targets[partner], targets, lam.to(targets.dtype)),
    )


def cutmix(
    images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019): a box of area about (1 - lam) of the image, lam ~ Beta(alpha,
    alpha), pasted from a random partner; targets weighted by the box's actual area after
    clipping at the borders, so label weights match the pixels."""
    b, _, h, w = images.shape
    dev = images.device
    lam = _beta(alpha, generator, dev)
    partner = torch.randperm(b, generator=generator, device=dev)
    side = torch.sqrt(1 - lam)
    box_h, box_w = (side * h).long(), (side * w).long()
    centre = torch.rand(2, generator=generator, device=dev)
    top = (centre[0] * h).long() - box_h // 2
    left = (centre[1] * w).long() - box_w // 2
    rows = torch.arange(h, device=dev).view(h, 1)
    cols = torch.arange(w, device=dev).view(1, w)
    box = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    own = 1 - box.sum().to(targets.dtype) / (h * w)  # actual share of the image's own pixels
    mixed = torch.where(box, images[partner], images)
    return mixed, torch.lerp(targets[partner], targets, own)
