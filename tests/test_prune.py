"""Structured pruning to a budget: every block type, plan round-trips, checkpoints and the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from typer.testing import CliRunner

from distill.api import train_teacher
from distill.budget import count_params
from distill.checkpoint import model_from_checkpoint
from distill.cli import app
from distill.data import Dataset, Split
from distill.pruning import min_params, prune_checkpoint, prune_to_budget, scheduled_target
from distill.recipes import make_recipe
from distill.registry import build_model, create_model
from distill.settings import PruneSettings, RunSettings
from distill.teacher_checks import load_teachers, read_teachers
from students.resnet import ResNetConfig, plan

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
# 16x16 is the smallest input every family takes (five stages: four halvings) and costs a
# quarter of 32x32 in tracing and forward checks; the graph torch-pruning traces is the same.
X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
EXAMPLE = X[:1]
# One registered architecture per block type: basic, bottleneck, pre-activation, SE with
# dropout, and MaxPool downsampling.
FAMILIES = ["resnet18-quarter", "resnet50-5m", "preact-resnet42", "seresnet24", "resnet22-maxpool"]
# Batch 8 over 64 images: OneCycle needs more than four steps an epoch.
BY_MAGNITUDE = {"importance": "magnitude", "round_to": 8}  # PruneSettings' defaults, spelled out
TINY_RECIPE = replace(make_recipe("quick", epochs=1, batch_size=8), channels_last=False)


def assert_plan_round_trips(pruned: torch.nn.Module) -> None:
    """The plain-values plan plus the state dict rebuild a model that computes the same."""
    config = ResNetConfig.from_dict(pruned.channel_plan().to_dict())
    fresh = build_model(config).eval()
    fresh.load_state_dict(pruned.state_dict())
    pruned.eval()
    with torch.inference_mode():
        assert torch.equal(fresh(X), pruned(X))


@pytest.mark.parametrize("name", FAMILIES)
def test_every_block_type_prunes_and_its_plan_rebuilds_exactly(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    before = count_params(model)
    budget = int(before * 0.7)
    pruned, steps = prune_to_budget(model, budget, example_inputs=EXAMPLE, steps=1, **BY_MAGNITUDE)
    assert count_params(pruned) <= budget < count_params(pruned) * 1.15  # under, not far under
    assert count_params(model) == before  # the input model is left as it was
    assert pruned.fc.out_features == 10 and len(steps) == 1
    widths = [pruned.channel_plan().stem_width, *pruned.channel_plan().widths]
    assert all(w % 8 == 0 for w in widths)
    assert_plan_round_trips(pruned)


def test_projection_shortcut_survives_equal_widths():
    # Stem 16 -> stage width 32 needs a stride-1 projection; at the floor both are 8 wide, and
    # the plan must still rebuild the projection rather than an identity.
    torch.manual_seed(0)
    model = build_model(plan("bottleneck", (2, 1), (8, 16), stem_width=16)).eval()
    floor = min_params(model, EXAMPLE, round_to=8)
    pruned, _ = prune_to_budget(model, floor, example_inputs=EXAMPLE, steps=1, **BY_MAGNITUDE)
    config = pruned.channel_plan()
    assert config.stem_width == config.widths[0] == 8
    assert config.projections == ((0, 0),)
    assert_plan_round_trips(pruned)


def test_teacher_prunes_straight_to_a_student_budget():
    torch.manual_seed(0)
    teacher = create_model("resnet34")
    pruned, _ = prune_to_budget(teacher, 5_000_000, example_inputs=EXAMPLE, steps=1, **BY_MAGNITUDE)
    assert 4_500_000 < count_params(pruned) <= 5_000_000
    assert_plan_round_trips(pruned)


def test_steps_follow_the_schedule_and_fine_tune_between_them():
    torch.manual_seed(0)
    model = create_model("resnet18-quarter")
    budget = 250_000
    calls = []
    pruned, steps = prune_to_budget(
        model,
        budget,
        example_inputs=EXAMPLE,
        steps=3,
        importance="taylor",
        round_to=8,
        gradient_batches=lambda k: [(X, torch.tensor([0, 1]))],
        after_step=lambda m, s: calls.append(s.step),
    )
    assert [s.step for s in steps] == [1, 2, 3] and calls == [1, 2]  # none after the last
    assert all(s.params <= s.target for s in steps)
    assert [s.target for s in steps] == [scheduled_target(701_466, budget, k, 3) for k in (1, 2, 3)]
    assert steps[-1].target == budget and count_params(pruned) <= budget
    assert all(p.grad is None for p in pruned.parameters())


@pytest.fixture(scope="module")
def small_data(tiny_dataset) -> Dataset:
    """64 of the tiny folder's training images: every epoch here costs little."""
    keep = torch.arange(0, len(tiny_dataset.train), 2)[:64]  # every class: the folder is sorted
    train = Split(tiny_dataset.train.images[keep], tiny_dataset.train.labels[keep])
    return replace(tiny_dataset, train=train)


