"""From the demo to one's own problem: images at their own size carried through every command,
stems for large inputs, a pretrained torchvision/timm teacher imported from a state dict (random
weights saved to a file: nothing is downloaded), and runs compared in one table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import TINY_VAL_SIZE, one_line_error, pattern_images
from PIL import Image
from typer.testing import CliRunner

from distill.budget import count_macs, count_params
from distill.checkpoint import load_checkpoint
from distill.cli import app
from distill.data.resize import fit_to
from distill.registry import create_model
from distill.sizing import plan_cost
from distill.stems import choose_stem
from export.metadata import read_metadata

runner = CliRunner()
CLASSES = ("a", "b", "c")


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def folder64(tmp_path_factory):
    """3 classes of 64x64 pattern images, every fourth one 80x64 (another shape to say what is
    done with)."""
    root = tmp_path_factory.mktemp("f64")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 16)
    for i, (label, image) in enumerate(zip(labels, pattern_images(labels, rng, 80), strict=True)):
        folder = root / "train" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(image)
        im = im.crop((0, 0, 80, 64)) if i % 4 == 0 else im.resize((64, 64))
        im.save(folder / f"{i:03d}.png")
    return root


def data_args(folder, cache) -> list[str]:
    return ["--data", str(folder), "--val-size", "9", "--cache-dir", str(cache)]


QUICK = ["--recipe", "quick", "--epochs", "1", "--batch-size", "13", "--device", "cpu"]


def test_shorter_side_is_resized_then_the_centre_cropped():
    im = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high: a red centre, blue borders
    im[:, :20] = (0, 0, 255)
    im[:, 60:] = (0, 0, 255)
    im[:, 20:60] = (255, 0, 0)
    out = np.asarray(fit_to(Image.fromarray(im), (20, 20)))
    assert out.shape == (20, 20, 3)
    assert (out[..., 0] > 200).all() and (out[..., 2] < 50).all()  # only the centre is kept


@pytest.mark.parametrize("arch", ["resnet18-quarter", "preact-resnet42", "resnet50-5m"])
def test_the_imagenet_stem_is_counted_exactly_and_costs_less_at_96(arch):
    cifar, imagenet = create_model(arch), create_model(arch, stem="imagenet")
    assert plan_cost(imagenet.config, (3, 96, 96)) == (
        count_params(imagenet),
        count_macs(imagenet, (3, 96, 96)),
    )
    assert imagenet.channel_plan().stem == "imagenet"
    # CIFAR's stem at 96 pixels costs 9x its 32-pixel MACs; the ImageNet stem divides the side by 4.
    assert count_macs(imagenet, (3, 96, 96)) < count_macs(cifar, (3, 32, 32))
    assert choose_stem("auto", 96) == "imagenet" and choose_stem("auto", 32) == "cifar"
    assert choose_stem("cifar", 224) == "cifar"


def test_own_data_at_its_own_size_through_every_command(folder64, tmp_path):
    cache, t, s, p = tmp_path / "c", tmp_path / "t.pt", tmp_path / "s.pt", tmp_path / "p.pt"
    args = ["teacher", "train", "--arch", "resnet18-quarter", "--image-size", "64", "-o", str(t)]
    result = runner.invoke(app, [*args, *data_args(folder64, cache), *QUICK])
    assert result.exit_code == 0, result.output
    assert "12 of 48 images" in result.output and "80x64" in result.output
    assert "centre-cropped to 64x64" in result.output
    assert "training on 39 images at 64x64, imagenet stem" in result.output
    teacher = load_checkpoint(t)
    assert teacher["input_size"] == [3, 64, 64] and teacher["model_config"]["stem"] == "imagenet"

    # The student follows the teacher's size without being told.
    args = ["student", "--teacher", str(t), "--arch", "resnet18-quarter", "-o", str(s)]
    result = runner.invoke(app, [*args, "--cache-dir", str(cache), *QUICK])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(s)["input_size"] == [3, 64, 64]

    # Pruning continues with the model's recipe, subsample and size: nothing but the budget.
    result = runner.invoke(
        app,
        ["prune", str(s), "--budget", "0.5M", "--steps", "1", "--cache-dir", str(cache)]
        + ["--device", "cpu", "-o", str(p)],
    )
    assert result.exit_code == 0, result.output
    pruned = load_checkpoint(p)
    assert pruned["input_size"] == [3, 64, 64] and pruned["model_config"]["stem"] == "imagenet"
    assert pruned["recipe"]["name"] == "quick" and pruned["recipe"]["batch_size"] == 13
    assert pruned["data"]["train_size"] == 39 and len(pruned["history"]) == 1

    result = runner.invoke(app, ["export", "onnx", str(p), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    onnx = p.with_suffix(".onnx")
    assert read_metadata(onnx)["input_size"] == [3, 64, 64]
    image = folder64 / "train" / "a" / "000.png"  # 80x64: resized and cropped like training's
    predictions = []
    for model in (onnx, p):  # a checkpoint predicts what its export predicts
        result = runner.invoke(app, ["predict", str(model), str(image), "--json"])
        assert result.exit_code == 0, result.output
        predictions.append(json.loads(result.output)[0]["top_k"])
    assert [c["index"] for c in predictions[0]] == [c["index"] for c in predictions[1]]
    assert predictions[0][0]["probability"] == pytest.approx(predictions[1][0]["probability"], 1e-4)

    result = runner.invoke(app, ["compare", str(t), str(s), str(p), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert sorted(r["path"] for r in rows) == sorted(map(str, (t, s, p)))
    accuracies = [r["val_accuracy"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert {r["image_size"] for r in rows} == {64}
    assert {r["role"]: r["kd"] for r in rows} == {"teacher": "", "kd": "hinton", "pruned": "hinton"}
    plot = tmp_path / "compare.png"
    result = runner.invoke(app, ["compare", str(tmp_path), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "3 models, best val top-1 first" in result.output and plot.stat().st_size > 1000
    one_line_error(runner.invoke(app, ["compare", str(tmp_path), "--plot", str(plot)]), "--force")

    # A folder of runs, each in its own subfolder: the report compares them.
    runs = tmp_path / "runs"
    for name, f in (("teacher", t), ("student", s)):
        (runs / name).mkdir(parents=True)
        shutil.copy(f, runs / name / f.name)
    result = runner.invoke(app, ["report", str(runs)])
    assert result.exit_code == 0, result.output
    text = (runs / "report.md").read_text()
    assert "## Runs in subfolders" in text and "`teacher/t.pt`" in text and "`student/s.pt`" in text


@pytest.fixture(scope="module")
def shufflenet_weights(tmp_path_factory):
    """A torchvision architecture's state dict with random weights and ImageNet's 1000 classes,
    as a user's pretrained file would be."""
    path = tmp_path_factory.mktemp("weights") / "shufflenet.pth"
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), path)
    return path


