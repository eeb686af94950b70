import pytest
import torch
from torch import nn

from distill.budget import check_budget, count_macs, count_params, parse_budget, stage_costs
from distill.errors import UserError
from distill.registry import create_model


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5M", 5_000_000),
        ("2.5m", 2_500_000),
        ("800k", 800_000),
        ("4990000", 4_990_000),
        (" 1.25M ", 1_250_000),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "-5M", "0", "5X", "M"])
def test_parse_budget_rejects_nonsense(bad):
    with pytest.raises(UserError, match="budget"):
        parse_budget(bad)


def test_macs_of_a_known_network_by_hand():
    # conv 3->4, 3x3 on 8x8 output: 8*8*4 outputs * 27 MACs; linear 4->2: 8 MACs.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    assert count_macs(net, (3, 8, 8)) == 8 * 8 * 4 * 27 + 8


def test_resnet18_macs_agree_with_torch_pruning_conv_count():
    import torch_pruning as tp

    model = create_model("resnet18")
    ours = count_macs(model)
    theirs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, 32, 32))
    assert ours == pytest.approx(555_422_720)
    # torch-pruning also counts BN and pooling; conv + linear are within 0.5% of its total.
    assert ours <= theirs <= ours * 1.005


def test_stage_costs_add_up():
    model = create_model("resnet34")
    costs = stage_costs(model)
    assert [c.name for c in costs] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert sum(c.params for c in costs) == count_params(model)
    assert sum(c.macs for c in costs) == count_macs(model)


def test_check_budget():
    model = create_model("resnet18-quarter")
    assert check_budget(model, 5_000_000, "x") == count_params(model)
    with pytest.raises(UserError, match="over the budget"):
        check_budget(model, 100_000, "resnet18-quarter")
