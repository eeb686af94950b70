"""`distill eval` on a checkpoint and on its ONNX export agree on the same split."""

import json

import pytest
import torch
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
    from export.onnx import export_onnx

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
            "20",
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
        result = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "c")])
        assert result.exit_code == 2 and message in result.output, result.output