def test_an_imported_torchvision_teacher_teaches_a_student_at_another_size(
    tiny_image_folder, shufflenet_weights, tmp_path
):
    cache, t, s = tmp_path / "c", tmp_path / "t.pt", tmp_path / "s.pt"
    args = ["teacher", "import", "torchvision:shufflenet_v2_x0_5", "--weights"]
    args += [str(shufflenet_weights), "--data", str(tiny_image_folder)]
    args += ["--val-size", str(TINY_VAL_SIZE)]
    args += ["--cache-dir", str(cache), "--epochs", "1", "--batch-size", "32", "-o", str(t)]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "finetune recipe" in result.output
    ckpt = torch.load(t, weights_only=True)  # plain values and tensors only
    assert ckpt["arch"] == "torchvision:shufflenet_v2_x0_5" and ckpt["kind"] == "teacher"
    assert ckpt["model_config"] == {
        "source": "torchvision",
        "name": "shufflenet_v2_x0_5",
        "num_classes": 4,
    }
    assert ckpt["origin"]["sha256"] and len(ckpt["mean"]) == 3
    assert ckpt["recipe"]["name"] == "finetune"

    # The student trains at 48 pixels; the teacher sees each batch resized to its 32.
    args = ["student", "--teacher", str(t), "--arch", "resnet18-quarter", "--image-size", "48"]
    args += ["--cache-dir", str(cache), *QUICK, "-o", str(s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    student = load_checkpoint(s)
    assert student["input_size"] == [3, 48, 48]
    assert student["teachers"][0]["arch"] == "torchvision:shufflenet_v2_x0_5"

    result = runner.invoke(app, ["compare", str(t), str(s)])
    assert result.exit_code == 0, result.output
    assert "torchvision:shufflenet_v2_x0_5" in result.output and "finetune, 1 ep" in result.output
    result = runner.invoke(app, ["budget", str(t)])  # its own parts, not a CIFAR ResNet's stages
    assert result.exit_code == 0 and "conv1" in result.output and "stage1" not in result.output
    pruned = tmp_path / "p.pt"
    one_line_error(
        runner.invoke(app, ["prune", str(t), "--budget", "0.5M", "-o", str(pruned)]),
        "imported",
        "distill student",
    )


def test_import_mistakes_are_one_line(tiny_image_folder, shufflenet_weights, tmp_path):
    base = ["teacher", "import"]
    rest = ["--data", str(tiny_image_folder), "--cache-dir", str(tmp_path / "c")]
    rest += ["-o", str(tmp_path / "t.pt")]
    weights = ["--weights", str(shufflenet_weights)]
    one_line_error(runner.invoke(app, [*base, "resnet50", *weights, *rest]), "torchvision:NAME")
    one_line_error(
        runner.invoke(app, [*base, "torchvision:shufflenet_v2_x05", *weights, *rest]),
        "did you mean shufflenet_v2_x0_5",
    )
    one_line_error(
        runner.invoke(app, [*base, "torchvision:resnet18", *weights, *rest]),
        "does not hold the weights of torchvision:resnet18",
    )
    missing = ["--weights", str(tmp_path / "nope.pth")]
    one_line_error(
        runner.invoke(app, [*base, "torchvision:resnet18", *missing, *rest]), "does not exist"
    )
    assert not (tmp_path / "t.pt").exists()


def test_a_timm_teacher_is_imported_from_a_safetensors_file(tiny_image_folder, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(weights))
    t = tmp_path / "t.pt"
    args = ["teacher", "import", "timm:test_resnet", "--weights", str(weights), "--data"]
    args += [str(tiny_image_folder), "--val-size", str(TINY_VAL_SIZE)]
    args += ["--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--epochs", "1", "--device", "cpu", "-o", str(t)])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(t)
    assert ckpt["model_config"]["source"] == "timm" and ckpt["input_size"] == [3, 32, 32]


def test_a_run_is_tracked_in_mlflow_and_read_back(tiny_image_folder, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    t = tmp_path / "t.pt"
    args = ["teacher", "train", "--arch", "resnet18-quarter", "--data", str(tiny_image_folder)]
    args += ["--val-size", str(TINY_VAL_SIZE), "--cache-dir", str(tmp_path / "c")]
    args += [*QUICK, "--epochs", "2"]
    result = runner.invoke(app, [*args, "--mlflow", uri, "-o", str(t)])
    assert result.exit_code == 0, result.output
    record = load_checkpoint(t)["tracking"]
    result = runner.invoke(app, ["export", "onnx", str(t), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert (
        run.data.params["recipe.name"] == "quick" and run.data.params["arch"] == "resnet18-quarter"
    )
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(
        load_checkpoint(t)["metrics"]["val_accuracy"]
    )
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"t.pt", "onnx"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "onnx")] == ["onnx/t.onnx"]
    assert not (tmp_path / "mlruns").exists()  # artefacts beside the database


def test_the_file_to_ship_is_the_fastest_within_half_a_point():
    from distill.report.records import Model
    from distill.ship import ship_line

    def onnx(name, precision, acc, size, ms):
        return Model(
            Path(name), "kd", "x", 1, 1, acc, None, size, precision, "s.pt", None, None, ms
        )

    models = [
        Model(Path("t.pt"), "teacher", "t", 1, 1, 0.9, None, 40_000),
        onnx("s.onnx", "fp32", 0.812, 4000, 1.0),
        onnx("s.int8.onnx", "int8", 0.808, 1000, 0.25),
        onnx("p.int8.onnx", "int8", 0.70, 500, 0.1),  # faster, but 11 points worse
    ]
    assert ship_line(models) == (
        "ship s.int8.onnx: 80.8% val top-1, 0.25 ms at batch 1 on this CPU, 4.0x smaller than "
        "its fp32 export"
    )
