"""CONTRACT: datasets decoded once, cached as uint8 tensors, held in memory; seeded splits;
a batch loader that augments on the training device.

from dataclasses import dataclass

@dataclass(frozen=True)
class DataConfig:
    source: str                 # "cifar10" | "cifar100" | path (CIFAR python folder or image folder)
    data_root: Path = Path("~/.cache/distill").expanduser()   # where cifar10/cifar100 download to
    cache_dir: Path = Path("~/.cache/distill").expanduser()   # decoded uint8 cache; never beside the data
    val_size: int = 5000        # seeded, stratified, held out of the training set
    train_size: int | None = None   # stratified subsample of what is left, for quick runs
    seed: int = 0
    image_size: int = 32        # image folders with other sizes are resized to this

@dataclass(frozen=True)
class Split:
    images: torch.Tensor        # uint8 [N, 3, H, W], CPU
    labels: torch.Tensor        # int64 [N]

@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split | None
    classes: tuple[str, ...]
    mean: tuple[float, float, float]   # per channel, [0,1] units, of the train split
    std: tuple[float, float, float]
    info: dict                  # plain values: source, source_id, split_seed, train_size, val_size, test_size
    @property input_size -> tuple[int, int, int]   # (3, H, W)
    @property num_classes -> int

def load_data(config: DataConfig) -> Dataset      # raises UserError on bad input

class BatchLoader:
    def __init__(self, split: Split, batch_size: int, *, device, mean, std, num_classes,
                 augment: AugmentConfig | None = None, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False): ...
    def __len__(self) -> int            # batches per epoch (this rank's)
    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor]]
        # yields (x normalized float32 [B,3,H,W] on device, targets) where targets are int64 labels,
        # or float soft targets [B, num_classes] when augment.mixes. Order and augmentation are a pure
        # function of (seed, epoch, step): resuming at start_step reproduces the rest of the epoch.
"""
