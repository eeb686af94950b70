"""The distillation methods in training: feature taps, the objective's own modules (outside the
student's checkpoint, budget and ONNX graph, inside `.last.pt`), resume, pruned students, DDP's
memory bank, the CLI (`--kd M`, `distill kd-methods`) and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch
from conftest import TINY_ARCH, data_args, make_teacher, one_line_error, quick_args
from typer.testing import CliRunner

import distill.pruning.iterative as prune_run
from distill.api import train_student
from distill.budget import count_params
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.cli import app
from distill.data import BatchLoader, Split
from distill.kd.feature_losses import MemoryBank
from distill.kd.objective import KDObjective
from distill.kd.taps import FeatureTaps, feature_shapes, points
from distill.pruning.iterative import prune_checkpoint
from distill.recipes import make_recipe
from distill.registry import create_model
from distill.resume import TrainingInterrupted, last_path
from distill.settings import KD_METHOD_HELP, KDSettings, PruneSettings, RunSettings
from students.resnet import CifarResNet, plan

runner = CliRunner()
ENV_THREADS = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CRD_WORKER = Path(__file__).with_name("crd_worker.py")
FAST_CRD = {"crd_negatives": 16, "crd_dim": 16}


# ---------------------------------------------------------------------------------------------
# Taps


@pytest.mark.parametrize("arch", ["resnet18-quarter", "resnet50-5m", "seresnet24", "wrn-16-2"])
def test_taps_read_every_point_without_changing_the_model(arch):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        taps = FeatureTaps(model, points(model))
        tapped = model(x)
    assert torch.equal(plain, tapped)  # hooks only read
    f = taps.features
    n = len(model.stages)
    assert f["stem"].shape[1] == model.config.stem_width
    for i in range(1, n + 1):
        assert f[f"stage{i}"].shape[1] == model.config.widths[i - 1]
        if model.config.block != "preact":
            # The pre-activation keeps what the block's final ReLU drops.
            assert torch.allclose(torch.relu(f[f"preact{i}"]), f[f"stage{i}"])
            assert (f[f"preact{i}"] < 0).any()
    assert torch.allclose(model.fc(f["pool"]), plain, atol=1e-6)
    taps.recording = False
    taps.features.clear()
    with torch.no_grad():
        model(x)
    assert taps.features == {}
    taps.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_taps_follow_a_changed_channel_plan():
    # A pruned model is just another plan: the taps find its modules and report its widths.
    pruned = CifarResNet(plan("basic", (2, 2), (24, 40), stem_width=8))
    shapes = feature_shapes(pruned, ["stem", "stage1", "preact2", "pool"], (3, 32, 32))
    assert shapes == {"stem": (8, 32, 32), "stage1": (24, 32, 32), "preact2": (40, 16, 16),
                      "pool": (40,)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The objective's modules: trained, resumable, never part of the student


def balanced(dataset, per_class: int = 4):
    """The dataset with `per_class` training images of each class."""
    labels = dataset.train.labels
    keep = torch.cat([torch.nonzero(labels == c)[:per_class, 0] for c in range(4)])
    train = Split(dataset.train.images[keep], labels[keep])
    return replace(dataset, train=train)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, tiny_dataset) -> Path:
    return make_teacher(tmp_path_factory.mktemp("kd") / "t.pt", tiny_dataset, arch="resnet18-half")


@pytest.mark.parametrize("method", ["fitnet", "crd"])
def test_method_modules_stay_out_of_the_student_and_resume_bit_identical(
    method, teacher_file, tiny_dataset, tmp_path
):
    recipe = make_recipe("quick", epochs=3, batch_size=8)  # 2 steps an epoch
    kd = KDSettings(method, **(FAST_CRD if method == "crd" else {}))
    dataset = balanced(tiny_dataset)  # CRD draws its negatives from the other classes

    def distil(out, resume=False, stop_after_steps=None):
        run = RunSettings(out, "cpu", resume=resume, quiet=True)
        return train_student(
            teacher_file, TINY_ARCH, dataset, recipe=recipe, run=run, kd=kd,
            stop_after_steps=stop_after_steps,
        )  # fmt: skip

    whole = distil(tmp_path / "a.pt")
    with pytest.raises(TrainingInterrupted):
        distil(tmp_path / "b.pt", stop_after_steps=3)  # mid-epoch 2
    state = load_checkpoint(last_path(tmp_path / "b.pt"))["train_state"]
    modules = {"fitnet": "connector.", "crd": "bank."}[method]
    assert any(k.startswith(modules) for k in state["objective"])
    resumed = distil(tmp_path / "b.pt", resume=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    # The student's checkpoint, parameter count and ONNX graph hold the student alone.
    student = create_model(TINY_ARCH, 4)
    assert set(whole["state_dict"]) == set(student.state_dict())
    assert whole["metrics"]["params"] == count_params(student)
    onnx_file = tmp_path / "s.onnx"
    result = runner.invoke(app, ["export", "onnx", str(tmp_path / "a.pt"), "-o", str(onnx_file)])
    assert result.exit_code == 0, result.output
    graph = onnx.load(str(onnx_file)).graph
    onnx_params = sum(
        int(torch.tensor(list(t.dims)).prod()) for t in graph.initializer if len(t.dims) > 0
    )
    assert onnx_params <= sum(v.numel() for v in student.state_dict().values())
    assert not any(name.startswith(("connector", "embed", "bank")) for name in
                   (t.name for t in graph.initializer))  # fmt: skip
    assert not any(m._forward_hooks for m in model_from_checkpoint(whole).modules())


def test_crd_bank_of_two_processes_equals_one_process_with_the_doubled_batch(tmp_path):
    env = os.environ | ENV_THREADS
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = subprocess.run([sys.executable, str(CRD_WORKER), str(one)], capture_output=True,
                            text=True, timeout=240, env=env)  # fmt: skip
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = subprocess.run([*launcher, str(CRD_WORKER), str(two)], capture_output=True,
                            text=True, timeout=240, env=env)  # fmt: skip
    assert double.returncode == 0, double.stderr
    a, b = torch.load(one), torch.load(two)
    for key in ("student_bank", "teacher_bank"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    # The step moved the 16 images' rows of each bank, and no other.
    start = MemoryBank(8, 40, 0.07, 0.5)
    assert int((a["student_bank"] != start.student).any(1).sum()) == 16


@pytest.mark.parametrize("method", ["fitnet", "reviewkd"])
def test_recovery_of_a_pruned_student_sizes_its_connectors_to_the_new_plan(
    method, tiny_dataset, tmp_path, monkeypatch
):
    source = make_teacher(tmp_path / "source.pt", tiny_dataset)
    built: list[tuple[KDObjective, list[int]]] = []
    make = prune_run.make_objective

    def spy(model, *args):
        objective = make(model, *args)
        built.append((objective, list(model.channel_plan().widths)))
        return objective

    monkeypatch.setattr(prune_run, "make_objective", spy)
    recipe = replace(make_recipe("quick", epochs=1, batch_size=8), channels_last=False)
    prune_checkpoint(
        source, PruneSettings("400k", steps=2, epochs_per_step=1),
        data=balanced(tiny_dataset, 8), recipe=recipe, kd=KDSettings(method),
        run=RunSettings(tmp_path / "p.pt", "cpu", quiet=True),
    )  # fmt: skip
    assert len(built) == 2  # after the first prune step, and for the recovery
    for objective, widths in built:
        if method == "fitnet":
            assert objective.connector.conv.in_channels == widths[1]  # stage 2, the hint
        else:
            ins = [b.conv1[0].in_channels for b in objective.review.blocks]
            assert ins == widths + [widths[-1]]  # each stage, then the pooled embedding
    assert built[0][1] != list(create_model(TINY_ARCH, 4).channel_plan().widths)


# ---------------------------------------------------------------------------------------------
# The CLI


@pytest.mark.parametrize("method", list(KD_METHOD_HELP))
def test_student_cli_runs_every_method(method, tiny_image_folder, tiny_dataset, teacher_file,
                                       tmp_path):  # fmt: skip
    out = tmp_path / "s.pt"
    extra = ["--crd-negatives", "16"] if method == "crd" else []
    data = data_args(tiny_image_folder, tiny_dataset, tmp_path / "cache", train_size=16)
    args = ["student", "--teacher", str(teacher_file), "--arch", TINY_ARCH, "--kd", method,
            "--out", str(out), *quick_args(), *extra, *data]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    assert ckpt["kd"]["method"] == method
    assert not last_path(out).exists()


def test_method_refusals_are_one_line(tiny_image_folder, tiny_dataset, teacher_file, tmp_path):
    data = data_args(tiny_image_folder, tiny_dataset, tmp_path / "cache", train_size=16)

    def student(*extra):
        args = ["student", "--teacher", str(teacher_file), "--arch", TINY_ARCH,
                "--out", str(tmp_path / "s.pt"), *quick_args(), *data, *extra]  # fmt: skip
        return runner.invoke(app, args)

    ensemble = student("--teacher", str(teacher_file), "--kd", "at")
    one_line_error(ensemble, "--kd at", "one teacher")
    one_line_error(student("--kd", "crd", "--logit-standardize"), "--logit-standardize")
    one_line_error(student("--kd", "fitnet", "--hint-stage", "9"), "--hint-stage 9")
    one_line_error(student("--kd", "mlkd", "--recipe", "sgd-lookahead-cutmix"), "mlkd")
    # CRD's bank and its gathered negatives, estimated before either is allocated (a
    # traceback from the allocator before).
    line = one_line_error(student("--kd", "crd", "--crd-negatives", "1000000000"), "needs at least")
    assert "--crd-negatives 1,000,000,000" in line and "lower --crd-negatives" in line
    one_line_error(student("--kd", "crd", "--crd-dim", "100000000"), "--crd-dim 100,000,000")
    assert not (tmp_path / "s.pt").exists()


def test_kd_methods_table_counts_and_times_every_method():
    args = ["kd-methods", "--student", "resnet18-quarter", "--teacher", "resnet18-quarter",
            "--classes", "4", "--batch-size", "4", "--device", "cpu", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads(result.output)["rows"]}
    assert set(rows) == set(KD_METHOD_HELP)
    assert rows["hinton"]["vs_hinton"] == 1.0
    assert all(r["ms_per_step"] > 0 for r in rows.values())
    for method in ("hinton", "dkd", "dist", "mlkd", "at"):
        assert rows[method]["extra_params"] == 0
    # FitNet's connector between equal 16x16 maps: a 1x1 conv 32 -> 32 with bias, and its BN.
    assert rows["fitnet"]["extra_params"] == 32 * 32 + 32 + 2 * 32
    assert rows["crd"]["extra_params"] == 2 * (128 * 128 + 128)  # two heads, 128 -> 128
    assert not rows["crd"]["ensembles"] and rows["dist"]["ensembles"]
    unknown = runner.invoke(app, ["kd-methods", "--student", "nope", "--no-time"])
    one_line_error(unknown, "nope")


def test_mlkd_strong_view_is_made_on_the_loader_and_reproducible(tiny_dataset):
    def first(strong):
        loader = BatchLoader.of(tiny_dataset, tiny_dataset.train, 8, device="cpu",
                                augment=make_recipe("quick").augment, shuffle=True, seed=3,
                                strong_view=strong)  # fmt: skip
        return next(loader.batches(1, 2))

    a, b, plain = first(True), first(True), first(False)
    assert torch.equal(a.strong, b.strong) and not torch.equal(a.strong, a.x)
    assert torch.equal(a.x, plain.x)  # the weak view is the batch it always was
    assert plain.strong is None and a.index.shape == (8,)


def test_pipeline_takes_every_method_from_its_kd_table(tiny_image_folder):
    from distill.pipeline.config import load_config

    data = {"data": {"source": str(tiny_image_folder)}}
    for method in KD_METHOD_HELP:
        settings = load_config("quick", None, data | {"kd": {"method": method, "alpha": 0.5}})
        assert (settings.kd.method, settings.kd.alpha) == (method, 0.5)


def test_weights_published_for_cifar100_are_flagged_on_other_class_counts():
    from distill.settings import kd_notes

    assert "CIFAR-100" in kd_notes(KDSettings("crd"), 10)[0]
    assert kd_notes(KDSettings("crd"), 100) == []
    assert kd_notes(KDSettings("crd", alpha=0.5), 10) == []  # the user chose it
    assert kd_notes(KDSettings("dkd"), 10) == []  # scaled instead (resolve_kd)
