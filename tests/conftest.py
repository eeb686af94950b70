"""What the test modules share: data, constants, command lines, checkpoints and checks. Helpers
are imported (`from conftest import teacher_args`); fixtures are asked for by name.

Data
- `tiny_image_folder` (session): `train/<class>/*.png` and `test/<class>/*.png`, 4 classes of
  coloured, striped 32x32 images that a tiny CNN separates within a few steps.
- `tiny_dataset` (session): `load_data` of it, val_size 20 (5 per class), cache in a temp dir.
- `real_cifar_jpegs` (session): 20 real CIFAR-10 JPEGs per class copied from the shared data
  folder into a temp image folder; skips where that folder is absent.
- `write_image_folder(root, classes, per_class, seed, size)`, `pattern_images(...)`: the striped
  images of any classes, splits and size.
- `write_colour_noise_folder(root, per_class, size)`: flat colours plus noise, learned sooner at
  16x16 than the stripes (the export and bench tests train on it).
- `make_cifar_python(root, ...)`: the official CIFAR-10/100 python layout.
- `png_header_only(path, width, height)`: a decompression bomb's header, no pixels.

Constants
- TINY_CLASSES, TINY_TRAIN_PER_CLASS, TINY_TEST_PER_CLASS, TINY_VAL_SIZE, TINY_BATCH_SIZE: the
  tiny folder and how tests split and batch it; TINY_ARCH: the model tests train;
  EXPORT_SIZE: the export, predict and bench tests' image side.

Command lines and checkpoints
- `teacher_args(folder, out, *extra, cache, epochs, quiet)`: a quick `teacher train` of TINY_ARCH
  on the CPU; `extra` comes last and overrides.
- `data_args(folder, dataset, cache, train_size)`, `quick_args(batch_size)`: `distill student`
  flags.
- `make_teacher(path, dataset, ...)`, `make_checkpoint(path, data=, classes=, ...)`: untrained
  teacher and student checkpoints.

Checks and settings
- `one_line_error(result, *words)`: asserts a refusal, exit 2 and one "error:" line naming each
  word, from typer's runner or a subprocess; returns the line.
- `one_thread` (module): torch on one thread; a module asks for it with
  `pytestmark = pytest.mark.usefixtures("one_thread")`.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if "PYTEST_XDIST_WORKER" in os.environ:
    # pytest-xdist gives its workers COLUMNS=80 (the controller's width). Tests stand for a user
    # whose output is a pipe or a file, where distill lays tables out wide; a test that wants a
    # width sets its own.
    os.environ.pop("COLUMNS", None)
    # One thread per worker, for it and every process it starts: workers share the cores, and
    # thread pools that spin beside another busy process slow both several times over (tiny
    # models gain nothing from a second thread anyway).
    os.environ["OMP_NUM_THREADS"] = "1"

CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# shared/ sits beside the checkout, here and in CI.
REAL_JPEGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train"

# The tiny folder's classes, each drawn in its own colour with its own stripe direction.
TINY_CLASSES = ("blue", "green", "red", "yellow")
TINY_COLOURS = ((40, 70, 220), (40, 170, 60), (215, 45, 40), (225, 205, 40))
TINY_TRAIN_PER_CLASS = 40
TINY_TEST_PER_CLASS = 10
TINY_VAL_SIZE = 20
TINY_BATCH_SIZE = 32  # 140 training images after the held-out 20: 4 steps an epoch
TINY_ARCH = "resnet18-quarter"  # the smallest registered model: what tests train
# Export, predict and bench tests' image side: export, training and parity stay fast, and the
# graph is size-agnostic.
EXPORT_SIZE = 16


def pattern_images(
    labels: np.ndarray,
    rng: np.random.Generator,
    size: int = 32,
    colours: tuple[tuple[int, int, int], ...] | None = None,
) -> np.ndarray:
    """uint8 [N, size, size, 3]: class k is a colour with stripes (direction and period set by k,
    phase random) plus noise, so every image differs but classes are easy to tell apart."""
    labels = np.asarray(labels)
    if colours is None:  # evenly spread hues for any number of classes
        import colorsys

        n = int(labels.max()) + 1 if labels.size else 1
        colours = tuple(
            tuple(int(255 * v) for v in colorsys.hsv_to_rgb((k * 0.618) % 1, 0.8, 0.9))
            for k in range(n)
        )
    palette = np.asarray(colours, dtype=np.float32)[labels]  # [N, 3]
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    direction = labels % 4  # horizontal, vertical, two diagonals
    coord = np.stack([yy, xx, yy + xx, yy - xx])[direction]  # [N, size, size]
    period = (4 + 2 * ((labels // 4) % 3)).astype(np.float32)[:, None, None]
    phase = rng.uniform(0, 8, size=(len(labels), 1, 1)).astype(np.float32)
    stripes = ((coord + phase) // (period / 2)) % 2  # 0/1 bands
    shade = 0.55 + 0.45 * stripes
    images = palette[:, None, None, :] * shade[..., None]
    images += rng.normal(0, 10, size=images.shape)
    return np.clip(images, 0, 255).round().astype(np.uint8)


def make_cifar_python(
    root: str | Path,
    num_classes: int = 10,
    per_class: int = 10,
    test_per_class: int = 2,
    label_names: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small data set in the official CIFAR python layout under `root`; return its folder.

    num_classes 10: `cifar-10-batches-py/` with data_batch_1..5, test_batch and batches.meta
    (label_names); num_classes 100: `cifar-100-python/` with train, test and meta
    (fine_label_names). Rows are 3072 bytes, channel-major (R plane, G plane, B plane) like the
    real files; pickled at protocol 2 with str keys, as the Python 2 originals read with
    encoding="latin1". test_per_class 0 writes no test file.
    """
    if num_classes not in (10, 100):
        raise ValueError("the official layouts hold 10 or 100 classes")
    rng = np.random.default_rng(seed)
    cifar10 = num_classes == 10
    names = list(
        label_names or (CIFAR10_NAMES if cifar10 else [f"class_{i:03d}" for i in range(100)])
    )
    folder = Path(root) / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.permutation(np.repeat(np.arange(num_classes), count))
        hwc = pattern_images(labels, rng)
        return hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1), [int(y) for y in labels]

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    labels_key = "labels" if cifar10 else "fine_labels"
    data, labels = batch(per_class)
    if cifar10:
        for i, rows in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
            entry = {"batch_label": f"training batch {i} of 5", "data": data[rows]}
            dump(f"data_batch_{i}", entry | {labels_key: [labels[r] for r in rows]})
        dump("batches.meta", {"label_names": names, "num_cases_per_batch": len(labels) // 5})
    else:
        coarse = [y // 5 for y in labels]
        dump("train", {"data": data, labels_key: labels, "coarse_labels": coarse})
        dump("meta", {"fine_label_names": names, "coarse_label_names": [str(i) for i in range(20)]})
    if test_per_class:
        data, labels = batch(test_per_class)
        dump("test_batch" if cifar10 else "test", {"data": data, labels_key: labels})
    return folder


def write_image_folder(
    root: Path, classes: tuple[str, ...], per_class: dict[str, int], seed: int = 0
) -> Path:
    """PNG files `root/<split>/<class>/NNN.png` with pattern images (colours from TINY_COLOURS
    when the classes are TINY_CLASSES)."""
    rng = np.random.default_rng(seed)
    colours = TINY_COLOURS if classes == TINY_CLASSES else None
    for split, count in per_class.items():
        labels = np.repeat(np.arange(len(classes)), count)
        images = pattern_images(labels, rng, colours=colours)
        for i, (label, image) in enumerate(zip(labels, images, strict=True)):
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i % count:03d}.png")
    return root


def teacher_args(
    folder: str | Path,
    out: str | Path,
    *extra: str,
    cache: str | Path | None = None,
    epochs: int = 1,
    quiet: bool = True,
) -> list[str]:
    """`distill teacher train` arguments: TINY_ARCH on `folder` with the quick recipe, the tiny
    folder's batch and val sizes, on the CPU, its data cache in `cache` (default: `cache/` beside
    `out`). `extra` comes last, and click keeps an option's last value, so it can override any of
    these."""
    cache = Path(out).parent / "cache" if cache is None else cache
    args = [
        "teacher", "train", "--arch", TINY_ARCH, "--data", str(folder), "--out", str(out),
        "--recipe", "quick", "--epochs", str(epochs), "--batch-size", str(TINY_BATCH_SIZE),
        "--val-size", str(TINY_VAL_SIZE), "--cache-dir", str(cache), "--device", "cpu",
    ]  # fmt: skip
    return [*args, *(["--quiet"] if quiet else []), *extra]


def one_line_error(result, *words: str) -> str:
    """Assert how a user's mistake is refused: exit status 2 and one non-blank line that starts
    "error:" and holds each of `words`; return the line. `result` is a CliRunner result
    (exit_code, output) or a finished subprocess (returncode, stderr)."""
    if hasattr(result, "exit_code"):
        code, text = result.exit_code, result.output
    else:
        code, text = result.returncode, result.stderr
    assert code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), text
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def make_checkpoint(path: Path, *, data: dict, classes, model=None, mean=None, std=None) -> Path:
    """A seeded, untrained TINY_ARCH student checkpoint at EXPORT_SIZE for the export, predict
    and bench tests; `data` is its data record (empty: no images on hand)."""
    import torch

    from distill.checkpoint import new_checkpoint, save_checkpoint
    from distill.registry import create_model

    torch.manual_seed(0)
    model = model or create_model(TINY_ARCH, len(classes))
    ckpt = new_checkpoint(
        kind="student",
        arch=TINY_ARCH,
        model=model,
        classes=list(classes),
        mean=mean or [0.5, 0.45, 0.4],
        std=std or [0.25, 0.25, 0.25],
        input_size=[3, EXPORT_SIZE, EXPORT_SIZE],
        recipe={},
        data=data,
        metrics={"val_accuracy": 0.75},
    )
    save_checkpoint(ckpt, path)
    return path


def make_teacher(
    path: Path, dataset, arch: str = TINY_ARCH, num_classes: int | None = None, **fields
) -> Path:
    """An untrained teacher checkpoint for `dataset` (fields override the checkpoint's)."""
    import torch

    from distill.checkpoint import new_checkpoint, save_checkpoint
    from distill.registry import create_model

    torch.manual_seed(len(str(path)))
    ckpt = new_checkpoint(
        kind="teacher",
        arch=arch,
        model=create_model(arch, num_classes or dataset.num_classes),
        classes=list(dataset.classes),
        mean=list(dataset.mean),
        std=list(dataset.std),
        input_size=list(dataset.input_size),
        recipe={},
        data=dict(dataset.info),
        metrics={"val_accuracy": 0.25},
    )
    ckpt.update(fields)
    save_checkpoint(ckpt, path)
    return path


def data_args(folder: Path, dataset, cache: Path, train_size: int | None = None) -> list[str]:
    """`distill student` data flags for `dataset` read from `folder`, quiet, on the CPU."""
    train_size = train_size or dataset.info["train_size"]
    args = ["--data", str(folder), "--train-size", str(train_size), "--cache-dir", str(cache)]
    return args + ["--device", "cpu", "--quiet"]


def quick_args(batch_size: int = 8) -> list[str]:
    """One epoch of the quick recipe."""
    return ["--recipe", "quick", "--epochs", "1", "--batch-size", str(batch_size)]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (1-bit grey) and holds no pixel data: what a
    decompression bomb looks like to a reader before it decodes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one intra-op thread for a module (`pytestmark =
    pytest.mark.usefixtures("one_thread")`): tiny models gain nothing from a second thread, and
    on a shared, busy machine spinning OpenMP threads, woken for every newly shaped layer, make a
    training step many times slower than one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Flat colours for write_colour_noise_folder: nothing but the colour tells them apart.
NOISY_COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 60, 210),
    "grey": (128, 128, 128),
}


