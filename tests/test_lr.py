"""One meaning of lr: the peak lr of the run's global batch, whether it arrives as `--lr`, as
`lr` in a pipeline TOML file or as a Python keyword, at one process or two.

The optimizer's own peak (the lr SGD was built with, recorded as `metrics.peak_lr`) is what is
compared. The two-process case with a real torchrun is in test_distributed.py; here the same
resolution is checked with the world size the recipe sees set to two.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import distill
from distill import distributed
from distill.checkpoint import load_checkpoint
from distill.cli import app
from distill.pipeline.config import load_config
from distill.recipes import make_recipe
from distill.settings import DataSettings, RunSettings

LR, BATCH = 0.05, 16  # quick's own lr is 0.2 at batch 256: a peak of 0.0125 at batch 16
ARCH = "resnet18-quarter"


@pytest.fixture
def where(tiny_image_folder, tmp_path):
    return {"data": str(tiny_image_folder), "cache": str(tmp_path / "cache"), "dir": tmp_path}


def _toml(tmp_path, text: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def test_the_same_lr_reaches_the_optimizer_from_flag_toml_and_python(where):
    data, cache, d = where["data"], where["cache"], where["dir"]
    flag = d / "flag.pt"
    result = CliRunner().invoke(app, [
        "teacher", "train", "--arch", ARCH, "--recipe", "quick", "--epochs", "1",
        "--batch-size", str(BATCH), "--lr", str(LR), "--data", data, "--val-size", "20",
        "--cache-dir", cache, "--device", "cpu", "--quiet", "--out", str(flag),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output

    python = distill.train_teacher(
        ARCH, data, d / "py.pt", recipe="quick", epochs=1, batch_size=BATCH, lr=LR,
        val_size=20, cache_dir=cache, device="cpu",
    )  # fmt: skip

    teacher = f"arch = '{ARCH}'\nrecipe = 'quick'\nepochs = 1\nbatch_size = {BATCH}\nlr = {LR}\n"
    config = _toml(d, f"[data]\nsource = '{data}'\n[teacher]\n{teacher}")
    s = load_config("quick", config)
    toml = distill.train_teacher(
        ARCH,
        DataSettings(source=data, val_size=20, cache_dir=cache),
        recipe=s.teacher.recipe,  # what the pipeline's teacher stage passes
        run=RunSettings(out=d / "toml.pt", device="cpu", quiet=True),
    )
    peaks = [load_checkpoint(flag)["metrics"]["peak_lr"], python["metrics"]["peak_lr"]]
    peaks.append(toml["metrics"]["peak_lr"])
    assert peaks == pytest.approx([LR] * 3)


def test_without_an_lr_the_recipes_lr_follows_the_global_batch(where):
    recipe = make_recipe("quick", batch_size=BATCH)
    assert recipe.peak_lr(1) == pytest.approx(0.2 * BATCH / 256)
    assert recipe.peak_lr(2) == pytest.approx(0.2 * 2 * BATCH / 256)


def test_two_processes_read_an_explicit_lr_as_the_global_batchs(where, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    text = f"[data]\nsource = 'x'\n[student]\nrecipe = 'quick'\nlr = {LR}\nbatch_size = {BATCH}\n"
    config = _toml(where["dir"], text)
    from_toml = load_config("quick", config).student.recipe
    from_flag = make_recipe("quick", lr=LR, batch_size=BATCH)  # the CLI's and the API's path
    assert from_toml.peak_lr(2) == pytest.approx(LR)
    assert from_flag.peak_lr(2) == pytest.approx(LR)
    assert from_toml.to_dict() == from_flag.to_dict() | {"epochs": from_toml.epochs}


def test_a_presets_lr_follows_a_batch_the_file_changes_and_a_files_lr_is_its_own(where):
    # The quick preset's student lr (0.4) is tuned at batch 256: a file that only halves the
    # batch halves the peak; a file that names an lr gets exactly that lr at its batch.
    batch_only = _toml(where["dir"], f"[data]\nsource = 'x'\n[student]\nbatch_size = {BATCH}\n")
    preset = load_config("quick", None, {"data": {"source": "x"}}).student.recipe
    assert load_config("quick", batch_only).student.recipe.peak_lr(1) == pytest.approx(
        preset.peak_lr(1) * BATCH / preset.batch_size
    )
    text = f"[data]\nsource = 'x'\n[student]\nbatch_size = {BATCH}\nlr = {LR}\n"
    with_lr = _toml(where["dir"], text)
    assert load_config("quick", with_lr).student.recipe.peak_lr(1) == pytest.approx(LR)
    flags = {"data": {"source": "x"}, "student": {"lr": LR}}  # flags: the same rule
    assert load_config("quick", None, flags).student.recipe.peak_lr(1) == pytest.approx(LR)
