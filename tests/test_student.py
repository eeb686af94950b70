"""`distill student`: tiny end-to-end runs and every refusal, through typer's runner."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARCH, data_args, make_teacher, one_line_error, quick_args
from typer.testing import CliRunner

import distill.api.training as training_mod
import distill.kd.objective as kd_objective
import distill.teacher_checks as teacher_checks
from distill.api import train_student
from distill.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
)
from distill.cli import app
from distill.data import DataSettings, Split, load_data
from distill.errors import UserError
from distill.files import file_sha256
from distill.kd.objective import KDObjective
from distill.recipes import make_recipe
from distill.registry import create_model
from distill.resume import TrainingInterrupted, last_path
from distill.settings import KDSettings, RunSettings, kd_record, resolve_kd

runner = CliRunner()


def small(dataset, n: int = 16):
    """The dataset with only its first `n` training images: fewer steps, same statistics."""
    train = Split(dataset.train.images[:n], dataset.train.labels[:n])
    return replace(dataset, train=train)


def test_student_from_a_trained_teacher_and_an_ensemble(tiny_image_folder, tiny_dataset, tmp_path):
    cache, t1, out = tmp_path / "cache", tmp_path / "t1.pt", tmp_path / "s.pt"
    val_size, split_seed = tiny_dataset.info["val_size"], tiny_dataset.info["split_seed"]
    data = data_args(tiny_image_folder, tiny_dataset, cache, train_size=16)  # 2 steps an epoch
    split = ["--val-size", str(val_size), "--split-seed", str(split_seed)]
    args = ["teacher", "train", "--arch", TINY_ARCH, "--out", str(t1), *quick_args(), *split]
    trained = runner.invoke(app, args + data)
    assert trained.exit_code == 0, trained.output
    seen = load_data(
        DataSettings(str(tiny_image_folder), cache_dir=cache, val_size=val_size, train_size=16,
                   split_seed=split_seed)
    )  # fmt: skip
    t2 = make_teacher(tmp_path / "t2.pt", seen, arch="resnet18-half")

    args = ["student", "--teacher", str(t1), "--teacher", str(t2), "--arch", TINY_ARCH]
    args += ["--kd", "dkd"]
    result = runner.invoke(app, args + ["--out", str(out), *quick_args(), *data])
    assert result.exit_code == 0, result.output
    assert "saved" in result.output

    ckpt = load_checkpoint(out)  # torch.load(weights_only=True) under the hood
    assert ckpt["kind"] == "student" and ckpt["arch"] == TINY_ARCH
    teacher1 = load_checkpoint(t1)
    assert ckpt["teachers"] == [
        {
            "path": str(t1.resolve()),
            "sha256": file_sha256(t1),
            "arch": TINY_ARCH,
            "val_accuracy": teacher1["metrics"]["val_accuracy"],
        },
        {
            "path": str(t2.resolve()),
            "sha256": file_sha256(t2),
            "arch": "resnet18-half",
            "val_accuracy": 0.25,
        },
    ]
    # DKD's defaults for 4 classes and a 1-epoch run: beta scaled to the 3 other classes (8 at
    # CIFAR-100's 99), the warm-up at least one epoch and at most the run.
    assert ckpt["kd"] == {
        "method": "dkd",
        "alpha": 1.0,
        "temperature": 4.0,
        "beta": pytest.approx(8 * 3 / 99),
        "warmup_epochs": 1.0,
        "teacher_tta": False,
    }
    # The split was defaulted to the teacher's, so the student was validated on the same images.
    for key in ("source_id", "split_seed", "val_size"):
        assert ckpt["data"][key] == teacher1["data"][key]
    assert 0.0 <= ckpt["metrics"]["val_accuracy"] <= 1.0
    logits = model_from_checkpoint(ckpt)(torch.zeros(1, *tiny_dataset.input_size))
    assert logits.shape == (1, tiny_dataset.num_classes)


def test_over_budget_student_exits_2_and_writes_nothing(tiny_image_folder, tiny_dataset, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset)
    out, cache = tmp_path / "s.pt", tmp_path / "cache"
    args = ["student", "--teacher", str(teacher), "--arch", TINY_ARCH, "--budget", "100k"]
    result = runner.invoke(
        app, args + ["--out", str(out)] + data_args(tiny_image_folder, tiny_dataset, cache)
    )
    one_line_error(result, "budget", "100,000")
    # Checked before the data is decoded: not even the data cache was written.
    assert not out.exists() and not last_path(out).exists() and not cache.exists()


def onnx_file(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("kind", ["onnx", "text", "truncated"])
def test_non_checkpoint_teachers_are_refused(kind, tiny_image_folder, tiny_dataset, tmp_path):
    if kind == "onnx":
        bad = onnx_file(tmp_path / "t.onnx")
    elif kind == "text":
        bad = tmp_path / "t.pt"
        bad.write_text("not a model\n")
    else:
        good = make_teacher(tmp_path / "good.pt", tiny_dataset).read_bytes()
        bad = tmp_path / "t.pt"
        bad.write_bytes(good[: len(good) // 2])
    out = tmp_path / "s.pt"
    args = ["student", "--teacher", str(bad), "--arch", TINY_ARCH, "--out", str(out)]
    result = runner.invoke(app, args + data_args(tiny_image_folder, tiny_dataset, tmp_path / "c"))
    one_line_error(result, str(bad))
    assert "Traceback" not in result.output and not out.exists()


MISMATCHES = {
    "classes": lambda d: {"classes": [c.upper() for c in d.classes]},
    "number of classes": lambda d: {
        "classes": [*d.classes, "extra"],
        "num_classes": d.num_classes + 1,
    },
    "mean": lambda d: {"mean": [m + 0.05 for m in d.mean]},
    "std": lambda d: {"std": [s * 1.5 for s in d.std]},
    "source": lambda d: {"data": d.info | {"source_id": "0123456789abcdef"}},
}
MESSAGE = {
    "classes": "classes",
    "number of classes": "5 classes",
    "mean": "mean",
    "std": "std",
    "source": "--data",
}


@pytest.mark.parametrize("what", list(MISMATCHES))
def test_mismatched_teachers_are_refused(what, tiny_image_folder, tiny_dataset, tmp_path):
    fields = MISMATCHES[what](tiny_dataset)
    num_classes = fields.pop("num_classes", None)
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset, num_classes=num_classes, **fields)
    out = tmp_path / "s.pt"
    args = ["student", "--teacher", str(teacher), "--arch", TINY_ARCH, "--out", str(out)]
    args += quick_args()
    result = runner.invoke(app, args + data_args(tiny_image_folder, tiny_dataset, tmp_path / "c"))
    one_line_error(result, MESSAGE[what])
    assert not out.exists() and not last_path(out).exists()


def test_explicit_split_must_be_the_teachers(tiny_image_folder, tiny_dataset, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset)
    base = ["student", "--teacher", str(teacher), "--arch", TINY_ARCH]
    base += ["--out", str(tmp_path / "s.pt"), *quick_args()]
    base += data_args(tiny_image_folder, tiny_dataset, tmp_path / "c")
    wrong_val = str(tiny_dataset.info["val_size"] + 4)
    one_line_error(runner.invoke(app, base + ["--val-size", wrong_val]), "--val-size")
    wrong_seed = str(tiny_dataset.info["split_seed"] + 1)
    one_line_error(runner.invoke(app, base + ["--split-seed", wrong_seed]), "--split-seed")


@pytest.mark.parametrize("key,flag", [("split_seed", "--split-seed"), ("val_size", "--val-size")])
def test_data_on_another_split_is_refused(key, flag, tiny_dataset, tmp_path):
    """A library caller handing a Dataset drawn with another split than the teacher's."""
    info = tiny_dataset.info | {key: tiny_dataset.info[key] + 1}
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset, data=info)
    run = RunSettings(tmp_path / "s.pt", "cpu", quiet=True)
    recipe = make_recipe("quick", epochs=1)
    with pytest.raises(UserError, match=flag):
        train_student(teacher, TINY_ARCH, tiny_dataset, recipe=recipe, run=run, kd=KDSettings())
    assert not (tmp_path / "s.pt").exists()


