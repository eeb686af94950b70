"""`BatchLoader`: a split held on the training device as uint8, augmented and normalised there in
whole batches (SPEC 8, airbench's CifarLoader): no DataLoader workers, no per-image Python."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from distill.augment import augment_batch
from distill.data.dataset import Dataset, Split
from distill.kd.views import strong_view
from distill.settings import AugmentSettings


def _seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple: neighbouring tuples give unrelated streams (seed + epoch
    would make epoch 1 of seed 0 replay epoch 0 of seed 1)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Batch(NamedTuple):
    """One training step's batch: `x` and `targets` as `BatchLoader.epoch` yields them, each
    image's index in the split (CRD's memory bank is keyed by it) and, for MLKD, a strongly
    augmented view of the same images (None unless the loader makes one)."""

    x: torch.Tensor
    targets: torch.Tensor
    index: torch.Tensor
    strong: torch.Tensor | None = None


def drops_last(images: int, batch_size: int, world_size: int = 1) -> bool:
    """Whether training drops the last partial global batch: always, unless the set is smaller
    than one global batch (then that one smaller batch is the epoch)."""
    return images >= batch_size * world_size


def steps_per_epoch(images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one training epoch over `images` at `batch_size` per process."""
    global_batch = batch_size * world_size
    if drops_last(images, batch_size, world_size):
        return images // global_batch
    return math.ceil(images / global_batch)


class BatchLoader:
    """Batches of one split, held on `device` as uint8, augmented and normalised there.

    Each epoch is a permutation drawn on the CPU from (seed, epoch), the same on every rank; rank
    r takes `perm[r::world_size]`, with every rank's shard made the same length (wrapping around
    to the start of the permutation, or truncating when drop_last), as DistributedSampler does,
    so every rank runs the same number of steps. `even_shards=False` (evaluation) leaves the
    shards as they fall: every image is seen exactly once over all ranks, so sums over ranks
    equal a single process's.
    Augmentation at step s draws from a generator on the device seeded from (seed, epoch, s,
    rank). So order and augmentation are a pure function of (seed, epoch, step) and
    `epoch(e, start_step=k)` yields exactly the batches k.. of `epoch(e)`.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        augment: AugmentSettings | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        even_shards: bool = True,
        strong_view: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if len(split) == 0:
            raise ValueError("the split is empty")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.size = len(split)
        self.even_shards = even_shards
        self.strong_view = strong_view

        images, labels = split.images, split.labels
        if self.device.type == "cuda" and images.device.type == "cpu":
            # pinned host memory makes the one upload asynchronous
            images, labels = images.pin_memory(), labels.pin_memory()
        self.images = images.to(self.device, non_blocking=True)
        self.labels = labels.to(self.device, non_blocking=True)

        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        # (x/255 - mean)/std as one fused multiply-add: x * scale + shift.
        self._shift = -mean_t / std_t
        self._scale_uint8 = 1 / (255 * std_t)
        self._scale_unit = 1 / std_t
        self._generator = torch.Generator(device=self.device)

        if not even_shards:
            self.shard_size = len(range(rank, self.size, world_size))
            self.num_batches = math.ceil(self.shard_size / batch_size)
        elif drop_last:
            self.shard_size = self.size // world_size
            self.num_batches = self.shard_size // batch_size
        else:
            self.shard_size = math.ceil(self.size / world_size)
            self.num_batches = math.ceil(self.shard_size / batch_size)

    @classmethod
    def of(
        cls, data: Dataset, split: Split, batch_size: int, *, device: torch.device | str, **kw
    ) -> BatchLoader:
        """A loader over one of `data`'s splits with the data set's normalisation and classes."""
        return cls(
            split,
            batch_size,
            device=device,
            mean=data.mean,
            std=data.std,
            num_classes=data.num_classes,
            **kw,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return self.num_batches

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in batch order (CPU int64)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed("order", self.seed, epoch))
            perm = torch.randperm(self.size, generator=gen)
        else:
            perm = torch.arange(self.size)
        if not self.even_shards:
            return perm[self.rank :: self.world_size]
        total = self.shard_size * self.world_size
        if total > self.size:  # pad by wrapping so that every rank runs the same number of steps
            perm = perm.repeat(math.ceil(total / self.size))
        return perm[:total][self.rank :: self.world_size]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, targets) for steps start_step.. of `epoch`.

        x: normalised float32 [B, 3, H, W] on the device (channels_last if asked); targets: int64
        labels [B], or float32 soft targets [B, num_classes] when the augmentation mixes images.
        """
        for b in self.batches(epoch, start_step):
            yield b.x, b.targets

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """`epoch`'s batches with each image's index (and the strong view, when asked for)."""
        if not 0 <= start_step <= self.num_batches:
            raise ValueError(f"start_step {start_step} is not in [0, {self.num_batches}]")
        idx = self.indices(epoch)
        if self.device.type == "cuda":
            idx = idx.pin_memory()
        idx = idx.to(self.device, non_blocking=True)  # one upload per epoch, no sync per step
        bs = self.batch_size
        for step in range(start_step, self.num_batches):
            batch = idx[step * bs : (step + 1) * bs]
            images, labels = self.images[batch], self.labels[batch]
            strong = None
            if self.augment is not None:
                self._generator.manual_seed(_seed("augment", self.seed, epoch, step, self.rank))
                x, targets = augment_batch(
                    images, labels, self.num_classes, self.augment, self._generator
                )
                x = torch.addcmul(self._shift, x, self._scale_unit)
                if self.strong_view:  # drawn after the weak view, from the same stream
                    strong = torch.addcmul(
                        self._shift, strong_view(images, self._generator), self._scale_unit
                    )
            else:
                x, targets = torch.addcmul(self._shift, images.float(), self._scale_uint8), labels
                if self.strong_view:
                    strong = x
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
                if strong is not None:
                    strong = strong.contiguous(memory_format=torch.channels_last)
            yield Batch(x, targets, batch, strong)
