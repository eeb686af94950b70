"""`FAMILY@BUDGET` names: the fit fills the budget, keeps the family's shape, and every path that
takes an architecture name takes a fitted one. Plans are priced on the meta device (no memory, no
compute), except where weights must really round-trip."""

import time

import pytest
import torch

from distill.budget import count_macs, count_params
from distill.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    new_checkpoint,
    save_checkpoint,
)
from distill.errors import UserError
from distill.models_info import describe_fit, load_any_model
from distill.registry import create_model, get_entry, list_models, model_config
from distill.sizing import fit_plan, plan_cost
from students.resnet import se_hidden

FAMILIES = sorted(list_models())
BUDGETS = {"0.5M": 500_000, "1M": 1_000_000, "2.5M": 2_500_000, "5M": 5_000_000}


def meta_model(name: str, num_classes: int = 10):
    with torch.device("meta"):
        return create_model(name, num_classes)


def all_widths(config) -> list[int]:
    """Every channel width of a plan except SE hidden widths, which follow plan()'s 1/16 rule."""
    widths = [config.stem_width, *config.widths]
    for stage in config.inner:
        for inner in stage:
            widths += inner[:1] if config.block == "se" else inner
    return widths


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_cost_equals_counting_the_built_modules(family):
    for name in (family, f"{family}@1M"):
        model = meta_model(name)
        assert plan_cost(model.config) == (count_params(model), count_macs(model)), name


def test_plan_cost_at_another_input_size():
    model = create_model("resnet18-quarter@300k", num_classes=100)
    assert plan_cost(model.config, (3, 40, 24))[1] == count_macs(model, (3, 40, 24))


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fit_fills_the_budget_and_keeps_the_family_shape(family, budget):
    limit = BUDGETS[budget]
    fitted, base = model_config(f"{family}@{budget}"), model_config(family)
    params = count_params(meta_model(f"{family}@{budget}"))
    assert 0.97 * limit <= params <= limit
    assert all(w % 8 == 0 and w >= 8 for w in all_widths(fitted)), fitted
    if fitted.block == "se":
        stages = zip(fitted.widths, fitted.inner, strict=True)
        assert all(b[1] == se_hidden(w) for w, stage in stages for b in stage)
    for field in ("block", "blocks", "downsample", "dropout", "num_classes", "projections"):
        assert getattr(fitted, field) == getattr(base, field), field
    # A stem as wide as stage 1 stays so (identity shortcut); a narrower one stays narrower.
    assert (fitted.stem_width == fitted.widths[0]) == (base.stem_width == base.widths[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_larger_budget_never_gives_a_smaller_plan(family):
    ladder = [BUDGETS["0.5M"] + step * 125_000 for step in range(37)]  # 0.5M to 5M
    params = [plan_cost(model_config(f"{family}@{b}"))[0] for b in ladder]
    assert params == sorted(params)


def test_the_fit_is_pinned():
    # Integer arithmetic only: this exact plan on every machine.
    config = model_config("resnet18@5M")
    assert (config.stem_width, config.widths) == (40, (40, 88, 168, 344))
    assert plan_cost(config) == (4_995_698, 241_230_192)


def test_fitting_is_fast():
    fit_plan.cache_clear()
    start = time.perf_counter()
    model_config("resnet34@5M")
    assert time.perf_counter() - start < 0.5


def test_mac_ceiling_caps_compute():
    capped = meta_model("resnet34@5M,200MMAC")
    assert count_macs(capped) <= 200_000_000 < count_macs(meta_model("resnet34@5M"))
    assert count_macs(capped) >= 0.97 * 200_000_000
    assert count_params(capped) <= 5_000_000
    # The "MAC" suffix is optional and any case.
    assert model_config("resnet34@5M,200m") == model_config("resnet34@5M,200Mmacs")


@pytest.mark.parametrize("family", FAMILIES)
def test_fitted_model_rebuilds_from_its_checkpoint(family, tmp_path):
    name = f"{family}@0.5M"
    model = create_model(name, num_classes=3).eval()
    ckpt = new_checkpoint(
        kind="student",
        arch=name,
        model=model,
        classes=["a", "b", "c"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_size=[3, 32, 32],
        recipe={},
        data={},
    )
    save_checkpoint(ckpt, tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded["arch"] == name
    assert loaded["model_config"] == model_config(name, 3).to_dict()
    rebuilt = model_from_checkpoint(loaded)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model(x), rebuilt(x))


def test_registry_paths_take_fitted_names():
    entry = get_entry("preact-resnet42@2.5M")
    assert entry.name == "preact-resnet42@2.5M" and entry.role == "student"
    assert "preact-resnet42@2.5M" not in list_models()
    model, label, input_size = load_any_model("seresnet24@1M")
    assert label == "seresnet24@1M" and input_size == (3, 32, 32)
    assert count_params(model) == plan_cost(model.config)[0]


def test_describe_fit():
    row = describe_fit("resnet50-5m@3M,600MMAC")
    assert row["family"] == "resnet50-5m"
    assert (row["budget"], row["mac_ceiling"]) == (3_000_000, 600_000_000)
    model = meta_model("resnet50-5m@3M,600MMAC")
    assert (row["params"], row["macs"]) == (count_params(model), count_macs(model))
    assert row["budget_used"] == row["params"] / 3_000_000
    assert row["macs_used"] == row["macs"] / 600_000_000
    assert (row["family_params"], row["family_macs"]) == plan_cost(model_config("resnet50-5m"))
    assert row["plan"] == model.config.to_dict()
    assert describe_fit("resnet18@5M")["mac_ceiling"] is None


@pytest.mark.parametrize(
    "name,match",
    [
        ("resnet9@5M", "unknown family 'resnet9'.*resnet18-5m, "),
        ("@5M", "unknown family ''"),
        ("resnet18@5X", "budget '5X' is not a positive count; write FAMILY@BUDGET"),
        ("resnet18@", "budget '' is not"),
        ("resnet18@0", "budget '0' is not"),
        ("resnet18@5M,fastMAC", "MAC ceiling 'fastMAC' is not"),
        ("resnet18@5k", "smallest resnet18 plan .* 10,034 parameters; .* at least 10,034"),
        ("resnet18@5M,1M", "smallest resnet18 plan .* 3,376,208 MACs"),
        ("resnet18", "names no budget"),
    ],
)
def test_bad_names_are_one_line_user_errors(name, match):
    with pytest.raises(UserError, match=match) as e:
        describe_fit(name)
    assert "\n" not in str(e.value)
