"""The data layer: every source format, the cache, seeded splits, user errors, the batch loader."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pickle
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CIFAR10_NAMES,
    TINY_CLASSES,
    TINY_TEST_PER_CLASS,
    TINY_TRAIN_PER_CLASS,
    TINY_VAL_SIZE,
    make_cifar_python,
    write_image_folder,
)
from PIL import Image

import distill.data.cache as cache_module
from distill.data import (
    BatchLoader,
    DataSettings,
    Split,
    channel_stats,
    even_quotas,
    load_data,
    split_indices,
)
from distill.errors import UserError
from distill.settings import AugmentSettings


def read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:  # our own test files: plain pickle is fine here
        return pickle.load(f, encoding="latin1")


def by_content(images: torch.Tensor) -> list[bytes]:
    return [bytes(x) for x in images.numpy()]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# --- CIFAR python format -----------------------------------------------------------------------


def test_cifar10_python_folder(tmp_path):
    names = [f"c{i}" for i in range(10)]  # not the official names: they must come from the file
    base = make_cifar_python(tmp_path / "src", per_class=6, test_per_class=2, label_names=names)
    expected = {}
    for i in range(1, 6):
        entry = read_pickle(base / f"data_batch_{i}")
        for row, label in zip(entry["data"], entry["labels"], strict=True):
            expected[bytes(row)] = label  # a row is the CHW image flattened

    ds = load_data(DataSettings(str(tmp_path / "src"), cache_dir=tmp_path / "cache", val_size=10))
    assert ds.classes == tuple(names)
    assert ds.input_size == (3, 32, 32) and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)
    seen = by_content(ds.train.images) + by_content(ds.val.images)
    assert sorted(seen) == sorted(expected)  # every training image once, pixels in CHW order
    labels = ds.train.labels.tolist() + ds.val.labels.tolist()
    assert [expected[k] for k in seen] == labels
    test = read_pickle(base / "test_batch")
    assert torch.equal(ds.test.images, torch.from_numpy(test["data"]).view(-1, 3, 32, 32))
    assert ds.test.labels.tolist() == test["labels"]
    assert ds.info["format"] == "cifar10" and ds.info["source"] == str(base.resolve())

    # the batches folder itself is accepted too, and names the same source
    same = load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10))
    assert same.info["source_id"] == ds.info["source_id"]
    assert torch.equal(same.val.images, ds.val.images)


def test_cifar100_python_folder(tmp_path):
    base = make_cifar_python(tmp_path, num_classes=100, per_class=3, test_per_class=1)
    ds = load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=100))
    meta = read_pickle(base / "meta")
    assert ds.classes == tuple(meta["fine_label_names"])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (200, 100, 100)
    assert torch.bincount(ds.val.labels, minlength=100).tolist() == [1] * 100
    test = read_pickle(base / "test")
    assert ds.test.labels.tolist() == test["fine_labels"]  # fine labels, not coarse
    assert ds.info["format"] == "cifar100"


def test_cifar_resized_to_image_size(tmp_path):
    base = make_cifar_python(tmp_path, per_class=2, test_per_class=1)
    ds = load_data(DataSettings(str(base), cache_dir=tmp_path / "c", val_size=10, image_size=16))
    assert ds.input_size == (3, 16, 16) and ds.test.images.shape == (10, 3, 16, 16)


def test_pickle_that_runs_code_is_refused(tmp_path):
    base = make_cifar_python(tmp_path, per_class=2, test_per_class=1)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f, protocol=2)
    with pytest.raises(UserError, match="data_batch_1 is not a valid CIFAR python file"):
        load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10))
    assert not marker.exists()


# --- image folders -----------------------------------------------------------------------------


def test_tiny_dataset(tiny_dataset, tiny_image_folder):
    ds = tiny_dataset
    assert ds.classes == tuple(sorted(TINY_CLASSES))
    n_train = len(TINY_CLASSES) * TINY_TRAIN_PER_CLASS - TINY_VAL_SIZE
    assert (len(ds.train), len(ds.val)) == (n_train, TINY_VAL_SIZE)
    assert len(ds.test) == len(TINY_CLASSES) * TINY_TEST_PER_CLASS
    # the test split keeps folder order: classes sorted, files sorted
    assert ds.test.labels.tolist() == [c for c in range(4) for _ in range(TINY_TEST_PER_CLASS)]
    first = np.array(Image.open(tiny_image_folder / "test" / ds.classes[0] / "000.png"))
    assert torch.equal(ds.test.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64


def test_image_folder_modes_sizes_hidden_files(tmp_path):
    # class folders directly under the root, created out of order; one solid colour per file
    root = tmp_path / "imgs"
    files = {
        ("b_cls", "p.png"): ("P", (50, 60, 70), 32),
        ("b_cls", "j.jpg"): ("RGB", (120, 130, 140), 64),
        ("b_cls", "r.png"): ("RGB", (250, 5, 5), 32),
        ("a_cls", "rgba.png"): ("RGBA", (10, 20, 30, 128), 40),
        ("a_cls", "grey.png"): ("L", 200, 32),
        ("a_cls", "deep/nested.png"): ("RGB", (1, 2, 3), 32),
    }
    for (cls, name), (mode, colour, size) in files.items():
        path = root / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB" if mode == "P" else mode, (size, size), colour)
        image = image.quantize(4) if mode == "P" else image
        image.save(path, quality=95) if name.endswith(".jpg") else image.save(path)
    (root / "a_cls" / ".DS_Store").write_bytes(b"\x00junk")  # hidden: skipped, not an error
    (root / ".ipynb_checkpoints").mkdir()
    (root / "README.txt").write_text("files beside the class folders are not images of a class")

    ds = load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))
    assert ds.classes == ("a_cls", "b_cls") and ds.test is None
    assert ds.input_size == (3, 32, 32)
    images = torch.cat([ds.train.images, ds.val.images])
    labels = torch.cat([ds.train.labels, ds.val.labels])
    assert len(images) == len(files)
    for (cls, _), (_, colour, _) in files.items():
        rgb = (colour,) * 3 if isinstance(colour, int) else colour[:3]
        solid = torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)
        err = (images.float() - solid).abs().amax(dim=(1, 2, 3))
        match = int(err.argmin())
        assert err[match] <= 2, f"no image of colour {rgb}"  # JPEG is lossy by a level or two
        assert ds.classes[labels[match]] == cls


def test_a_broken_image_is_named(tmp_path):
    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 3})
    bad = root / "train" / "y" / "broken.png"
    good = (root / "train" / "y" / "000.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a real PNG cut in half
    with pytest.raises(UserError, match=f"{bad} is not a readable image"):
        load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))


def test_files_that_are_not_images_are_skipped_with_a_note(tmp_path, capfd):
    """As in predict and torchvision's ImageFolder: a Thumbs.db or notes.txt among the images
    is not an image of the class, and not a reason to stop."""
    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 3})
    (root / "train" / "y" / "notes.txt").write_text("taken in 2019")
    (root / "train" / "x" / "Thumbs.db").write_bytes(b"\x00" * 64)
    ds = load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))
    assert len(ds.train) + len(ds.val) == 6
    err = capfd.readouterr().err
    assert "skipped 2 files in class folders that are not images by their extension" in err


def test_real_cifar_jpegs(real_cifar_jpegs, tmp_path):
    ds = load_data(DataSettings(str(real_cifar_jpegs), cache_dir=tmp_path / "cache", val_size=10))
    assert ds.classes == CIFAR10_NAMES and ds.test is None
    assert (len(ds.train), len(ds.val)) == (190, 10)
    cat = np.array(Image.open(real_cifar_jpegs / "train" / "cat" / "0000.jpg").convert("RGB"))
    cat = torch.from_numpy(cat).permute(2, 0, 1)
    images = torch.cat([ds.train.images, ds.val.images])
    labels = torch.cat([ds.train.labels, ds.val.labels])
    hits = [i for i, im in enumerate(images) if torch.equal(im, cat)]
    assert len(hits) == 1 and ds.classes[labels[hits[0]]] == "cat"
    assert all(0.35 < m < 0.6 for m in ds.mean) and all(0.15 < s < 0.35 for s in ds.std)


# --- the cache ---------------------------------------------------------------------------------


def test_second_load_hits_cache_and_source_is_untouched(tiny_image_folder, tmp_path, monkeypatch):
    before = snapshot(tiny_image_folder)
    config = DataSettings(str(tiny_image_folder), cache_dir=tmp_path / "cache", val_size=8)
    first = load_data(config)
    cached = list((tmp_path / "cache").rglob("*.pt"))
    assert len(cached) == 1
    assert torch.load(cached[0], weights_only=True)["train_images"].dtype == torch.uint8

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cache_module, "decode", no_decoding)
    second = load_data(config)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.val.labels, second.val.labels)
    assert first.info == second.info
    assert snapshot(tiny_image_folder) == before  # nothing written beside the source


def test_cache_follows_folder_edits(tmp_path):
    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 4})
    config = DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2)
    first = load_data(config)
    shutil.copy(root / "train" / "x" / "000.png", root / "train" / "y" / "extra.png")
    second = load_data(config)
    assert len(second.train) + len(second.val) == len(first.train) + len(first.val) + 1
    assert second.info["source_id"] != first.info["source_id"]
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 1  # the stale cache is gone


def test_cifar_cache_follows_file_edits(tmp_path):
    base = make_cifar_python(tmp_path / "src", per_class=2, test_per_class=1, seed=0)
    config = DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10)
    first = load_data(config)
    make_cifar_python(tmp_path / "src", per_class=3, test_per_class=1, seed=1)
    second = load_data(config)
    assert len(second.train) == len(first.train) + 10


def test_image_size_has_its_own_cache(tiny_image_folder, tmp_path):
    small = load_data(
        DataSettings(str(tiny_image_folder), cache_dir=tmp_path, val_size=4, image_size=16)
    )
    assert small.input_size == (3, 16, 16) and small.test.images.shape[-2:] == (16, 16)
    assert len(list(tmp_path.rglob("*.pt"))) == 1


# --- splits and statistics ---------------------------------------------------------------------


def test_even_quotas():
    assert even_quotas([5, 5, 5], 7) == [3, 2, 2]
    assert even_quotas([1, 4, 49], 9) == [1, 4, 4]  # small classes give what they have
    assert even_quotas([0, 3], 2) == [0, 2]
    assert even_quotas([3, 3], 6) == [3, 3]
    with pytest.raises(ValueError):
        even_quotas([1, 1], 3)


def test_split_indices_stratified_disjoint_seeded():
    labels = torch.arange(4).repeat_interleave(10)[torch.randperm(40)]
    train, val = split_indices(labels, 4, val_size=8, seed=1)
    assert torch.bincount(labels[val], minlength=4).tolist() == [2, 2, 2, 2]
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(40))
    again_train, again_val = split_indices(labels, 4, val_size=8, seed=1)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    _, other_val = split_indices(labels, 4, val_size=8, seed=2)
    assert not torch.equal(val, other_val)
    # a subsample leaves the validation split as it was
    small, same_val = split_indices(labels, 4, val_size=8, train_size=12, seed=1)
    assert torch.equal(same_val, val)
    assert torch.bincount(labels[small], minlength=4).tolist() == [3, 3, 3, 3]
    assert set(small.tolist()) <= set(train.tolist())


def test_split_indices_imbalanced_classes():
    labels = torch.tensor([0] * 2 + [1] * 5 + [2] * 50)
    train, val = split_indices(labels, 3, val_size=9)
    assert torch.bincount(labels[val], minlength=3).tolist() == [1, 4, 4]
    assert torch.bincount(labels[train], minlength=3).tolist() == [1, 1, 46]
    with pytest.raises(UserError, match="class 'one' has 1 training image"):
        split_indices(torch.tensor([0, 0, 1]), 2, val_size=2, class_names=["zero", "one"])


def test_dataset_splits_disjoint_and_stats(tiny_dataset):
    ds = tiny_dataset
    per_class = TINY_VAL_SIZE // len(TINY_CLASSES)
    assert torch.bincount(ds.val.labels).tolist() == [per_class] * len(TINY_CLASSES)
    train, val, test = (set(by_content(s.images)) for s in (ds.train, ds.val, ds.test))
    assert len(train) == len(ds.train)  # the noise makes every image distinct
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    x = ds.train.images.double() / 255
    assert np.allclose(ds.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(ds.std, x.std(dim=(0, 2, 3), correction=0).tolist(), atol=1e-9)


def test_channel_stats_floor_for_constant_channel():
    mean, std = channel_stats(torch.full((2, 3, 4, 4), 51, dtype=torch.uint8))
    assert mean == pytest.approx((0.2, 0.2, 0.2)) and std == pytest.approx((1 / 255,) * 3)


def test_info_holds_plain_values(tiny_dataset, tmp_path):
    info = tiny_dataset.info
    for key in ("source", "source_id", "split_seed", "train_size", "val_size", "test_size"):
        assert key in info
    assert info["num_classes"] == 4 and info["val_size"] == TINY_VAL_SIZE
    assert info["test_size"] == len(TINY_CLASSES) * TINY_TEST_PER_CLASS
    assert json.loads(json.dumps(info)) == info
    torch.save(info, tmp_path / "info.pt")
    assert torch.load(tmp_path / "info.pt", weights_only=True) == info


def test_splits_seeded_through_load_data(tiny_image_folder, tmp_path):
    def val_of(seed: int, train_size: int | None = None):
        config = DataSettings(
            str(tiny_image_folder),
            cache_dir=tmp_path,
            val_size=8,
            split_seed=seed,
            train_size=train_size,
        )
        return load_data(config)

    a, b, c = val_of(0), val_of(0), val_of(1)
    assert torch.equal(a.val.images, b.val.images) and not torch.equal(a.val.images, c.val.images)
    sub = val_of(0, train_size=20)
    assert torch.equal(sub.val.images, a.val.images)
    assert torch.bincount(sub.train.labels).tolist() == [5, 5, 5, 5]
    assert sub.info["train_size"] == 20


# --- user errors -------------------------------------------------------------------------------


def test_source_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_data(DataSettings(str(tmp_path / "missing"), cache_dir=tmp_path / "c"))
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_data(DataSettings("mnist", cache_dir=tmp_path / "c"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        load_data(DataSettings(str(tmp_path / "file.txt"), cache_dir=tmp_path / "c"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (32, 32)).save(flat / "a.png")
    with pytest.raises(UserError, match="holds no class folders"):
        load_data(DataSettings(str(flat), cache_dir=tmp_path / "c"))
    (flat / "only").mkdir()
    Image.new("RGB", (32, 32)).save(flat / "only" / "a.png")
    with pytest.raises(UserError, match=r"1 class \('only'\); a classifier needs at least two"):
        load_data(DataSettings(str(flat), cache_dir=tmp_path / "c"))
    (flat / "empty_class").mkdir()
    with pytest.raises(UserError, match="empty_class holds no images"):
        load_data(DataSettings(str(flat), cache_dir=tmp_path / "c"))
    # A link whose image is gone is a lost image, not a file to pass over in silence.
    (flat / "empty_class").rmdir()
    (flat / "second").mkdir()
    Image.new("RGB", (32, 32)).save(flat / "second" / "b.png")
    (flat / "second" / "dead.png").symlink_to(tmp_path / "moved.png")
    with pytest.raises(UserError, match=r"dead.png is a link to .*moved.png, which does not exist"):
        load_data(DataSettings(str(flat), cache_dir=tmp_path / "c"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_size": 3}, "--val-size 3 is smaller than the number of classes"),
        ({"val_size": 157}, "--val-size 157 leaves no training images"),
        ({"val_size": 20, "train_size": 141}, "--train-size 141 is more than the 140 images"),
        ({"val_size": 20, "train_size": 2}, "--train-size 2 is smaller than the number"),
    ],
)
def test_size_errors(tiny_image_folder, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        load_data(DataSettings(str(tiny_image_folder), cache_dir=tmp_path, **kwargs))


def test_cache_inside_the_data_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 2})
    with pytest.raises(UserError, match="is inside the data folder"):
        load_data(DataSettings(str(root), cache_dir=root / "cache", val_size=2))
    assert not (root / "cache").exists()


# --- download through torchvision, against a loopback server ---------------------------------


@pytest.fixture(scope="module")
def cifar_archive_server(tmp_path_factory):
    """Serve a tiny cifar-10-python.tar.gz over HTTP on 127.0.0.1; yields (url, md5)."""
    build = tmp_path_factory.mktemp("archive")
    base = make_cifar_python(build / "src", per_class=4, test_per_class=1)
    archive = build / "serve" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="cifar-10-batches-py")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        yield url, hashlib.md5(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def point_download_at(monkeypatch, url: str, md5: str) -> None:
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", url)
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_download_cifar10(cifar_archive_server, tmp_path, monkeypatch):
    url, md5 = cifar_archive_server
    point_download_at(monkeypatch, url, md5)
    config = DataSettings(
        "cifar10", data_root=tmp_path / "root", cache_dir=tmp_path / "cache", val_size=10
    )
    ds = load_data(config)
    assert ds.classes == CIFAR10_NAMES and ds.info["source"] == "cifar10"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 10, 10)
    assert (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_5").is_file()

    # the decoded cache is keyed by the name: no download needed once it exists
    shutil.rmtree(tmp_path / "root")
    point_download_at(monkeypatch, dead_url(), md5)
    again = load_data(config)
    assert torch.equal(again.train.images, ds.train.images)


def test_download_failure_says_no_network(tmp_path, monkeypatch):
    point_download_at(monkeypatch, dead_url(), "0" * 32)
    config = DataSettings("cifar10", data_root=tmp_path / "root", cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="could not download cifar10.*network.*local folder"):
        load_data(config)
    assert not (tmp_path / "cache").exists()


def test_download_checksum_mismatch(cifar_archive_server, tmp_path, monkeypatch):
    url, _ = cifar_archive_server
    point_download_at(monkeypatch, url, "0" * 32)
    config = DataSettings("cifar10", data_root=tmp_path / "root", cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match="could not download cifar10"):
        load_data(config)


# --- BatchLoader -------------------------------------------------------------------------------

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.fixture
def split() -> Split:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=gen)
    return Split(images, torch.arange(50) % 5)


def loader(split: Split, batch_size: int = 16, **kwargs) -> BatchLoader:
    return BatchLoader(split, batch_size, device="cpu", mean=MEAN, std=STD, num_classes=5, **kwargs)


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def positions(split: Split, x: torch.Tensor) -> list[int]:
    """Which images of the split a (non-augmented) batch holds."""
    index = {k: i for i, k in enumerate(by_content(split.images))}
    return [index[k] for k in by_content(unnormalise(x))]


def test_loader_normalises_in_order(split):
    batches = list(loader(split).epoch(0))
    assert len(batches) == len(loader(split)) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    assert x.dtype == torch.float32
    expected = (split.images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD
    ).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in batches]), split.labels)


def test_loader_shuffles_per_epoch_deterministically(split):
    def order(seed: int, epoch: int) -> list[int]:
        return [
            i
            for x, _ in loader(split, seed=seed, shuffle=True).epoch(epoch)
            for i in positions(split, x)
        ]

    assert sorted(order(0, 0)) == list(range(50))
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)


def test_loader_resume_reproduces_the_rest_of_the_epoch(split):
    augment = AugmentSettings(crop_pad=2, flip=True, cutout=3, cutmix=1.0)
    kwargs = {"augment": augment, "shuffle": True, "seed": 3, "drop_last": True}
    full = list(loader(split, **kwargs).epoch(2))
    tail = list(loader(split, **kwargs).epoch(2, start_step=1))
    assert len(full) == 3 and len(tail) == 2
    for (x, y), (x2, y2) in zip(full[1:], tail, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert y.shape == (16, 5) and torch.allclose(y.sum(1), torch.ones(16))
    assert not torch.equal(full[1][0], list(loader(split, **kwargs).epoch(3))[1][0])


def test_loader_shards_are_disjoint_and_cover(split):
    shards = [loader(split, shuffle=True, rank=r, world_size=2).indices(0) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 25
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert sorted(torch.cat(shards).tolist()) == list(range(50))
    # what a rank yields is its shard
    rank1 = loader(split, shuffle=True, rank=1, world_size=2)
    seen = [i for x, _ in rank1.epoch(0) for i in positions(split, x)]
    assert seen == shards[1].tolist()

    odd = Split(split.images[:49], split.labels[:49])
    padded = [loader(odd, shuffle=True, rank=r, world_size=2).indices(0) for r in range(2)]
    assert len(padded[0]) == len(padded[1]) == 25  # equal steps on every rank
    assert set(torch.cat(padded).tolist()) == set(range(49))
    dropped = [
        loader(odd, shuffle=True, drop_last=True, rank=r, world_size=2).indices(0) for r in range(2)
    ]
    assert len(dropped[0]) == len(dropped[1]) == 24
    assert set(dropped[0].tolist()).isdisjoint(dropped[1].tolist())


def test_loader_augmentation_differs_by_step_and_rank(split):
    # every batch of each rank holds the same images (one image repeated), so any difference
    # between batches comes from the augmentation's seed
    same = Split(split.images[:1].repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.int64))
    augment = AugmentSettings(crop_pad=2, cutout=3)
    rank0 = list(loader(same, augment=augment, world_size=2).epoch(0))
    rank1 = list(loader(same, augment=augment, rank=1, world_size=2).epoch(0))
    assert not torch.equal(rank0[0][0], rank0[1][0])  # step 0 vs step 1
    assert not torch.equal(rank0[0][0], rank1[0][0])  # rank 0 vs rank 1
    plain = list(loader(same, world_size=2).epoch(0))
    assert torch.equal(plain[0][0], plain[1][0])  # without augmentation they are equal


def test_loader_channels_last_and_length(split):
    x, y = next(loader(split, augment=AugmentSettings(crop_pad=2), channels_last=True).epoch(0))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
    assert x.shape == (16, 3, 8, 8)
    assert len(loader(split, drop_last=True)) == 3
    assert len(loader(split, world_size=2)) == 2  # 25 per rank


def test_loader_rejects_bad_arguments(split):
    with pytest.raises(ValueError):
        loader(split, rank=2, world_size=2)
    with pytest.raises(ValueError):
        list(loader(split).epoch(0, start_step=5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_never_syncs(split):
    augment = AugmentSettings(crop_pad=2, cutout=3, grayscale=0.5, mixup=0.2, cutmix=1.0)
    cuda = BatchLoader(
        split, 16, device="cuda", mean=MEAN, std=STD, num_classes=5, augment=augment, seed=1
    )
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync in the loop raises
    try:
        batches = list(cuda.epoch(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert batches[0][0].device.type == "cuda" and batches[0][1].shape == (16, 5)
    again = list(cuda.epoch(0, start_step=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches[1:], again, strict=True))


# ---------------------------------------------------------------------------------------------
# One decoder: every mode converted faithfully or refused by name, and a summary of what was done


def test_wide_greyscale_is_scaled_not_clipped_and_exif_is_obeyed(tmp_path, capfd):
    from PIL import Image

    from distill.data import read_image

    grey = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(grey)  # 128 * 257
    assert Image.open(grey).mode.startswith("I")
    assert np.all(read_image(grey, (8, 8)) == 128)  # convert("RGB") made it 255: white

    # 4 wide, 2 high, left half red; orientation 6: shown turned a quarter clockwise (2 x 4)
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, :2, 0] = 255
    pixels[:, 2:, 2] = 255
    turned = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(turned, exif=exif)
    upright = read_image(turned, (4, 2))
    assert upright[0, 0].tolist() == [255, 0, 0] and upright[3, 1].tolist() == [0, 0, 255]

    floats = tmp_path / "float.tiff"
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(floats)
    with pytest.raises(UserError, match=r"float\.tiff is a 'F' image"):
        read_image(floats, (4, 4))

    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 3})
    shutil.copy(grey, root / "train" / "x" / "grey16.png")
    load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))
    assert "1 converted from 16-bit greyscale" in capfd.readouterr().err


def test_links_and_hidden_folders_cannot_relabel_images(tmp_path, capfd):
    root = write_image_folder(tmp_path / "imgs", ("x", "y"), {"train": 3})
    settings = DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2)
    (root / "train" / "z").symlink_to(root / "train" / "x", target_is_directory=True)
    with pytest.raises(UserError, match=r"same file .* train/x and train/z"):
        load_data(settings)
    (root / "train" / "z").unlink()
    (root / "train" / "y" / "moved.png").symlink_to(root / "train" / "x" / "000.png")
    with pytest.raises(UserError, match=r"same file .* train/x and train/y"):
        load_data(settings)  # a file link, not a folder link, across classes
    (root / "train" / "y" / "moved.png").unlink()
    (root / "train" / "x" / "again.png").symlink_to(root / "train" / "x" / "000.png")
    (root / "train" / ".w").mkdir()
    shutil.copy(root / "train" / "x" / "000.png", root / "train" / ".w")
    ds = load_data(settings)
    assert ds.classes == ("x", "y") and len(ds.train) + len(ds.val) == 6  # the link taken once
    err = capfd.readouterr().err
    assert "reached twice in one class" in err and "passed over" in err and ".w" in err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e | {"data": e["data"].astype(np.int64) + 200}, "int64 pixels, not bytes"),
        (lambda e: e | {"labels": [str(y) for y in e["labels"]]}, "labels of type <U1"),
    ],
)
def test_cifar_pixels_and_labels_are_checked_not_cast(tmp_path, change, message):
    base = make_cifar_python(tmp_path / "src", per_class=2, test_per_class=0)
    entry = read_pickle(base / "data_batch_1")
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump(change(entry), f, protocol=2)
    with pytest.raises(UserError, match=message):
        load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10))


def test_duplicate_class_names_are_refused(tmp_path):
    names = ["cat", "dog", "cat"] + [f"c{i}" for i in range(7)]
    base = make_cifar_python(tmp_path / "src", per_class=2, label_names=names)
    with pytest.raises(UserError, match="class 'cat' appears twice"):
        load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10))
    root = tmp_path / "imgs"
    write_image_folder(root, ("caf\u00e9", "cafe\u0301"), {"train": 2})  # the same word twice
    with pytest.raises(UserError, match="appears twice"):
        load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))


def test_more_classes_than_an_export_can_carry_are_refused_before_training():
    from distill.data.dataset import check_class_names
    from distill.memory import MAX_CLASSES

    names = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    assert len(check_class_names(names[:-1], "x")) == MAX_CLASSES
    with pytest.raises(UserError, match=f"{MAX_CLASSES + 1:,} classes, more than the"):
        check_class_names(names, "x")


@pytest.mark.parametrize("name", ["new\nline", "esc\x1b[31mred", "back\rspace", "sep\u2028x"])
def test_class_names_with_control_characters_are_refused(tmp_path, name):
    # Names are printed in tables, reports and predictions: a newline breaks a row, an escape
    # sequence drives the terminal. Both ways in: a folder's name and a CIFAR archive's labels.
    root = tmp_path / "imgs"
    write_image_folder(root, ("cat", name), {"train": 2})
    with pytest.raises(UserError, match="holds a control character") as e:
        load_data(DataSettings(str(root), cache_dir=tmp_path / "cache", val_size=2))
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    names = [name] + [f"c{i}" for i in range(9)]
    base = make_cifar_python(tmp_path / "src", per_class=2, label_names=names)
    with pytest.raises(UserError, match="holds a control character"):
        load_data(DataSettings(str(base), cache_dir=tmp_path / "cache", val_size=10))


def _crafted_archive(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _member(tar: tarfile.TarFile, name: str, **fields) -> None:
    import io

    info = tarfile.TarInfo(name)
    data = b"x" * 4 if not fields else b""
    info.size = len(data)
    for k, v in fields.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "name, fields, why",
    [
        ("cifar-10-batches-py/../../escaped", {}, r"leaves the folder"),
        ("/tmp/escaped-absolute", {}, "absolute path"),
        ("cifar-10-batches-py/link", {"type": tarfile.SYMTYPE, "linkname": "/etc"}, "a link"),
        ("cifar-10-batches-py/dev", {"type": tarfile.CHRTYPE}, "device"),
    ],
)
def test_a_crafted_archive_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, name, fields, why
):
    from torchvision.datasets import CIFAR10

    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    archive = _crafted_archive(
        root / CIFAR10.filename,
        lambda tar: (
            _member(tar, "cifar-10-batches-py/data_batch_1"),
            _member(tar, name, **fields),
        ),
    )
    # The checksum matches: it vouches for the archive's identity, not for what it holds.
    point_download_at(monkeypatch, dead_url(), hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(UserError, match=f"holds .*{why}.*refusing to unpack"):
        load_data(DataSettings("cifar10", data_root=root, cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "deep" / "escaped").exists()
    assert not (root / "cifar-10-batches-py").exists()  # nothing half-unpacked