@pytest.fixture(scope="module")
def source(tmp_path_factory, small_data) -> Path:
    """A resnet18-quarter trained for an epoch on the tiny image folder."""
    out = tmp_path_factory.mktemp("prune") / "source.pt"
    run = RunSettings(out=out, device="cpu", quiet=True)
    train_teacher("resnet18-quarter", small_data, recipe=TINY_RECIPE, run=run, kind="student")
    return out


def test_prune_checkpoint_lands_under_budget_and_round_trips(source, small_data, tmp_path):
    out = tmp_path / "p.pt"
    budget = 300_000
    ckpt = prune_checkpoint(
        source,
        PruneSettings("300k", steps=2, epochs_per_step=1),
        teacher_paths=[source],
        data=small_data,
        recipe=TINY_RECIPE,
        run=RunSettings(out, "cpu", quiet=True),
    )
    saved = torch.load(out, weights_only=True)  # plain values and tensors only
    assert saved["kind"] == "pruned" and saved["arch"] == "resnet18-quarter-pruned"
    model = model_from_checkpoint(saved)
    assert count_params(model) <= budget and model.fc.out_features == 4
    with torch.inference_mode():
        assert torch.equal(model(X), model_from_checkpoint(ckpt)(X))
    record = saved["pruning"]
    assert record["budget"] == budget and record["round_to"] == 8
    assert record["importance"] == "magnitude" and 1 <= record["steps"] <= 2
    assert record["params_before"] == count_params(create_model("resnet18-quarter", 4))
    assert record["params_after"] == count_params(model)
    assert record["macs_after"] < record["macs_before"]
    for key in ("val_accuracy_before", "val_accuracy_pruned", "val_accuracy_after"):
        assert 0.0 <= record[key] <= 1.0
    assert record["source"]["arch"] == "resnet18-quarter" and len(record["source"]["sha256"]) == 64
    # Other commands read it as any checkpoint: as a teacher, and in `distill budget`.
    teachers, _ = load_teachers([out], small_data, "cpu", checkpoints=read_teachers([out]))
    assert teachers[0].channel_plan() == model.channel_plan()
    result = runner.invoke(app, ["budget", str(out), "--budget", "300k"])
    assert result.exit_code == 0, result.output


def test_cli_prunes_with_taylor_distilling_from_the_model_itself(source, tmp_path):
    out = tmp_path / "p.pt"
    args = ["prune", str(source), "--budget", "350k", "--out", str(out), "--recipe", "quick"]
    args += ["--epochs", "1", "--batch-size", "8", "--train-size", "64", "--steps", "1"]
    args += ["--importance", "taylor"]
    args += ["--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    result = runner.invoke(app, args)  # --data: the source's own image folder
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["pruning"]["importance"] == "taylor"
    assert saved["teachers"][0]["sha256"] == saved["pruning"]["source"]["sha256"]
    assert count_params(model_from_checkpoint(saved)) <= 350_000


@pytest.mark.parametrize(
    "budget, message",
    [("1k", "unreachable"), ("0", "not a positive"), ("10M", "already has"), ("lots", "budget")],
)
def test_cli_refuses_a_bad_budget_before_any_work(source, tmp_path, budget, message):
    out = tmp_path / "p.pt"
    result = runner.invoke(app, ["prune", str(source), "--budget", budget, "--out", str(out)])
    one_line_error(result, message)
    assert not out.exists() and not (tmp_path / "p.last.pt").exists()
