"""A data set in memory: uint8 splits, classes, normalisation and a record of where it came from.

The types only: `Split`, `Decoded` (a source as decoded, before the splits) and `Dataset`;
`distill/data/load.py` makes them (so the cache and the decoders, which return these types, are
imported by the loader and never import it back).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import torch

from distill.errors import UserError, control_characters
from distill.memory import MAX_CLASSES


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
        if control := control_characters(name):
            # A name is printed in tables, reports and predictions: a newline or an escape
            # sequence in it would break a row or drive the user's terminal.
            raise UserError(
                f"{where}: class name {name!r} holds a control character ({control}); rename "
                "it to plain one-line text"
            )
        key = unicodedata.normalize("NFC", name)
        if key in seen:
            raise UserError(
                f"{where}: class {name!r} appears twice (as {seen[key]!r} too); class names "
                "must be distinct: rename or merge them"
            )
        seen[key] = name
    if len(names) > MAX_CLASSES:  # an export could not carry them; refuse before training
        raise UserError(
            f"{where}: {len(names):,} classes, more than the {MAX_CLASSES:,} a model may have; "
            "group them into fewer classes"
        )
    if len(names) < 2:  # one class: every prediction right by construction, nothing learned
        raise UserError(
            f"{where}: {len(names)} class ({', '.join(map(repr, names))}); a classifier needs "
            "at least two: add another class"
        )
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
