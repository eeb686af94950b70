"""Where a data set comes from: a dataset name to download, a CIFAR python folder, or an image
folder; and a cheap fingerprint (file count, total bytes, newest mtime) that changes whenever the
source may have changed, so a stale decode is never read back.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from distill.console import note
from distill.data.cifar import DATASET_NAMES, cifar_layout
from distill.data.images import is_image_name
from distill.errors import UserError
from distill.settings import DataSettings


@dataclass(frozen=True)
class Source:
    kind: str  # "cifar10" | "cifar100" (python format) | "image-folder"
    name: str  # what info["source"] records: a dataset name or an absolute path
    folder: Path  # the folder read (for a download: where it is, or will be, extracted)
    download: str | None  # the dataset name when it comes from torchvision's download
    fingerprint: str  # changes whenever the source's content may have changed
    # image folders: (split, file paths); plain strings, as os.scandir gives them: 50,000 Path
    # objects cost more than the scan itself, which every run does to check the cache.
    image_files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    image_labels: tuple[tuple[int, ...], ...] = ()
    classes: tuple[str, ...] = ()

    @property
    def source_id(self) -> str:
        return digest(f"{self.kind}|{self.name}|{self.fingerprint}")[:16]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_source(settings: DataSettings) -> Source:
    name = settings.source.strip()
    if name.lower() in DATASET_NAMES:  # a local folder of that name is passed as ./cifar10
        kind = name.lower()
        base = settings.data_root.resolve() / cifar_layout(kind)["folder"]
        # The official archive is md5-checked on download, so the name alone identifies it.
        return Source(kind, kind, base, kind, fingerprint=kind)
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
        layout = cifar_layout(kind)
        for folder in (path / layout["folder"], path):
            if all((folder / f).is_file() for f in layout["train"] + [layout["meta"]]):
                _refuse_cache_inside(settings.cache_dir, folder)
                return Source(kind, str(folder), folder, None, _fingerprint(folder))
    _refuse_cache_inside(settings.cache_dir, path)
    return scan_image_folder(path)


def _refuse_cache_inside(cache_dir: Path, folder: Path) -> None:
    # A cache inside the data would be written beside the source (which may be read-only) and
    # would change its fingerprint, so every run would miss the cache.
    if cache_dir.resolve().is_relative_to(folder):
        raise UserError(
            f"cache dir {cache_dir} is inside the data folder {folder}; pass a --cache-dir "
            "outside the data"
        )


def _fingerprint(folder: Path) -> str:
    """File count, total bytes and newest mtime under `folder`: cheap, and changes on any edit."""
    files, size, newest = _files_under(str(folder))
    return f"files={len(files)};bytes={size};mtime={newest}"


def _visible(folder: str) -> list[os.DirEntry]:
    """Entries of `folder` without hidden ones (.DS_Store, .ipynb_checkpoints), sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _files_under(folder: str) -> tuple[list[str], int, int]:
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
            files.append(e.path)
            size, newest = size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


def scan_image_folder(root: Path) -> Source:
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
    skipped: list[str] = []
    for split, split_root in (("train", train_root), ("test", test_root)):
        if split_root is None:
            continue
        dirs = (
            class_dirs if split == "train" else [e for e in _visible(str(split_root)) if e.is_dir()]
        )
        files, labels = [], []
        newest = max(newest, os.stat(split_root).st_mtime_ns)
        for e in dirs:
            if e.name not in index:
                raise UserError(
                    f"test class folder {e.path} has no train/{e.name}; rename it to one of "
                    f"the training classes or remove it"
                )
            listed, found_size, found_newest = _files_under(e.path)
            found = []
            for f in listed:
                (found if is_image_name(f) else skipped).append(f)
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
    if skipped:
        note(
            f"skipped {len(skipped)} file{'s' * (len(skipped) != 1)} in class folders that "
            f"are not images by their extension (e.g. {skipped[0]})"
        )
    count = sum(len(f) for _, f in split_files)
    fingerprint = f"files={count};bytes={size};mtime={newest};classes={digest('/'.join(classes))}"
    return Source(
        "image-folder",
        str(root),
        root,
        None,
        fingerprint,
        image_files=tuple(split_files),
        image_labels=tuple(split_labels),
        classes=classes,
    )
