"""Datasets decoded once, cached as uint8 tensors, held in memory; seeded splits; a batch loader
that augments whole batches on the training device (SPEC 8).

Sources (`DataConfig.source`):

- `cifar10` / `cifar100`: the official python-format archives, downloaded with torchvision's
  download code into `data_root` on first use;
- a folder holding `cifar-10-batches-py` or `cifar-100-python`, or being one;
- an image folder: `train/<class>/*` and, if present, `test/<class>/*`; or class folders directly.
  Classes are the folder names in sorted order; images are converted to RGB and resized to
  `image_size` where their size differs.

The decoded source (every image of each source split as one uint8 [N, 3, H, W] tensor) is written
once under `cache_dir` with `atomic_save` and read back with `torch.load(weights_only=True)`. It is
keyed by the source's absolute path plus a cheap fingerprint (file count, total bytes, newest
mtime), so editing the folder invalidates it; nothing is ever written beside the source.

Splits are drawn from the cached source on every load (cheap): `val_size` images held out of the
training source, seeded and equal per class where possible; `train_size` an equally stratified
subsample of the rest; the source's own test split when it has one. The validation split does not
depend on `train_size`, so a model trained on a subsample is validated on the same images.

`BatchLoader` holds a split on the training device as uint8 and yields normalised float batches.
Order and augmentation are a pure function of (seed, epoch, step) and each rank of a distributed
run reads its own disjoint shard of every epoch.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distill.augment import AugmentConfig, augment_batch
from distill.errors import UserError

DEFAULT_DIR = Path("~/.cache/distill").expanduser()
DATASET_NAMES = ("cifar10", "cifar100")
CACHE_FORMAT = "distill-data-cache"
CACHE_VERSION = 1
IMAGE_FOLDER_SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataConfig:
    source: str  # "cifar10" | "cifar100" | path (CIFAR python folder or image folder)
    data_root: Path = DEFAULT_DIR  # where cifar10/cifar100 download to
    cache_dir: Path = DEFAULT_DIR  # decoded uint8 cache; never beside the data
    val_size: int = 5000  # seeded, stratified, held out of the training set
    train_size: int | None = None  # stratified subsample of what is left, for quick runs
    seed: int = 0
    image_size: int = 32  # image folders with other sizes are resized to this

    def __post_init__(self) -> None:
        # The CLI hands over strings and "~"; frozen, hence object.__setattr__.
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "data_root", Path(self.data_root).expanduser())
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())


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


# ---------------------------------------------------------------------------------------------
# Loading


def load_data(config: DataConfig) -> Dataset:
    """Decode (or read from the cache) the source, then draw the seeded splits.

    Raises UserError, with one line saying what to do, on anything the user can fix.
    """
    if config.image_size < 1:
        raise UserError(f"image size {config.image_size} must be positive; pass e.g. 32")
    source = _resolve_source(config)
    decoded = _cached_decode(source, config)
    train_idx, val_idx = split_indices(
        decoded.train.labels,
        len(decoded.classes),
        val_size=config.val_size,
        train_size=config.train_size,
        seed=config.seed,
        class_names=decoded.classes,
    )
    train = _take(decoded.train, train_idx)
    val = _take(decoded.train, val_idx)
    mean, std = channel_stats(train.images)
    info = {
        "source": source.name,
        "source_id": source.source_id,
        "format": source.kind,
        "split_seed": config.seed,
        "train_size": len(train),
        "val_size": len(val),
        "test_size": len(decoded.test) if decoded.test is not None else 0,
        "num_classes": len(decoded.classes),
        "image_size": config.image_size,
    }
    return Dataset(train, val, decoded.test, decoded.classes, mean, std, info)


@dataclass(frozen=True, eq=False)
class _Decoded:
    classes: tuple[str, ...]
    train: Split
    test: Split | None


@dataclass(frozen=True)
class _Source:
    kind: str  # "cifar10" | "cifar100" (python format) | "image-folder"
    name: str  # what info["source"] records: a dataset name or an absolute path
    folder: Path  # the folder read (for a download: where it is, or will be, extracted)
    download: str | None  # the dataset name when it comes from torchvision's download
    fingerprint: str  # changes whenever the source's content may have changed
    image_files: tuple[tuple[str, tuple[Path, ...]], ...] = ()  # image folders: (split, files)
    image_labels: tuple[tuple[int, ...], ...] = ()
    classes: tuple[str, ...] = ()

    @property
    def source_id(self) -> str:
        return _digest(f"{self.kind}|{self.name}|{self.fingerprint}")[:16]


def _resolve_source(config: DataConfig) -> _Source:
    name = config.source.strip()
    if name.lower() in DATASET_NAMES:  # a local folder of that name is passed as ./cifar10
        kind = name.lower()
        base = config.data_root.resolve() / _cifar_layout(kind)["folder"]
        # The official archive is md5-checked on download, so the name alone identifies it.
        return _Source(kind, kind, base, kind, fingerprint=kind)
    path = Path(name).expanduser()
    if not path.exists():
        if os.sep not in name and "/" not in name and not name.startswith("."):
            raise UserError(
                f"unknown dataset {name!r} (and no folder of that name); pass cifar10, cifar100, "
                "or a path to a CIFAR python folder or an image folder"
            )
        raise UserError(
            f"data path {path} does not exist; pass cifar10, cifar100, a folder holding "
            "cifar-10-batches-py or cifar-100-python, or an image folder"
        )
    if not path.is_dir():
        raise UserError(f"{path} is a file; pass a CIFAR python folder or an image folder")
    path = path.resolve()
    for kind in DATASET_NAMES:
        layout = _cifar_layout(kind)
        for folder in (path / layout["folder"], path):
            if all((folder / f).is_file() for f in layout["train"] + [layout["meta"]]):
                _refuse_cache_inside(config.cache_dir, folder)
                return _Source(kind, str(folder), folder, None, _fingerprint(folder))
    _refuse_cache_inside(config.cache_dir, path)
    return _scan_image_folder(path)


def _refuse_cache_inside(cache_dir: Path, folder: Path) -> None:
    # A cache inside the data would be written beside the source (which may be read-only) and
    # would change its fingerprint, so every run would miss the cache.
    if cache_dir.resolve().is_relative_to(folder):
        raise UserError(
            f"cache dir {cache_dir} is inside the data folder {folder}; pass a --cache-dir "
            "outside the data"
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(folder: Path) -> str:
    """File count, total bytes and newest mtime under `folder`: cheap, and changes on any edit."""
    files, size, newest = _files_under(str(folder))
    return f"files={len(files)};bytes={size};mtime={newest}"


def _cached_decode(source: _Source, config: DataConfig) -> _Decoded:
    key = f"{source.kind}|{source.name}|{config.image_size}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.name).name or source.kind)[:40]
    stem = f"{slug}-{_digest(key)[:10]}"
    path = config.cache_dir / "data" / f"{stem}-{_digest(source.fingerprint)[:10]}.pt"
    full_key = f"{key}|{source.fingerprint}"
    cached = _read_cache(path, full_key)
    if cached is not None:
        return cached
    if source.kind == "image-folder":
        decoded = _decode_image_folder(source, config.image_size)
    else:
        folder = source.folder
        if source.download is not None and not _cifar_complete(folder, source.kind):
            _download(source.download, config.data_root)
        decoded = _read_cifar(folder, source.kind, config.image_size)
    _write_cache(path, full_key, decoded, stale=f"{stem}-*.pt")
    return decoded


def _read_cache(path: Path, key: str) -> _Decoded | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj.get("format") != CACHE_FORMAT or obj.get("version") != CACHE_VERSION:
            return None
        if obj.get("key") != key:  # a digest collision, however unlikely, is not a hit
            return None
        test = None
        if obj["test_images"] is not None:
            test = Split(obj["test_images"], obj["test_labels"])
        return _Decoded(
            tuple(obj["classes"]), Split(obj["train_images"], obj["train_labels"]), test
        )
    except Exception as e:  # unreadable or foreign file: decode again and overwrite it
        warnings.warn(
            f"ignoring unreadable data cache {path} ({type(e).__name__}); decoding again",
            stacklevel=3,
        )
        return None


def _write_cache(path: Path, key: str, decoded: _Decoded, stale: str) -> None:
    from distill.checkpoint import atomic_save  # checkpoint pulls in the model registry

    obj = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": key,
        "classes": list(decoded.classes),
        "train_images": decoded.train.images,
        "train_labels": decoded.train.labels,
        "test_images": decoded.test.images if decoded.test is not None else None,
        "test_labels": decoded.test.labels if decoded.test is not None else None,
    }
    try:
        atomic_save(obj, path)
    except OSError as e:
        # The data is in memory already; a missing cache costs only the next run's decode.
        warnings.warn(
            f"could not write the data cache {path} ({e}); it will be decoded again "
            "next time (pass a writable --cache-dir)",
            stacklevel=3,
        )
        return
    for old in path.parent.glob(stale):  # same source, older content: never read again
        if old != path:
            old.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# CIFAR python format


def _cifar_layout(kind: str) -> dict[str, Any]:
    if kind == "cifar10":
        return {
            "folder": "cifar-10-batches-py",
            "train": [f"data_batch_{i}" for i in range(1, 6)],
            "test": ["test_batch"],
            "meta": "batches.meta",
            "names": "label_names",
            "labels": "labels",
            "title": "CIFAR-10",
        }
    return {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names": "fine_label_names",
        "labels": "fine_labels",
        "title": "CIFAR-100",
    }


def _cifar_complete(folder: Path, kind: str) -> bool:
    layout = _cifar_layout(kind)
    return all((folder / f).is_file() for f in layout["train"] + layout["test"] + [layout["meta"]])


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # numpy 2 renamed numpy.core to numpy._core; official files (pickled by Python 2 numpy) name
    # the old module, files re-saved by numpy 2 the new one. Map both to the real objects.
    core = np._core if hasattr(np, "_core") else np.core
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    # Python 3 pickles of bytes at protocol 2 go through codecs.encode(str, "latin1").
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts only: any other global is refused, so a crafted
    file can never run code (plain pickle.load would call whatever the file names)."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # latin1: the official files are Python 2 pickles whose str keys and array bytes
            # must come back as str and raw bytes.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise UserError(
            f"{path} is not a valid CIFAR python file ({type(e).__name__}: {str(e)[:80]}); "
            "delete it (a download fetches it again) or pass another --data"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a valid CIFAR python file (no dict); replace it")
    return obj


def _read_cifar(folder: Path, kind: str, image_size: int) -> _Decoded:
    layout = _cifar_layout(kind)
    meta = _unpickle(folder / layout["meta"])
    names = meta.get(layout["names"])
    if not isinstance(names, list) or not names:
        raise UserError(f"{folder / layout['meta']} has no {layout['names']}; replace the file")
    classes = tuple(str(n) for n in names)

    def read(files: list[str]) -> Split:
        images, labels = [], []
        for f in files:
            entry = _unpickle(folder / f)
            data, lab = entry.get("data"), entry.get(layout["labels"])
            ok = isinstance(data, np.ndarray) and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
            if not ok or lab is None or len(lab) != len(data):
                raise UserError(
                    f"{folder / f} is not a {layout['title']} batch (data, "
                    f"{layout['labels']}); replace the file"
                )
            images.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(lab, dtype=np.int64))
        y = torch.from_numpy(np.concatenate(labels))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise UserError(f"{folder} has labels outside its {len(classes)} classes; replace it")
        x = torch.from_numpy(np.concatenate(images))
        return Split(_resize_uint8(x, image_size), y)

    test = read(layout["test"]) if all((folder / f).is_file() for f in layout["test"]) else None
    return _Decoded(classes, read(layout["train"]), test)


def _resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    out = [
        F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for c in images.split(chunk)
    ]
    return torch.cat(out)


def _download(name: str, data_root: Path) -> None:
    """Fetch and extract the official archive with torchvision's download code.

    torchvision's dataset constructor is not used: it unpickles the batches with plain
    pickle.load and checks every file against the official md5 sums; the archive's own md5 (checked
    here) already vouches for the download and the files are then read with `_ArrayUnpickler`.
    """
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_and_extract_archive

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        download_and_extract_archive(
            cls.url, str(data_root), filename=cls.filename, md5=cls.tgz_md5
        )
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not download {name} from {cls.url} ({reason}); without network access pass a "
            "local folder holding cifar-10-batches-py / cifar-100-python, or an image folder, "
            "as --data"
        ) from None
    if not _cifar_complete(data_root / cls.base_folder, name):
        raise UserError(
            f"the {name} archive in {data_root} lacks files; delete "
            f"{data_root / cls.filename} and run again"
        )


# ---------------------------------------------------------------------------------------------
# Image folders


def _visible(folder: str) -> list[os.DirEntry]:
    """Entries of `folder` without hidden ones (.DS_Store, .ipynb_checkpoints), sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _files_under(folder: str) -> tuple[list[Path], int, int]:
    """Visible files below `folder` (sorted), their total bytes, and the newest mtime of any file
    or directory walked (moving a file between class folders changes only directory mtimes)."""
    files, size, newest = [], 0, os.stat(folder).st_mtime_ns
    for e in _visible(folder):
        if e.is_dir():
            sub, sub_size, sub_newest = _files_under(e.path)
            files += sub
            size, newest = size + sub_size, max(newest, sub_newest)
        elif e.is_file():
            st = e.stat()
            files.append(Path(e.path))
            size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


