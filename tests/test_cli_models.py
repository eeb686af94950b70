"""`distill models` and `distill budget` through typer's runner."""

import json

from conftest import one_line_error
from typer.testing import CliRunner

from distill.checkpoint import new_checkpoint, save_checkpoint
from distill.cli import app
from distill.registry import create_model

runner = CliRunner()


def test_models_json_lists_every_architecture():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    by_name = {r["name"]: r for r in rows}
    assert set(rows[0]) == {"name", "role", "params", "macs"}
    assert by_name["resnet34"]["params"] == 21_282_122
    assert by_name["resnet18-5m"]["role"] == "student"
    assert by_name["resnet18"]["macs"] == 555_422_720


def test_models_table():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "resnet22-maxpool" in result.output and "teacher" in result.output


def test_budget_of_an_architecture_within_and_over():
    ok = runner.invoke(app, ["budget", "resnet18-5m"])
    assert ok.exit_code == 0 and "within budget" in ok.output and "stage4" in ok.output
    over = runner.invoke(app, ["budget", "resnet34", "--budget", "5M"])
    assert over.exit_code == 1 and "over budget" in over.output
    tight = runner.invoke(app, ["budget", "resnet18-quarter", "--budget", "500k"])
    assert tight.exit_code == 1


def test_budget_of_a_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    ckpt = new_checkpoint(
        kind="student",
        arch="resnet18-quarter",
        model=create_model("resnet18-quarter", 4),
        classes=list("abcd"),
        mean=[0.5] * 3,
        std=[0.2] * 3,
        input_size=[3, 32, 32],
        recipe={},
        data={},
    )
    save_checkpoint(ckpt, path)
    result = runner.invoke(app, ["budget", str(path), "--budget", "1M"])
    assert result.exit_code == 0, result.output
    assert "resnet18-quarter" in result.output


def test_user_mistakes_exit_2_with_one_line(tmp_path):
    (tmp_path / "junk.pt").write_text("hello")
    for args in (
        ["budget", "resnet9000"],
        ["budget", "resnet18", "--budget", "lots"],
        ["budget", str(tmp_path / "missing.pt")],
        ["budget", str(tmp_path / "junk.pt")],
    ):
        one_line_error(runner.invoke(app, args))
