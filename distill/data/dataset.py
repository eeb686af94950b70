"""A data set in memory: uint8 splits, classes, normalisation and a record of where it came from.

`load_data(settings)` decodes the source once (or reads its cached decode), then draws the seeded
splits on every call (cheap): `val_size` images held out of the training source, equal per class
where possible; `train_size` an equally stratified subsample of the rest; the source's own test
split when it has one. The validation split does not depend on `train_size`, so a model trained on
a subsample is validated on the same images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import UserError
from distill.settings import DataSettings


# eq=False: field-wise == on tensors is ambiguous; splits and datasets compare by identity.
@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8 [N, 3, H, W], CPU
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 [{len(self.images)}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> Split:
        return Split(self.images[idx], self.labels[idx])


@dataclass(frozen=True, eq=False)
class Decoded:
    """Every image of a source, as decoded once and cached: the training and test splits."""

    classes: tuple[str, ...]
    train: Split
    test: Split | None


@dataclass(frozen=True, eq=False)
class Dataset:
    train: Split
    val: Split
    test: Split | None
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, [0,1] units, of the train split
    std: tuple[float, float, float]
    # plain values: source, source_id, split_seed, train_size, val_size, test_size (0: none),
    # num_classes, image_size, format
    info: dict

    @property
    def input_size(self) -> tuple[int, int, int]:
        _, c, h, w = self.train.images.shape
        return (c, h, w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_data(settings: DataSettings) -> Dataset:
    """Decode (or read from the cache) the source, then draw the seeded splits.

    Raises UserError, with one line saying what to do, on anything the user can fix.
    """
    from distill.data.cache import cached_decode
    from distill.data.sources import resolve_source
    from distill.data.splits import channel_stats, split_indices
    from distill.timing import phase

    if not settings.source:
        raise UserError("no data given; pass --data (cifar10, cifar100 or a folder)")
    with phase("data: scan the source"):
        source = resolve_source(settings)
    decoded = cached_decode(source, settings)
    with phase("data: split"):
        train_idx, val_idx = split_indices(
            decoded.train.labels,
            len(decoded.classes),
            val_size=settings.val_size,
            train_size=settings.train_size,
            seed=settings.split_seed,
            class_names=decoded.classes,
        )
        train, val = decoded.train.take(train_idx), decoded.train.take(val_idx)
        mean, std = channel_stats(train.images)
    info = {
        "source": source.name,
        "source_id": source.source_id,
        "format": source.kind,
        "split_seed": settings.split_seed,
        "train_size": len(train),
        "val_size": len(val),
        "test_size": len(decoded.test) if decoded.test is not None else 0,
        "num_classes": len(decoded.classes),
        "image_size": settings.image_size,
    }
    return Dataset(train, val, decoded.test, decoded.classes, mean, std, info)
