"""Schedules by their shape, Lookahead and EMA by hand-checkable updates."""

import dataclasses

import pytest
import torch

from distill.optim import EMA, Lookahead, make_optimizer, make_scheduler
from distill.recipes import RECIPES, make_recipe


def lrs(recipe, steps_per_epoch):
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, recipe, recipe.lr)
    sched, per_step = make_scheduler(opt, recipe, steps_per_epoch)
    out = []
    for _ in range(recipe.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, per_step


@pytest.mark.parametrize("steps", [1, 3, 4, 100])
def test_onecycle_rises_then_falls_for_any_length(steps):
    recipe = dataclasses.replace(RECIPES["quick"], epochs=1)
    out, per_step = lrs(recipe, steps)
    assert per_step and len(out) == steps
    assert all(0 < lr <= recipe.lr for lr in out)
    if steps >= 4:
        assert max(out) == pytest.approx(recipe.lr)
        assert out[0] == pytest.approx(recipe.lr / 25)
    if steps >= 100:
        assert out[-1] < 0.01 * recipe.lr


def test_warmup_cosine_and_step_shapes():
    std = dataclasses.replace(RECIPES["standard"], epochs=30, warmup_epochs=2)
    out, _ = lrs(std, 10)
    assert out[19] == pytest.approx(std.lr)  # end of warm-up
    assert out[0] == pytest.approx(std.lr / 20)
    assert all(a >= b for a, b in zip(out[20:], out[21:], strict=False))  # cosine only falls
    step = dataclasses.replace(RECIPES["adam-step-mixup"], epochs=12)
    out, _ = lrs(step, 2)
    assert out[9] == pytest.approx(step.lr) and out[10] == pytest.approx(step.lr * 0.95)
    assert out[20] == pytest.approx(step.lr * 0.95**2)


def test_plateau_steps_per_epoch_on_val_loss():
    recipe = RECIPES["sgd-plateau"]
    opt = make_optimizer(torch.nn.Linear(2, 2), recipe, recipe.lr)
    sched, per_step = make_scheduler(opt, recipe, 10)
    assert not per_step
    for _ in range(recipe.plateau_patience + 2):  # a val loss that never improves
        sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(recipe.lr * recipe.plateau_factor)


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    groups = make_optimizer(model, RECIPES["sgd-cosine"], 0.1).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0


def test_the_lr_follows_the_global_batch():
    # The recipe's lr is tuned at its own batch; another global batch scales it (linearly for
    # SGD, by the square root for Adam), whether from --batch-size or from more processes.
    sgd = make_recipe("sgd-cosine", batch_size=256)
    assert sgd.lr_at(256) == pytest.approx(0.2) and sgd.lr_at(512) == pytest.approx(0.4)
    assert make_recipe("adam-onecycle", batch_size=1024).lr_at(1024) == pytest.approx(0.02)
    # An explicit lr is the lr of this run's global batch: never scaled.
    explicit = make_recipe("sgd-cosine", batch_size=256, lr=0.05)
    assert explicit.lr_at(256) == 0.05


def test_a_warmup_longer_than_the_run_is_capped():
    # A 3-epoch warm-up inside a 2-epoch run would leave the whole run below the target lr.
    short = dataclasses.replace(RECIPES["standard"], epochs=2, warmup_epochs=3)
    out, _ = lrs(short, 50)
    assert max(out) == pytest.approx(short.lr)
    assert out.index(max(out)) <= 0.1 * len(out)


def test_lookahead_moves_slow_weights_alpha_of_the_way_every_k_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    la = Lookahead([p], k=2, alpha=0.5)
    with torch.no_grad():
        p += 4
    la.after_step()
    assert p.item() == 4  # not a sync step
    with torch.no_grad():
        p += 4
    la.after_step()
    assert p.item() == pytest.approx(4.0)  # slow 0 -> 0 + 0.5 * (8 - 0) = 4, fast reset to it


def test_ema_ramps_then_tracks_with_its_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.5, 2/11) = 2/11
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11)