def write_colour_noise_folder(root: Path, per_class: int, size: int = 16, seed: int = 0) -> Path:
    """`root/train/<colour>/NNN.png`: one flat colour of NOISY_COLOURS per class plus strong
    noise (sd 30), size x size. A tiny ResNet learns it in a dozen steps, sooner than the
    striped pattern images at 16x16."""
    rng = np.random.default_rng(seed)
    for name, rgb in NOISY_COLOURS.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (size, size, 3))
            pixels = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-images")
    return write_image_folder(
        root, TINY_CLASSES, {"train": TINY_TRAIN_PER_CLASS, "test": TINY_TEST_PER_CLASS}
    )


@pytest.fixture(scope="session")
def tiny_dataset(tiny_image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    from distill.data import DataSettings, load_data

    cache = tmp_path_factory.mktemp("tiny-cache")
    return load_data(DataSettings(str(tiny_image_folder), cache_dir=cache, val_size=TINY_VAL_SIZE))


@pytest.fixture(scope="session")
def real_cifar_jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL_JPEGS.is_dir():
        pytest.skip(f"{REAL_JPEGS} is not present")
    root = tmp_path_factory.mktemp("real-jpegs")
    for name in CIFAR10_NAMES:
        (root / "train" / name).mkdir(parents=True)
        for src in sorted((REAL_JPEGS / name).iterdir())[:20]:
            shutil.copy(src, root / "train" / name / src.name)
    return root
