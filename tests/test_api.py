"""The Python API (distill/api/): the README's example runs as written, a loaded model computes
what its ONNX export computes, quiet means silent, and mistakes are UserErrors."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BATCH_SIZE, TINY_VAL_SIZE

import distill
from distill.checkpoint import load_checkpoint
from distill.errors import UserError
from distill.recipes import get_recipe, make_recipe, teacher_recipe

ROOT = Path(__file__).resolve().parents[1]
# The tiny folder's 160 training images less the held-out ones, in batches (4 steps an epoch).
TINY_SETTINGS = {"val_size": TINY_VAL_SIZE, "batch_size": TINY_BATCH_SIZE}


def readme_example() -> str:
    """The first python block of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert m, "README's From Python section has no python block"
    return m.group(1)


@pytest.fixture(scope="module")
def readme_run(tiny_image_folder, tmp_path_factory):
    """Run the README example on the tiny image folder, in a fresh directory and home (so its
    default cache is a temp folder); return (directory, what it printed, its variables)."""
    code = readme_example()
    for old, new in (
        ('data = "cifar10"', f"data = {str(tiny_image_folder)!r}"),
        ('"train_size": 5000', ", ".join(f"{k!r}: {v}" for k, v in TINY_SETTINGS.items())),
    ):
        assert code.count(old) == 1, f"the README example no longer has {old}"
        code = code.replace(old, new)
    where = tmp_path_factory.mktemp("readme")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(where)
        mp.setenv("HOME", str(where / "home"))
        namespace: dict = {}
        exec(compile(code, "README.md (From Python)", "exec"), namespace)
    return where, out.getvalue(), namespace


def test_readme_example_runs(readme_run):
    where, printed, ns = readme_run
    runs = where / "runs" / "py"
    for name in ("t.pt", "t.metrics.csv", "s.pt", "s.metrics.csv", "s.onnx"):
        assert (runs / name).is_file(), name
    assert not (runs / "t.last.pt").exists() and not (runs / "s.last.pt").exists()
    assert (where / "home" / ".cache" / "distill").is_dir()  # the default cache, under HOME
    lines = printed.splitlines()
    assert lines[0].startswith("student: val top-1 ") and lines[0].endswith("%")
    assert re.fullmatch(r"top-1 \d+\.\d\d%, top-5 \d+\.\d\d%", lines[1])
    assert lines[2] == "runs/py/s.onnx ['blue', 'green', 'red', 'yellow']"
    student = load_checkpoint(runs / "s.pt")
    assert student["kind"] == "student" and student["recipe"]["name"] == "quick"
    assert ns["result"]["accuracy"] == pytest.approx(student["metrics"]["val_accuracy"])
    assert 0 <= ns["result"]["accuracy"] <= ns["result"]["top5"] <= 1


def test_a_teacher_is_smoothed_as_its_recipe_says_for_teachers(readme_run):
    where, _, _ = readme_run
    quick = get_recipe("quick")
    teacher = load_checkpoint(where / "runs" / "py" / "t.pt")
    student = load_checkpoint(where / "runs" / "py" / "s.pt")
    assert teacher["recipe"]["label_smoothing"] == quick.teacher_label_smoothing
    assert student["recipe"]["label_smoothing"] == quick.label_smoothing
    # The GPU recipe trains unsmoothed teachers, whatever its students use.
    standard = teacher_recipe("standard")
    assert standard.label_smoothing == 0.0 < get_recipe("standard").label_smoothing
    assert teacher_recipe("standard", label_smoothing=0.05).label_smoothing == 0.05
    assert teacher["recipe"]["epochs"] == student["recipe"]["epochs"]


