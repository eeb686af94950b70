"""A data set in memory: uint8 splits, classes, normalisation and a record of where it came from.

`load_data(settings)` decodes the source once (or reads its cached decode), then draws the seeded
splits on every call (cheap): `val_size` images held out of the training source, equal per class
where possible; `train_size` an equally stratified subsample of the rest; the source's own test
split when it has one. The validation split does not depend on `train_size`, so a model trained on
a subsample is validated on the same images.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
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


def check_class_names(names: list, where: str) -> tuple[str, ...]:
    """Class names as text, each non-empty and distinct, also as the same letters written
    another way (Unicode NFC: 'é' as one code point or as 'e' and an accent looks the same)."""
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{where}: class name {name!r} is not a non-empty text; fix the names")
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            raise UserError(
                f"{where}: class {name!r} appears twice (as {seen[key]!r} too); class names "
                "must be distinct: rename or merge them"
            )
        seen[key] = name
    return tuple(names)


@dataclass(frozen=True, eq=False)
class Decoded:
    """Every image of a source, as decoded once and cached: the training and test splits."""

    classes: tuple[str, ...]
    train: Split
    test: Split | None
    sha256: str = ""  # of the tensors' bytes, as the cache records it

    @property
    def content_id(self) -> str:
        """What the data is, whatever its path or cache: classes, labels and pixels."""
        import hashlib
        import json

        text = json.dumps([list(self.classes), self.sha256])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Dataset:
    train: Split
    val: Split
    test: Split | None
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, [0,1] units, of the train split
    std: tuple[float, float, float]
    # plain values: source, source_id (a digest of the decoded content, not of the path),
    # split_seed, train_size, val_size, test_size (0: none), num_classes, image_size, format
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
    from distill import distributed
    from distill.data.cache import cached_decode
    from distill.data.sources import resolve_source
    from distill.data.splits import channel_stats, split_indices
    from distill.timing import phase

    if not settings.source:
        raise UserError("no data given; pass --data (cifar10, cifar100 or a folder)")
    # Every step under `agree`: a folder one rank cannot see is every rank's one-line error.
    with phase("data: scan the source"):
        source = distributed.agree(lambda: resolve_source(settings))
    decoded = decode_once(lambda: cached_decode(source, settings))
    with phase("data: split"):
        train_idx, val_idx = distributed.agree(
            lambda: split_indices(
                decoded.train.labels,
                len(decoded.classes),
                val_size=settings.val_size,
                train_size=settings.train_size,
                seed=settings.split_seed,
                class_names=decoded.classes,
            )
        )
        train, val = decoded.train.take(train_idx), decoded.train.take(val_idx)
        mean, std = channel_stats(train.images)
    info = {
        "source": source.name,
        "source_id": decoded.content_id,
        "format": source.kind,
        "split_seed": settings.split_seed,
        "train_size": len(train),
        "val_size": len(val),
        "test_size": len(decoded.test) if decoded.test is not None else 0,
        "num_classes": len(decoded.classes),
        "image_size": settings.image_size,
    }
    return Dataset(train, val, decoded.test, decoded.classes, mean, std, info)


def decode_once(decode: Callable[[], Decoded]) -> Decoded:
    """`decode()` (download, decode, write or read the cache) under torchrun without every rank
    downloading into the same folder at once: rank 0 goes first while the others wait, then the
    first rank of every other node (a hit when the cache folder is shared with rank 0's, else its
    node's one decode), then every other rank, which reads the cache its node wrote. Each turn is
    an `agree`: a failure on the rank whose turn it is ends every rank with its line."""
    from distill import distributed

    if not distributed.active():
        return decode()
    box: dict[str, Decoded] = {}
    me, first_of_node = distributed.rank(), distributed.local_rank() == 0
    for mine in (me == 0, me != 0 and first_of_node, not first_of_node):

        def turn(mine: bool = mine) -> None:
            if mine:
                box["decoded"] = decode()

        distributed.agree(turn)
    return box["decoded"]
