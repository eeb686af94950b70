"""Where a data set comes from: a dataset name to download, a CIFAR python folder, or an image
folder; and a cheap fingerprint of its listing (every file's name below the root, size and
mtime) that changes whenever the source may have changed, so a stale decode is never read back.

The fingerprint only guards the cache. What identifies the data in checkpoints and pipeline
stages is the digest of the decoded content (`cache.content_id`): a moved folder or cache is the
same data, and a folder whose files changed back to the same bytes is the same data again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from distill.console import note
from distill.data.cifar import DATASET_NAMES, cifar_layout
from distill.data.dataset import check_class_names
from distill.data.images import is_image_name
from distill.errors import UserError
from distill.settings import DataSettings


@dataclass(frozen=True)
class Source:
    kind: str  # "cifar10" | "cifar100" (python format) | "image-folder"
    name: str  # what info["source"] records: a dataset name or an absolute path
    folder: Path  # the folder read (for a download: where it is, or will be, extracted)
    download: str | None  # the dataset name when it comes from torchvision's download
    fingerprint: str  # changes whenever the source's content may have changed (cache key only)
    # image folders: (split, file paths); plain strings, as os.scandir gives them: 50,000 Path
    # objects cost more than the scan itself, which every run does to check the cache.
    image_files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    image_labels: tuple[tuple[int, ...], ...] = ()
    classes: tuple[str, ...] = ()


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
    _refuse_inside(cache_dir, folder, f"cache dir {cache_dir}", "--cache-dir")


def _refuse_inside(place: Path, folder: Path, what: str, flag: str) -> None:
    if Path(place).expanduser().resolve().is_relative_to(folder):
        raise UserError(
            f"{what} is inside the data folder {folder}; pass a {flag} outside the data"
        )


def check_outside_data(place: Path, settings: DataSettings, flag: str = "--out") -> None:
    """A folder a command writes many files into (a pipeline's or a sweep's) is not inside
    the local data it reads: its plots and checkpoints would join the data (a `plots` folder of
    PNGs is a new class) and change its fingerprint, so the next run would see other data."""
    name = settings.source.strip()
    folder = Path(name).expanduser()
    if name.lower() not in DATASET_NAMES and folder.is_dir():
        _refuse_inside(place, folder.resolve(), f"{flag} {place}", flag)


def _fingerprint(folder: Path) -> str:
    """Names (below `folder`), sizes and mtimes of its files: cheap, and changes on any edit,
    move or rename, whatever the folders' own mtimes say."""
    return _listing_digest(folder, [f for f, _ in _files_under(str(folder))])


def _listing_digest(root: Path, files: list[str]) -> str:
    lines, cut = [], len(str(root)) + 1  # every path is below root: its name relative to root
    for f in files:
        st = os.stat(f)
        lines.append(f"{f[cut:]}|{st.st_size}|{st.st_mtime_ns}")
    return digest("\n".join(lines))


def _visible(folder: str) -> list[os.DirEntry]:
    """Entries of `folder` without hidden ones (.DS_Store, .ipynb_checkpoints), sorted by name."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _hidden_folders(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.startswith(".") and e.is_dir())


def _files_under(folder: str, seen: set[str] | None = None) -> list[tuple[str, str]]:
    """Visible files below `folder`, sorted, each with its real path; a folder reached again
    through a link (a loop, or a second way to the same images) is walked once.

    A file that is not a link is its real folder's entry: only links pay for `realpath`, which
    costs eight `lstat`s in Python per file (2.3 s of a 50,000-image scan when every file paid).
    """
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return []
    seen.add(real)
    files = []
    for e in _visible(folder):
        if e.is_dir():
            files += _files_under(e.path, seen)
        elif e.is_file():
            files.append(
                (e.path, os.path.realpath(e.path) if e.is_symlink() else f"{real}/{e.name}")
            )
        elif e.is_symlink() and is_image_name(e.name):  # its target is gone: an image lost
            raise UserError(
                f"{e.path} is a link to {os.readlink(e.path)}, which does not exist; fix the "
                "link or remove it"
            )
    return files


def scan_image_folder(root: Path) -> Source:
    """List an image folder's files per split and class; decoding waits for a cache miss.

    Links are followed, but one file is one image: the same file reached twice in a class is
    taken once (a note says so), and under two classes, or in both train and test, it is refused
    (it would carry two labels, or be tested on after training on it). Hidden folders are not
    classes; a note names any that were passed over.
    """
    train_root = root / "train" if (root / "train").is_dir() else root
    test_root = root / "test" if train_root != root and (root / "test").is_dir() else None
    class_dirs = [e for e in _visible(str(train_root)) if e.is_dir()]
    if not class_dirs:
        raise UserError(
            f"{train_root} holds no class folders; an image folder needs <class>/<image files> "
            "(or train/<class>/... and test/<class>/...)"
        )
    classes = check_class_names([e.name for e in class_dirs], f"the class folders of {train_root}")
    index = {name: i for i, name in enumerate(classes)}
    split_files, split_labels = [], []
    skipped: list[str] = []
    merged: list[str] = []
    owner: dict[str, tuple[str, str, str]] = {}  # real path -> (split, class, first path)
    hidden = [f"{train_root / name}" for name in _hidden_folders(str(train_root))]
    for split, split_root in (("train", train_root), ("test", test_root)):
        if split_root is None:
            continue
        dirs = (
            class_dirs if split == "train" else [e for e in _visible(str(split_root)) if e.is_dir()]
        )
        files, labels = [], []
        for e in dirs:
            if e.name not in index:
                raise UserError(
                    f"test class folder {e.path} has no train/{e.name}; rename it to one of "
                    f"the training classes or remove it"
                )
            found = []
            for f, real in _files_under(e.path):
                if not is_image_name(f):
                    skipped.append(f)
                    continue
                first = owner.setdefault(real, (split, e.name, f))
                if first[2] == f:
                    found.append(f)
                elif first[:2] == (split, e.name):
                    merged.append(f)
                else:
                    raise UserError(
                        f"{f} and {first[2]} are the same file (through a link), in "
                        f"{first[0]}/{first[1]} and {split}/{e.name}; an image has one label "
                        "and one split: remove the link or copy the file"
                    )
            if not found and split == "train":
                raise UserError(f"class folder {e.path} holds no images; add images or remove it")
            files += found
            labels += [index[e.name]] * len(found)
        if not files:
            raise UserError(
                f"{split_root} holds no images in class folders; add {split_root}/<class>/ "
                "images or remove it"
            )
        split_files.append((split, tuple(files)))
        split_labels.append(tuple(labels))
    _summarise_scan(skipped, merged, hidden)
    listed = [f for _, files in split_files for f in files]
    fingerprint = f"{_listing_digest(root, listed)};classes={digest(chr(0).join(classes))}"
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


def _summarise_scan(skipped: list[str], merged: list[str], hidden: list[str]) -> None:
    def files(n: int) -> str:
        return f"{n} file{'s' * (n != 1)}"

    if skipped:
        note(
            f"skipped {files(len(skipped))} in class folders that are not images by their "
            f"extension (e.g. {skipped[0]})"
        )
    if merged:
        note(
            f"took {files(len(merged))} reached twice in one class (through a link) once "
            f"(e.g. {merged[0]})"
        )
    if hidden:
        note(f"hidden folders are not classes; passed over {', '.join(hidden[:3])}")
