"""Seeded, stratified splits and per-channel statistics: pure functions of their arguments."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distill.errors import UserError


def even_quotas(caps: Sequence[int], total: int) -> list[int]:
    """Split `total` over classes as equally as the per-class `caps` allow (water filling).

    Classes below the common level take all they have; the remainder of an uneven division goes
    one each to the lowest-numbered classes with room. Requires total <= sum(caps).
    """
    if total > sum(caps):
        raise ValueError(f"total {total} exceeds the capacity {sum(caps)}")
    lo, hi = 0, max(caps, default=0)
    while lo < hi:  # the highest level whose quotas still fit in total
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in caps) <= total:
            lo = mid
        else:
            hi = mid - 1
    quotas = [min(c, lo) for c in caps]
    extra = total - sum(quotas)
    for k, cap in enumerate(caps):
        if extra == 0:
            break
        if cap > lo:
            quotas[k] += 1
            extra -= 1
    return quotas


def split_indices(
    labels: torch.Tensor,
    num_classes: int,
    *,
    val_size: int,
    train_size: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into `labels`, disjoint, sorted, a pure function of the arguments.

    Validation takes `val_size` images, equal per class where possible, each class keeping at
    least one for training; training takes `train_size` of the rest (all of it when None), also
    equal per class. Within a class the images are taken in one seeded random order, validation
    first, so the validation split does not depend on `train_size`.
    """
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    counts = torch.bincount(labels, minlength=num_classes)
    n = len(labels)
    for c, k in enumerate(counts.tolist()):
        if k < 2:
            raise UserError(
                f"class {names[c]!r} has {k} training image(s); every class needs at least 2 "
                "(one to validate on, one to train on): add images or remove the class"
            )
    if val_size < num_classes:
        raise UserError(
            f"--val-size {val_size} is smaller than the number of classes ({num_classes}); "
            f"pass at least {num_classes} so that every class is validated"
        )
    if val_size > n - num_classes:
        raise UserError(
            f"--val-size {val_size} leaves no training images for some classes ({n} images in "
            f"{num_classes} classes); pass at most {n - num_classes}"
        )
    val_q = even_quotas([k - 1 for k in counts.tolist()], val_size)
    rest = [k - v for k, v in zip(counts.tolist(), val_q, strict=True)]
    if train_size is None:
        train_q = rest
    elif train_size < num_classes:
        raise UserError(
            f"--train-size {train_size} is smaller than the number of classes ({num_classes}); "
            f"pass at least {num_classes}, or omit it to train on everything"
        )
    elif train_size > sum(rest):
        raise UserError(
            f"--train-size {train_size} is more than the {sum(rest)} images left after "
            f"--val-size {val_size}; pass at most {sum(rest)}, or omit it"
        )
    else:
        train_q = even_quotas(rest, train_size)

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[torch.argsort(labels[perm], stable=True)]  # grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)  # position of each image in its class's order
    rank[order] = torch.arange(n) - starts[labels[order]]
    val_cut = torch.tensor(val_q)[labels]
    val = rank < val_cut
    train = ~val & (rank < val_cut + torch.tensor(train_q)[labels])
    return train.nonzero().squeeze(1), val.nonzero().squeeze(1)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0,1] units, exact (from a 256-bin histogram per channel,
    which needs no float copy of the whole set)."""
    levels = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        m = (hist * levels).sum() / hist.sum()
        var = (hist * (levels - m) ** 2).sum() / hist.sum()
        mean.append(float(m) / 255)
        # A constant channel would divide by zero when normalising; one grey level is the floor.
        std.append(max(float(var.sqrt()) / 255, 1 / 255))
    return tuple(mean), tuple(std)
