"""Batched augmentation: shapes, ranges, determinism and each op's defining property."""

from __future__ import annotations

import pytest
import torch

from distill.augment import (
    LUMA,
    AugmentSettings,
    augment_batch,
    batch_crop,
    batch_cutout,
    batch_flip,
    batch_grayscale,
    batch_resized_crop,
    cutmix,
    mixup,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, 12, 12), dtype=torch.uint8, generator=gen(42))


LABELS = torch.arange(16) % 10

CONFIGS = {
    "crop-flip": AugmentSettings(),
    "off": AugmentSettings(crop_pad=0, flip=False),
    "cutout-grayscale": AugmentSettings(cutout=5, grayscale=0.5),
    "resized-crop": AugmentSettings(crop_pad=0, resized_crop=True),
    "mixup": AugmentSettings(mixup=0.2),
    "cutmix": AugmentSettings(cutmix=1.0),
    "mixup-and-cutmix": AugmentSettings(mixup=0.4, cutmix=1.0, cutout=4, grayscale=0.2),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_augment_batch_contract(images, name):
    config = CONFIGS[name]
    original = images.clone()
    rng_state = torch.get_rng_state()
    x, y = augment_batch(images, LABELS, 10, config, gen(1))
    assert torch.equal(images, original)  # the caller's batch is never written
    assert torch.equal(torch.get_rng_state(), rng_state)  # all randomness from the generator
    assert x.shape == images.shape and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    if config.mixes:
        assert y.shape == (16, 10) and y.dtype == torch.float32
        assert torch.allclose(y.sum(1), torch.ones(16))
        assert (y >= 0).all()
    else:
        assert torch.equal(y, LABELS)
    same = augment_batch(images, LABELS, 10, config, gen(1))
    assert torch.equal(x, same[0]) and torch.equal(y, same[1])
    if name != "off":
        assert not torch.equal(x, augment_batch(images, LABELS, 10, config, gen(2))[0])
    else:
        assert torch.allclose(x * 255, images.float())


def test_crop_pad_zero_is_identity(images):
    assert torch.equal(batch_crop(images, 0, gen()), images)


def test_crop_takes_a_window_of_the_padded_image(images):
    pad = 2
    out = batch_crop(images, pad, gen(3))
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    offsets = set()
    for img, src in zip(out, padded, strict=True):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(img, src[:, dy : dy + 12, dx : dx + 12])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 4  # offsets differ between images


def test_flip_twice_is_identity_and_flips_some(images):
    once = batch_flip(images, gen(5))
    assert torch.equal(batch_flip(once, gen(5)), images)
    flipped = [torch.equal(a, b.flip(2)) for a, b in zip(once, images, strict=True)]
    kept = [torch.equal(a, b) for a, b in zip(once, images, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


def test_cutout_zeroes_one_clipped_square(images):
    size = 5
    ones = torch.ones(256, 3, 12, 12)
    out = batch_cutout(ones, size, gen(7))
    clipped = {"rows": 0, "cols": 0}
    for img in out:
        zero = img[0] == 0
        assert torch.equal(zero, img[1] == 0) and torch.equal(zero, img[2] == 0)
        rows = zero.any(1).nonzero().squeeze(1)
        cols = zero.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols)
        height, width = len(rows), len(cols)
        assert int(zero.sum()) == height * width  # a full rectangle, nothing else
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width
        for axis, extent, lo, hi in (
            ("rows", height, rows[0], rows[-1]),
            ("cols", width, cols[0], cols[-1]),
        ):
            assert extent <= size
            if lo > 0 and hi < 11:
                assert extent == size  # not touching a border: the whole square
            clipped[axis] += extent < size
    # the centre can sit near any edge (so the square is partly outside), but not always
    assert 0 < clipped["rows"] < 256 and 0 < clipped["cols"] < 256
    same_squares = batch_cutout(torch.ones(16, 3, 12, 12), size, gen(7))
    uint8 = batch_cutout(images, size, gen(7))
    assert uint8.dtype == torch.uint8
    assert torch.equal(uint8 == 0, (same_squares == 0) | (images == 0))


def test_grayscale(images):
    x = images.float() / 255
    gray = batch_grayscale(x, 1.0, gen())
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    luma = sum(w * x[:, c] for c, w in enumerate(LUMA))
    assert torch.allclose(gray[:, 0], luma, atol=1e-6)
    assert torch.equal(batch_grayscale(x, 0.0, gen()), x)
    half = batch_grayscale(x, 0.5, gen(1))
    changed = (half != x).flatten(1).any(1)
    assert changed.any() and not changed.all()


def test_resized_crop_full_scale_is_identity(images):
    x = images.float()
    out = batch_resized_crop(x, gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(out, x, atol=1e-3)


def test_resized_crop_zooms(images):
    ramp = torch.arange(12.0).view(1, 1, 1, 12).expand(8, 3, 12, 12).contiguous()
    out = batch_resized_crop(ramp, gen(4), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    steps = out[..., 1:] - out[..., :-1]
    # half the width shown at full size: every output pixel advances half an input pixel (the
    # first sample of a box flush with the border lies a quarter pixel out and is clamped)
    inner = steps[..., 1:]
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-4)
    assert (steps[..., 0] > 0.25 - 1e-4).all() and (steps[..., 0] < 0.5 + 1e-4).all()
    assert out.min() >= 0 and out.max() <= 11  # the box lies inside the image
    assert len(set(out[:, 0, 0, -1].tolist())) > 1  # random placement


def constant_batch(n: int = 8, classes: int = 10):
    values = torch.linspace(0.05, 0.95, n)
    x = values.view(n, 1, 1, 1).expand(n, 3, 12, 12).contiguous()
    labels = torch.arange(n)  # every image its own class
    return x, values, labels, torch.nn.functional.one_hot(labels, classes).float()


def test_mixup_blends_pixels_and_targets_alike():
    x, values, labels, targets = constant_batch()
    out, soft = mixup(x, targets, 0.4, gen(3))
    assert torch.allclose(soft.sum(1), torch.ones(8))
    for i in range(8):
        own = soft[i, labels[i]]
        partner = (soft[i] - own * targets[i]).argmax() if own < 1 else labels[i]
        expected = own * values[i] + (1 - own) * values[partner]
        assert torch.allclose(out[i], expected.expand(3, 12, 12), atol=1e-6)
    assert (soft.max(1).values < 1).any()


def test_cutmix_weights_match_pasted_area():
    x, values, labels, targets = constant_batch()
    out, soft = cutmix(x, targets, 1.0, gen(5))
    assert torch.allclose(soft.sum(1), torch.ones(8))
    for i in range(8):
        own_pixels = (out[i] == values[i]).float().mean()
        assert torch.isclose(soft[i, labels[i]], own_pixels, atol=1e-6)
    pasted = (out != x).any(1)  # [B, H, W]
    assert pasted.any()
    box = pasted[pasted.flatten(1).any(1)][0]  # one box, the same place in every image
    rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
    assert int(box.sum()) == len(rows) * len(cols)
