"""The training loop: learns, resumes exactly, survives signals, never clobbers or diverges."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_VAL_SIZE, one_line_error, teacher_args
from typer.testing import CliRunner

from distill.checkpoint import load_checkpoint
from distill.cli import app
from distill.errors import UserError
from distill.recipes import RECIPES, make_recipe
from distill.resume import TrainingInterrupted, last_path
from distill.run_guard import training_run
from distill.settings import RunSettings
from distill.train import TrainingDiverged, fit
from students.resnet import CifarResNet, plan

runner = CliRunner()


def tiny_recipe(name="quick", **changes):
    # Batch 32 on the 140 training images: 4 steps an epoch.
    return dataclasses.replace(make_recipe(name, batch_size=32), **changes)


def micro_model(num_classes):
    """A two-stage ResNet from a channel plan: the loop trains any plan, and this one is fast."""
    return CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=num_classes))


def train(tiny_dataset, recipe, out, **kw):
    torch.manual_seed(0)
    model = micro_model(tiny_dataset.num_classes)
    run = RunSettings(
        out, "cpu", quiet=True, **{k: kw.pop(k) for k in ("resume", "force") if k in kw}
    )
    with training_run(run):
        return fit(model, tiny_dataset, recipe, run, kind="teacher", arch="micro", **kw)


def test_quick_recipe_learns_the_tiny_classes(tiny_dataset, tmp_path):
    # Batch 16: 8 steps an epoch, enough for BN running statistics to settle.
    recipe = dataclasses.replace(make_recipe("quick", batch_size=16), epochs=6)
    ckpt = train(tiny_dataset, recipe, tmp_path / "t.pt")
    assert ckpt["metrics"]["val_accuracy"] >= 0.75  # 4 classes: chance is 0.25
    assert "test_accuracy" in ckpt["metrics"]
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2, 3, 4, 5, 6]
    saved = load_checkpoint(tmp_path / "t.pt")
    assert saved["recipe"]["epochs"] == 6 and saved["kind"] == "teacher"
    assert saved["data"]["source_id"] == tiny_dataset.info["source_id"]
    assert saved["metrics"]["params"] == sum(p.numel() for p in micro_model(4).parameters())


def test_resume_after_interruption_gives_the_same_weights(tiny_dataset, tmp_path):
    # EMA, Lookahead, cutout and Mixup all carry state or randomness that must resume exactly.
    recipe = tiny_recipe(
        epochs=2,
        ema_decay=0.9,
        lookahead_k=3,
        augment=dataclasses.replace(RECIPES["quick"].augment, cutout=8, mixup=0.4),
    )
    whole = train(tiny_dataset, recipe, tmp_path / "a.pt")

    out = tmp_path / "b.pt"
    with pytest.raises(TrainingInterrupted):
        train(tiny_dataset, recipe, out, stop_after_steps=6)  # mid second epoch
    assert not out.exists() and last_path(out).exists()
    with pytest.raises(UserError, match="--resume"):  # never silently restart over it
        train(tiny_dataset, recipe, out)
    resumed = train(tiny_dataset, recipe, out, resume=True)

    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert [h["val_loss"] for h in whole["history"]] == [h["val_loss"] for h in resumed["history"]]


def test_resume_refuses_other_settings(tiny_dataset, tmp_path):
    out = tmp_path / "c.pt"
    with pytest.raises(TrainingInterrupted):
        train(tiny_dataset, tiny_recipe(epochs=2), out, stop_after_steps=2)
    with pytest.raises(UserError, match="different recipe"):
        train(tiny_dataset, tiny_recipe(epochs=3), out, resume=True)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_runs(tiny_dataset, tmp_path, name):
    ckpt = train(tiny_dataset, tiny_recipe(name, epochs=2), None)
    assert len(ckpt["history"]) >= 1
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    assert ckpt["recipe"]["name"] == name


def test_nan_loss_stops_with_a_clear_message_and_writes_no_output(tiny_dataset, tmp_path):
    class Poisoned:
        suspects = "--lr"

        def forward_train(self, model, batch, progress):
            logits = model(batch.x)
            return logits, logits.sum() * float("nan")

    out = tmp_path / "nan.pt"
    with pytest.raises(TrainingDiverged, match="loss became NaN"):
        train(tiny_dataset, tiny_recipe(epochs=1), out, objective=Poisoned())
    assert not out.exists()


def test_teacher_train_cli_and_eval(tiny_image_folder, tmp_path):
    out = tmp_path / "t.pt"
    args = teacher_args(tiny_image_folder, out)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.exists() and "val top-1" in result.output
    before = out.read_bytes()

    again = runner.invoke(app, args)
    one_line_error(again, "--force")
    assert out.read_bytes() == before

    ev = runner.invoke(app, ["eval", str(out), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert ev.exit_code == 0, ev.output
    res = json.loads(ev.output)
    assert res["count"] == TINY_VAL_SIZE and len(res["confusion"]) == 4
    assert res["accuracy"] == pytest.approx(load_checkpoint(out)["metrics"]["val_accuracy"])
    test = runner.invoke(
        app, ["eval", str(out), "--split", "test", "--json", "--cache-dir", str(tmp_path / "cache")]
    )
    assert test.exit_code == 0 and json.loads(test.output)["count"] == 40


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--arch", "resnet9000"], "unknown architecture"),
        (["--recipe", "fastest"], "'fastest' is not one of"),
        (["--epochs", "0"], "--epochs"),
        (["--val-size", "100000"], "val"),
        (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
        (["--out", "t.txt"], "should end in"),
        (["--device", "tpu"], "'tpu' is not one of"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_teacher_train_mistakes_exit_2_with_one_line(
    tiny_image_folder, tmp_path, monkeypatch, extra, message
):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, teacher_args(tiny_image_folder, tmp_path / "t.pt", *extra))
    one_line_error(result, message)
    assert not (tmp_path / "t.pt").exists() and not (tmp_path / "t.txt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_image_folder, tmp_path):
    result = runner.invoke(
        app, teacher_args(tiny_image_folder, tmp_path / "t.pt", "--device", "cuda")
    )
    one_line_error(result, "no CUDA GPU")


def test_sigterm_leaves_a_resumable_state(tiny_image_folder, tmp_path):
    """A real process gets SIGTERM mid-run, exits 130, and `--resume` finishes the job."""
    out = tmp_path / "t.pt"
    args = [
        sys.executable,
        "-m",
        "distill",
        *teacher_args(
            tiny_image_folder, out, "--batch-size", "8", "--train-size", "40", epochs=3, quiet=False
        ),
    ]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while "epoch   1/3" not in proc.stdout.readline():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and last_path(out).exists() and not out.exists()
    assert "--epochs 3" in err and "--train-size 40" in err  # the hint is the full command
    assert load_checkpoint(last_path(out))["train_state"]["epoch"] >= 1

    resumed = subprocess.run(
        [*args, "--resume"], capture_output=True, text=True, timeout=300, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    assert [h["epoch"] for h in load_checkpoint(out)["history"]] == [1, 2, 3]