def test_load_model_computes_what_the_onnx_export_computes(readme_run):
    import onnxruntime as ort

    where, _, _ = readme_run
    model = distill.load_model(where / "runs" / "py" / "s.pt")
    assert not model.training
    assert model.classes == ["blue", "green", "red", "yellow"]
    assert model.input_size == [3, 32, 32]
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32)))
    x = pixels.float() / 255  # what a user feeds both: [0,1] RGB, NCHW
    with torch.inference_mode():
        ours = model(x).numpy()
    session = ort.InferenceSession(str(where / "runs" / "py" / "s.onnx"))
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert ours.shape == (6, 4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    # Normalisation is inside: the raw network on the same [0,1] pixels gives other logits.
    with torch.inference_mode():
        raw = model.model(x).numpy()
    assert np.abs(raw - ours).max() > 1e-2


def test_quiet_prints_nothing_and_loud_prints_progress(tiny_image_folder, tmp_path, capfd):
    settings = {"recipe": "quick", "epochs": 1, "cache_dir": tmp_path / "cache", **TINY_SETTINGS}
    ckpt = distill.train_teacher(
        "resnet18-quarter", tiny_image_folder, tmp_path / "t.pt", **settings
    )
    result = distill.evaluate(tmp_path / "t.pt", cache_dir=tmp_path / "cache")
    assert capfd.readouterr() == ("", "")
    assert result["accuracy"] == pytest.approx(ckpt["metrics"]["val_accuracy"])
    assert (tmp_path / "t.metrics.csv").is_file()

    distill.train_teacher(
        "resnet18-quarter", tiny_image_folder, tmp_path / "t2.pt", quiet=False, **settings
    )
    out, err = capfd.readouterr()
    assert out == ""  # stdout belongs to the caller's program
    assert "training on 140 images" in err and "epoch   1/1" in err


def test_prune_takes_its_settings_by_name(readme_run, tmp_path):
    where, _, _ = readme_run
    pruned = distill.prune(
        where / "runs" / "py" / "s.pt",
        "0.4M",
        tmp_path / "p.pt",
        recipe="quick",
        steps=1,
        epochs_per_step=0,
        epochs=1,  # the recovery's epochs (PruneSettings), not the recipe's
        batch_size=32,
        cache_dir=where / "home" / ".cache" / "distill",
    )
    assert pruned["kind"] == "pruned" and pruned["metrics"]["params"] <= 400_000
    assert len(pruned["history"]) == 1 and pruned["pruning"]["steps"] == 1
    assert load_checkpoint(tmp_path / "p.pt")["metrics"] == pruned["metrics"]


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda data, d: distill.train_teacher("resnet18-quarter", data, epoch=1),
            "did you mean epochs",
        ),
        (
            lambda data, d: distill.train_teacher("resnet9000", data, **TINY_SETTINGS),
            "unknown architecture",
        ),
        (
            lambda data, d: distill.train_teacher("resnet18-quarter", data, epochs=0),
            "epochs must be",
        ),
        (
            lambda data, d: distill.train_teacher("resnet18-quarter", data, recipe="fast"),
            "unknown recipe",
        ),
        (
            lambda data, d: distill.train_teacher("resnet18-quarter", data, device="tpu"),
            "device must be",
        ),
        (lambda data, d: distill.train_teacher("resnet18-quarter", 3), "data must be"),
        (lambda data, d: distill.train_student([], "resnet18-quarter"), "no teacher given"),
        (lambda data, d: distill.train_student(d / "t.pt", "resnet18-quarter"), "does not exist"),
        (lambda data, d: distill.prune(d / "t.pt", "no", d / "p.pt"), "budget 'no'"),
        (lambda data, d: distill.export_onnx(d / "t.pt", int8="no"), "int8 must be true or false"),
        (lambda data, d: distill.export_onnx(d / "t.pt", opset=17), "export_onnx() has no setting"),
        (lambda data, d: distill.evaluate(d / "missing.pt"), "does not exist"),
        (lambda data, d: distill.evaluate(d / "t.pt", batch_size=8), "evaluate() has no setting"),
        (lambda data, d: distill.load_model(d / "missing.pt"), "does not exist"),
    ],
)
def test_mistakes_raise_one_line_user_errors(tiny_image_folder, tmp_path, call, message):
    with pytest.raises(UserError) as e:
        call(tiny_image_folder, tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_kd_settings_by_name_are_checked_before_any_work(readme_run, tmp_path):
    where, _, _ = readme_run
    teacher = where / "runs" / "py" / "t.pt"
    with pytest.raises(UserError, match="kd method must be one of hinton, dkd"):
        distill.train_student(teacher, "resnet18-quarter", out=tmp_path / "s.pt", kd="magic")
    with pytest.raises(UserError, match="over the budget"):
        distill.train_student(teacher, "resnet18", out=tmp_path / "s.pt", budget="1M")
    assert not list(tmp_path.iterdir())


def test_make_recipe_takes_a_name_or_a_recipe():
    by_name = make_recipe("quick", epochs=3)
    assert make_recipe(get_recipe("quick"), epochs=3) == by_name
    assert make_recipe(by_name) == by_name  # an already-resolved recipe passes through
    assert by_name.epochs == 3 and by_name.name == "quick"


def test_import_distill_stays_cheap():
    code = "import sys, distill; print('torch' in sys.modules, sorted(distill.__all__))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.startswith("False ")
    for name in ("load_model", "train_teacher", "train_student", "prune", "export_onnx"):
        assert name in out and callable(getattr(distill, name))