def _scan_image_folder(root: Path) -> _Source:
    """List an image folder's files per split and class; decoding waits for a cache miss."""
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = root / "test" if train_root != root and (root / "test").is_dir() else None
    class_dirs = [e for e in _visible(str(train_root)) if e.is_dir()]
    if not class_dirs:
        raise UserError(
            f"{train_root} holds no class folders; an image folder needs <class>/<image files> "
            "(or train/<class>/... and test/<class>/...)"
        )
    classes = tuple(e.name for e in class_dirs)
    index = {name: i for i, name in enumerate(classes)}
    split_files, split_labels = [], []
    size, newest = 0, os.stat(root).st_mtime_ns
    for split, split_root in (("train", train_root), ("test", test_root)):
        if split_root is None:
            continue
        if split == "train":
            dirs = class_dirs
        else:
            dirs = [e for e in _visible(str(split_root)) if e.is_dir()]
        files, labels = [], []
        newest = max(newest, os.stat(split_root).st_mtime_ns)
        for e in dirs:
            if e.name not in index:
                raise UserError(
                    f"test class folder {e.path} has no train/{e.name}; rename it to one of "
                    f"the training classes or remove it"
                )
            found, found_size, found_newest = _files_under(e.path)
            if not found and split == "train":
                raise UserError(f"class folder {e.path} holds no images; add images or remove it")
            files += found
            labels += [index[e.name]] * len(found)
            size, newest = size + found_size, max(newest, found_newest)
        if not files:
            raise UserError(
                f"{split_root} holds no images in class folders; add {split_root}/<class>/ "
                "images or remove it"
            )
        split_files.append((split, tuple(files)))
        split_labels.append(tuple(labels))
    count = sum(len(f) for _, f in split_files)
    fingerprint = f"files={count};bytes={size};mtime={newest};classes={_digest('/'.join(classes))}"
    return _Source(
        "image-folder",
        str(root),
        root,
        None,
        fingerprint,
        image_files=tuple(split_files),
        image_labels=tuple(split_labels),
        classes=classes,
    )


