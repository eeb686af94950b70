"""`distill eval` on a checkpoint and on its ONNX export agree on the same split."""

import json

import pytest
import torch
from conftest import TINY_VAL_SIZE, one_line_error, teacher_args
from typer.testing import CliRunner

from distill.checkpoint import new_checkpoint, save_checkpoint
from distill.cli import app
from distill.registry import create_model

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet18-quarter", tiny_dataset.num_classes)
    path = tmp_path_factory.mktemp("eval") / "m.pt"
    ckpt = new_checkpoint(
        kind="teacher",
        arch="resnet18-quarter",
        model=model,
        classes=list(tiny_dataset.classes),
        mean=list(tiny_dataset.mean),
        std=list(tiny_dataset.std),
        input_size=list(tiny_dataset.input_size),
        recipe={},
        data=tiny_dataset.info,
    )
    save_checkpoint(ckpt, path)
    return path


def test_onnx_and_checkpoint_agree(checkpoint, tiny_image_folder, tmp_path):
    from distill.api import export_onnx

    cache = ["--cache-dir", str(tmp_path / "cache")]
    onnx = export_onnx(
        checkpoint, tmp_path / "m.onnx", data=str(tiny_image_folder), cache_dir=tmp_path / "cache"
    ).path
    pt = runner.invoke(app, ["eval", str(checkpoint), "--split", "test", "--json", *cache])
    ox = runner.invoke(
        app,
        [
            "eval",
            str(onnx),
            "--data",
            str(tiny_image_folder),
            "--val-size",
            str(TINY_VAL_SIZE),
            "--split",
            "test",
            "--json",
            *cache,
        ],
    )
    assert pt.exit_code == 0 and ox.exit_code == 0, (pt.output, ox.output)
    a, b = json.loads(pt.output), json.loads(ox.output)
    assert a["count"] == b["count"] == 40
    assert abs(a["accuracy"] - b["accuracy"]) <= 1 / 40  # at most one near-tie flips
    assert a["classes"] == b["classes"]


def test_eval_mistakes(checkpoint, tmp_path):
    for args, message in (
        (["eval", str(tmp_path / "missing.pt")], "does not exist"),
        (["eval", str(checkpoint), "--split", "train"], "'train' is not one of"),
    ):
        one_line_error(runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "c")]), message)


def test_recorded_accuracy_eval_of_the_pt_and_of_its_onnx_agree(tiny_image_folder, tmp_path):
    """Validation runs in float32 whatever the training precision (bf16 autocast here where the
    CPU has it), so the checkpoint's record, `distill eval` of it and of its fp32 export, with
    no --data (the ONNX metadata records the split), all give the same number."""
    from distill.device import cpu_has_native_bf16

    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "t.pt"
    args = teacher_args(tiny_image_folder, out, "--batch-size", "16", epochs=2)
    assert runner.invoke(app, args).exit_code == 0
    saved = torch.load(out, weights_only=True)
    assert saved["metrics"]["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    recorded = saved["metrics"]["val_accuracy"]
    pt = json.loads(runner.invoke(app, ["eval", str(out), "--json", *cache]).output)
    assert pt["accuracy"] == recorded and pt["count"] == TINY_VAL_SIZE
    exported = runner.invoke(app, ["export", "onnx", str(out), *cache])
    assert exported.exit_code == 0, exported.output
    ox = runner.invoke(app, ["eval", str(out.with_suffix(".onnx")), "--json", *cache])
    assert ox.exit_code == 0, ox.output
    assert json.loads(ox.output)["accuracy"] == recorded


def test_tta_averages_the_image_and_its_mirror(checkpoint, tiny_dataset):
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.evaluation import eval_loader, evaluate

    model = model_from_checkpoint(load_checkpoint(checkpoint))
    loader = eval_loader(tiny_dataset.val, tiny_dataset, torch.device("cpu"))
    with torch.inference_mode():
        x, y = next(loader.epoch(0))
        by_hand = (model(x) + model(x.flip(3))) / 2
    result = evaluate(model, loader, tta=True)
    assert result.accuracy == pytest.approx(float((by_hand.argmax(1) == y).float().mean()))
    assert result.loss == pytest.approx(float(torch.nn.functional.cross_entropy(by_hand, y)))
