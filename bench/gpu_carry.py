"""What bench/gpu_check.sh needs on a lent GPU machine that the machine itself lacks, in one folder
to carry there beside the working tree (64 MiB in all): a compact subset of the real CIFAR-10
images, so the accuracy row means something, and torch-pruning, which distill imports and the
machine does not have (it reaches no package registry).

    python bench/gpu_carry.py                       # -> runs/gpu_carry/ (git ignores runs/)
    python bench/gpu_carry.py --data DIR --per-class 2000 --out runs/gpu_carry

- `cifar10-subset.npz`: the first `--per-class` JPEGs of every class folder, byte for byte (no
  re-encoding: the same pixels as training on the folder), in one uncompressed .npz without
  pickles: `jpeg` (every file's bytes, concatenated), `offsets`, `labels`, `classes`. CIFAR's
  JPEGs are about 0.9 kB each: 2,000 per class is 20,000 images in about 18 MB, where the same
  images as uint8 arrays would be 61 MB. gpu_check.sh decodes it into a CIFAR python folder on
  the machine (`gpu_rows.py unpack`), a few seconds.
- `NAME.zip`: torch-pruning, which distill imports and the machine lacks, and the CLI's and the
  exporter's pure-Python packages in case it lacks those too, each as a zip that Python imports
  from PYTHONPATH (zipimport), whichever Python version the machine has.

It is produced here rather than committed: 18 MB of images in the history would be fetched by
every clone forever, and the script rebuilds it in seconds from the JPEGs whenever a GPU is lent.
"""

from __future__ import annotations

import argparse
import importlib
import io
import zipfile
from pathlib import Path

import numpy as np

SUBSET = "cifar10-subset.npz"
# Pure-Python packages distill imports that a lent machine may lack: torch-pruning (seen missing),
# the CLI's (typer and what it needs) and the exporter's (onnxscript); gpu_check.sh puts a zip on
# the path only when the machine cannot import that package itself.
LIBS = (
    "torch_pruning", "typer", "click", "rich", "markdown_it", "mdurl", "pygments", "shellingham",
    "onnxscript", "onnx_ir",
)  # fmt: skip
IMAGES = (".jpg", ".jpeg", ".png")
LIMIT = 64 * 2**20  # what travels with the working tree, in all


def pack_subset(folder: Path, out: Path, per_class: int) -> int:
    """The first `per_class` images (by file name) of each class folder of `folder`, as their
    original bytes, into `out`; returns the number of images."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SystemExit(f"{folder} has no class folders; pass the CIFAR-10 JPEG train folder")
    blobs: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(f for f in (folder / name).iterdir() if f.suffix.lower() in IMAGES)
        if len(files) < per_class:
            raise SystemExit(f"{folder / name} has {len(files)} images, fewer than {per_class}")
        for f in files[:per_class]:
            blobs.append(f.read_bytes())
            labels.append(label)
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=offsets,
        labels=np.asarray(labels, dtype=np.int64),
        classes=np.asarray(classes),
    )
    return len(labels)


def read_subset(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a packed subset: uint8 images [N, 32, 32, 3], labels [N], class names."""
    from PIL import Image

    with np.load(path, allow_pickle=False) as z:
        data, offsets, labels, classes = z["jpeg"], z["offsets"], z["labels"], z["classes"]
    images = np.stack(
        [
            np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB"))
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    )
    return images, labels, [str(c) for c in classes]


def zip_package(name: str, out: Path) -> Path | None:
    """The installed package `name` as `out/NAME.zip`, importable with the zip on PYTHONPATH;
    None when it is not installed here or has compiled parts (zipimport cannot load those)."""
    try:
        package = Path(importlib.import_module(name).__file__).parent
    except ImportError:
        return None
    files = [f for f in sorted(package.rglob("*")) if f.is_file() and "__pycache__" not in f.parts]
    if any(f.suffix in (".so", ".pyd") for f in files):
        return None
    path = out / f"{name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, Path(name) / f.relative_to(package))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg/train"))
    p.add_argument("--per-class", type=int, default=2000, help="images of each class")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_carry"))
    args = p.parse_args()
    if args.per_class < 1:
        raise SystemExit("--per-class must be at least 1")
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not a folder; pass --data, CIFAR-10's JPEG train folder")
    args.out.mkdir(parents=True, exist_ok=True)
    n = pack_subset(args.data, args.out / SUBSET, args.per_class)
    zips = [zip_package(lib, args.out) for lib in LIBS]
    written = [args.out / SUBSET] + [z for z in zips if z is not None]
    total = sum(f.stat().st_size for f in written)
    for f in written:
        print(f"{f}: {f.stat().st_size / 2**20:.1f} MiB")
    print(f"{n:,} images; {total / 2**20:.1f} MiB in all (the limit is 64 MiB with the tree)")
    if total > LIMIT - 8 * 2**20:
        raise SystemExit("too large to travel with the tree; pass a smaller --per-class")


if __name__ == "__main__":
    main()