def _decode_image_folder(source: _Source, image_size: int) -> _Decoded:
    splits = {
        split: Split(_decode_images(files, image_size), torch.tensor(labels, dtype=torch.int64))
        for (split, files), labels in zip(source.image_files, source.image_labels, strict=True)
    }
    return _Decoded(source.classes, splits["train"], splits.get("test"))


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":  # palette, grey, RGBA, CMYK...: three uint8 channels
                im = im.convert("RGB")
            if im.size != (size, size):
                # PIL widens the filter when shrinking, so downscaling does not alias.
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im)
    except Exception as e:  # any failure to decode means the file is not an image we can use
        reason = str(e).strip().splitlines()[0][:80] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not a readable image ({reason}); remove it or replace it with an image"
        ) from None


def _decode_images(paths: Sequence[Path], size: int, chunk: int = 512) -> torch.Tensor:
    """Decode files into one uint8 [N, 3, size, size] tensor with a thread pool (PIL releases the
    GIL while decoding; chunks keep the pool's per-task overhead small)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(start: int) -> None:
        for i in range(start, min(start + chunk, len(paths))):
            out[i] = _read_image(paths[i], size)

    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(work, range(0, len(paths), chunk)):
            pass
    finally:
        # On a bad file, stop at once rather than decode the rest of the folder first.
        pool.shutdown(wait=True, cancel_futures=True)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Splits and statistics


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


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx], split.labels[idx])


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


# ---------------------------------------------------------------------------------------------
# Batches


def _seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple: neighbouring tuples give unrelated streams (seed + epoch
    would make epoch 1 of seed 0 replay epoch 0 of seed 1)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchLoader:
    """Batches of one split, held on `device` as uint8, augmented and normalised there.

    Each epoch is a permutation drawn on the CPU from (seed, epoch), the same on every rank; rank
    r takes `perm[r::world_size]`, with every rank's shard made the same length (wrapping around
    to the start of the permutation, or truncating when drop_last), as DistributedSampler does.
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
        augment: AugmentConfig | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
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

        if drop_last:
            self.shard_size = self.size // world_size
            self.num_batches = self.shard_size // batch_size
        else:
            self.shard_size = math.ceil(self.size / world_size)
            self.num_batches = math.ceil(self.shard_size / batch_size)

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
        total = self.shard_size * self.world_size
        if total > self.size:  # pad by wrapping so that every rank runs the same number of steps
            perm = perm.repeat(math.ceil(total / self.size))
        return perm[:total][self.rank :: self.world_size]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, targets) for steps start_step.. of `epoch`.

        x: normalised float32 [B, 3, H, W] on the device (channels_last if asked); targets: int64
        labels [B], or float32 soft targets [B, num_classes] when the augmentation mixes images.
        """
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
            if self.augment is not None:
                self._generator.manual_seed(_seed("augment", self.seed, epoch, step, self.rank))
                x, targets = augment_batch(
                    images, labels, self.num_classes, self.augment, self._generator
                )
                x = torch.addcmul(self._shift, x, self._scale_unit)
            else:
                x, targets = torch.addcmul(self._shift, images.float(), self._scale_uint8), labels
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, targets
