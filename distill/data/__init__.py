"""Data sets decoded once, cached as uint8 tensors, held in memory; seeded splits; a batch loader
that augments whole batches on the training device (SPEC 8).

- `sources`: what `--data` names (cifar10/cifar100 downloads, CIFAR python folders, image
  folders) and a fingerprint of its content;
- `cifar`, `images`: decoding the python format and image files;
- `decode`: an image folder decoded once, on every core, with progress;
- `cache`: the decoded source on disk, checksummed;
- `splits`: seeded stratified splits and channel statistics;
- `dataset`: the types, `Dataset` (train/val/test `Split`s, classes, mean/std, a record);
- `load`: `load_data` (decode or read the cache, draw the splits) -> `Dataset`;
- `loader`: `BatchLoader`, sharded per rank.
"""

from distill.data.dataset import Dataset, Split
from distill.data.images import read_image
from distill.data.load import load_data
from distill.data.loader import BatchLoader
from distill.data.splits import channel_stats, even_quotas, split_indices
from distill.settings import DataSettings

__all__ = [
    "BatchLoader",
    "DataSettings",
    "Dataset",
    "Split",
    "channel_stats",
    "even_quotas",
    "load_data",
    "read_image",
    "split_indices",
]