def test_teacher_sees_exactly_the_students_mixed_batch(tiny_dataset, tmp_path, monkeypatch):
    """Same tensor object, in eval and inference mode, Mixup/CutMix applied (soft targets)."""
    student_inputs, teacher_calls, targets_seen = [], [], []

    def spy_student(*args, **kwargs):
        model = create_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inp: student_inputs.append(inp[0]))
        return model

    def spy_teacher(ckpt):
        model = model_from_checkpoint(ckpt)

        def hook(module, inputs):
            teacher_calls.append((inputs[0], module.training, torch.is_inference_mode_enabled()))

        model.register_forward_pre_hook(hook)
        return model

    class SpyObjective(KDObjective):
        def forward_train(self, model, batch, progress):
            targets_seen.append(batch.targets)
            return super().forward_train(model, batch, progress)

    monkeypatch.setattr(training_mod, "create_model", spy_student)
    monkeypatch.setattr(teacher_checks, "model_from_checkpoint", spy_teacher)
    monkeypatch.setattr(kd_objective, "KDObjective", SpyObjective)
    recipe = make_recipe("sgd-lookahead-cutmix", epochs=1, batch_size=8)
    recipe = replace(recipe, augment=replace(recipe.augment, mixup=0.2))  # Mixup and CutMix
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset)
    run = RunSettings(tmp_path / "s.pt", "cpu", quiet=True)
    with pytest.raises(TrainingInterrupted):
        train_student(
            teacher, TINY_ARCH, small(tiny_dataset), recipe=recipe, run=run, kd=KDSettings(),
            stop_after_steps=2,
        )  # fmt: skip
    assert len(teacher_calls) == len(student_inputs) == 2
    for x, (seen, training, inference) in zip(student_inputs, teacher_calls, strict=True):
        assert seen is x and not training and inference
    assert all(t.ndim == 2 and t.dtype == torch.float32 for t in targets_seen)


def test_interrupted_student_resumes_to_the_same_weights(tiny_dataset, tmp_path):
    teacher = make_teacher(tmp_path / "t.pt", tiny_dataset)
    # 2 steps an epoch; 3 epochs (OneCycleLR divides by zero on exactly 4 steps in all)
    recipe = make_recipe("quick", epochs=3, batch_size=8)
    kd = KDSettings("hinton", temperature=2.0)
    dataset = small(tiny_dataset)

    def distil(out, kd=kd, resume=False, stop_after_steps=None):
        run = RunSettings(out, "cpu", resume=resume, quiet=True)
        return train_student(
            teacher, TINY_ARCH, dataset, recipe=recipe, run=run, kd=kd,
            stop_after_steps=stop_after_steps,
        )  # fmt: skip

    whole = distil(tmp_path / "a.pt")
    with pytest.raises(TrainingInterrupted):
        distil(tmp_path / "b.pt", stop_after_steps=3)
    with pytest.raises(UserError, match="KD settings"):
        distil(tmp_path / "b.pt", kd=replace(kd, temperature=3.0), resume=True)
    resumed = distil(tmp_path / "b.pt", resume=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert resumed["teachers"] == whole["teachers"]
    assert resumed["kd"] == kd_record(resolve_kd(kd, recipe.epochs, 4))
