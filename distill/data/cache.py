"""The decoded source on disk: every image as one uint8 tensor, written once under the cache dir
and read back with `torch.load(weights_only=True)`, never beside the data.

The file is keyed by the source's path and fingerprint, and it carries a sha256 of its tensors:
a cache whose bytes changed after it was written (a flipped bit, a truncated copy, an edit) is
decoded again with one line saying so, never trained on. The same sha256 names the data
(`Decoded.content_id`), so identifying it costs nothing beyond the check.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from distill.console import make_console, note
from distill.data.cifar import cifar_complete, cifar_layout, download, read_cifar
from distill.data.dataset import Decoded, Split
from distill.data.decode import SERIAL_BELOW, decode_files, usable_cores
from distill.data.resize import size_note
from distill.data.sources import Source, digest
from distill.errors import UserError
from distill.files import atomic_save
from distill.memory import require
from distill.settings import DataSettings
from distill.timing import phase

CACHE_FORMAT = "distill-data-cache"
CACHE_VERSION = 2  # 2: a sha256 of the tensors' bytes


def cached_decode(source: Source, settings: DataSettings) -> Decoded:
    key = f"{source.kind}|{source.name}|{settings.image_size}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.name).name or source.kind)[:40]
    stem = f"{slug}-{digest(key)[:10]}"
    path = settings.cache_dir / "data" / f"{stem}-{digest(source.fingerprint)[:10]}.pt"
    full_key = f"{key}|{source.fingerprint}"
    with phase("data: cache check"):
        cached = read_cache(path, full_key)
    _check_room(source, settings, decoding=cached is None)
    if cached is not None:
        return cached
    with phase("data: decode"):
        decoded = decode(source, settings)
        decoded = replace(decoded, sha256=checksum(_tensors(_tensor_fields(decoded))))
    with phase("data: cache write"):
        write_cache(path, full_key, decoded, stale=f"{stem}-*.pt")
    return decoded


def _counts(source: Source) -> tuple[int, int]:
    """How many training and test images the source holds, from its listing (CIFAR rows are
    3,072 bytes; a download to come is the official 50,000 and 10,000)."""
    if source.kind == "image-folder":
        n = {split: len(files) for split, files in source.image_files}
        return n.get("train", 0), n.get("test", 0)
    if source.download is not None:
        return 50_000, 10_000
    layout = cifar_layout(source.kind)

    def rows(names: list[str]) -> int:  # a folder without its test batch has no test split
        files = [source.folder / f for f in names]
        return sum(f.stat().st_size for f in files if f.is_file()) // 3072

    return rows(layout["train"]), rows(layout["test"])


def _check_room(source: Source, settings: DataSettings, decoding: bool) -> None:
    """Refuse, before the decode, data that cannot be held: every image as uint8 (a cache hit
    is mapped from the file, not held), and the split's own copy of the training images it
    takes (`Split.take`). A lower bound, like every estimate in distill/memory.py."""
    train, test = _counts(source)
    wanted = settings.train_size
    taken = train if wanted is None else min(train, wanted + settings.val_size)
    held = (train + test) * decoding + taken
    side = settings.image_size
    require(
        held * 3 * side * side,
        f"{source.name}'s {train + test:,} images at {side}x{side}"
        + (" (decoded, and the split's copy)" if decoding else " (the split's copy)"),
        "lower --image-size, or --train-size to take fewer",
    )


def decode(source: Source, settings: DataSettings) -> Decoded:
    if source.kind == "image-folder":
        splits, done = {}, Counter()
        for (split, files), labels in zip(source.image_files, source.image_labels, strict=True):
            images, notes, sizes = _decode_with_progress(files, settings.image_size)
            splits[split] = Split(images, torch.tensor(labels, dtype=torch.int64))
            done += notes
            said = size_note(sizes, settings.image_size, f"{source.name} ({split})")
            if said:
                note(said)
        if done:
            said = "; ".join(f"{n:,} {what}" for what, n in sorted(done.items()))
            note(f"images of {source.name} decoded to 8-bit RGB: {said}")
        return Decoded(source.classes, splits["train"], splits.get("test"))
    if source.download is not None and not cifar_complete(source.folder, source.kind):
        download(source.download, settings.data_root)
    return read_cifar(source.folder, source.kind, settings.image_size)


def _decode_with_progress(
    files: tuple[str, ...], size: int
) -> tuple[torch.Tensor, Counter[str], list[tuple[int, int]]]:
    workers = usable_cores()
    if len(files) < SERIAL_BELOW:  # a moment's work: nothing to watch
        return decode_files(files, size, workers=1)
    note(
        f"decoding {len(files):,} images into the cache with {workers} "
        f"process{'es' * (workers > 1)} (once: later runs read the cache)"
    )
    console = make_console(stderr=True)
    with Progress(
        TextColumn("decoding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("decode", total=len(files))
        return decode_files(
            files, size, workers=workers, on_progress=lambda n: progress.update(task, completed=n)
        )


def _tensors(obj: dict) -> list[torch.Tensor]:
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    return [obj[k] for k in keys if obj.get(k) is not None]


def checksum(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().data)  # no copy: the tensor's own bytes
    return h.hexdigest()


def read_cache(path: Path, key: str) -> Decoded | None:
    if not path.is_file():
        return None
    try:
        # Mapped, not read: the checksum reads every byte once, and the splits copy out what they
        # take, so the whole decode never sits in memory twice (and is unmapped once unused).
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if obj.get("format") != CACHE_FORMAT or obj.get("version") != CACHE_VERSION:
            return None
        if obj.get("key") != key:  # a digest collision, however unlikely, is not a hit
            return None
        if checksum(_tensors(obj)) != obj.get("sha256"):
            note(f"the data cache {path} is corrupt (its checksum does not match); decoding again")
            return None
        test = None
        if obj["test_images"] is not None:
            test = Split(obj["test_images"], obj["test_labels"])
        decoded = Decoded(
            tuple(obj["classes"]),
            Split(obj["train_images"], obj["train_labels"]),
            test,
            obj["sha256"],
        )
        labels = [s.labels for s in (decoded.train, decoded.test) if s is not None and len(s)]
        if any(int(y.min()) < 0 or int(y.max()) >= len(decoded.classes) for y in labels):
            raise ValueError("labels outside the classes")
        return decoded
    except Exception as e:  # unreadable or foreign file: decode again and overwrite it
        note(f"ignoring the unreadable data cache {path} ({type(e).__name__}); decoding again")
        return None


def _tensor_fields(decoded: Decoded) -> dict:
    return {
        "train_images": decoded.train.images,
        "train_labels": decoded.train.labels,
        "test_images": decoded.test.images if decoded.test is not None else None,
        "test_labels": decoded.test.labels if decoded.test is not None else None,
    }


def write_cache(path: Path, key: str, decoded: Decoded, stale: str) -> None:
    obj = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": key,
        "classes": list(decoded.classes),
        **_tensor_fields(decoded),
        "sha256": decoded.sha256,
    }
    try:
        atomic_save(obj, path)
    except UserError as e:
        # The data is in memory already; a missing cache costs only the next run's decode.
        note(f"{e}; the data will be decoded again next time (pass a writable --cache-dir)")
        return
    for old in path.parent.glob(stale):  # same source, older content: never read again
        if old != path:
            old.unlink(missing_ok=True)
