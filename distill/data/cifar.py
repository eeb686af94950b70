"""The official CIFAR-10/100 python format: downloaded with torchvision's download code, read
with an unpickler that only rebuilds numpy arrays (a crafted file can never run code)."""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.dataset import Decoded, Split, check_class_names
from distill.errors import UserError, first_line

DATASET_NAMES = ("cifar10", "cifar100")


def cifar_layout(kind: str) -> dict[str, Any]:
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


def cifar_complete(folder: Path, kind: str) -> bool:
    layout = cifar_layout(kind)
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
            f"{path} is not a valid CIFAR python file ({type(e).__name__}: {first_line(e, 80)}); "
            "delete it (a download fetches it again) or pass another --data"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a valid CIFAR python file (no dict); replace it")
    return obj


def read_cifar(folder: Path, kind: str, image_size: int) -> Decoded:
    layout = cifar_layout(kind)
    meta = _unpickle(folder / layout["meta"])
    names = meta.get(layout["names"])
    if not isinstance(names, list) or not names:
        raise UserError(f"{folder / layout['meta']} has no {layout['names']}; replace the file")
    classes = check_class_names(
        [n.decode("latin1") if isinstance(n, bytes) else n for n in names],
        f"{folder / layout['meta']}",
    )

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
            images.append(_pixels(data, folder / f).reshape(-1, 3, 32, 32))
            labels.append(_labels(lab, folder / f, layout["labels"]))
        y = torch.from_numpy(np.concatenate(labels))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise UserError(f"{folder} has labels outside its {len(classes)} classes; replace it")
        x = torch.from_numpy(np.concatenate(images))
        return Split(resize_uint8(x, image_size), y)

    test = read(layout["test"]) if all((folder / f).is_file() for f in layout["test"]) else None
    return Decoded(classes, read(layout["train"]), test)


def _pixels(data: np.ndarray, path: Path) -> np.ndarray:
    """uint8 pixels as they are; other integer types only when every value is a byte already
    (a cast would wrap 256 to 0 without a word)."""
    if data.dtype == np.uint8:
        return data
    if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
        raise UserError(
            f"{path} holds {data.dtype} pixels, not bytes 0..255; replace the file with a "
            "uint8 CIFAR batch"
        )
    return data.astype(np.uint8)


def _labels(lab: Any, path: Path, key: str) -> np.ndarray:
    """Integer labels, as a list or an integer array; anything else (text, floats) refused."""
    arr = np.asarray(lab)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise UserError(
            f"{path} has {key} of type {arr.dtype} (not whole numbers); replace the file"
        )
    return arr.astype(np.int64)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
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


def download(name: str, data_root: Path) -> None:
    """Fetch the official archive with torchvision's download code; unpack it with
    `extract_tar`, which refuses members that would land outside `data_root`.

    torchvision's dataset constructor is not used: it unpickles the batches with plain
    pickle.load and checks every file against the official md5 sums; the archive's own md5 (checked
    here) already vouches for the download and the files are then read with `_ArrayUnpickler`.
    """
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_url

    from distill.data.archive import extract_tar

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    try:
        download_url(cls.url, str(data_root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as e:
        reason = first_line(e, 100)
        raise UserError(
            f"could not download {name} from {cls.url} ({reason}); without network access pass a "
            "local folder holding cifar-10-batches-py / cifar-100-python, or an image folder, "
            "as --data"
        ) from None
    # torchvision's extract_archive unpacks whatever the member list says (no filter).
    extract_tar(data_root / cls.filename, data_root)
    if not cifar_complete(data_root / cls.base_folder, name):
        raise UserError(
            f"the {name} archive in {data_root} lacks files; delete "
            f"{data_root / cls.filename} and run again"
        )
