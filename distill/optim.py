"""Optimizers, learning-rate schedules, Lookahead and EMA of weights, built from a Recipe."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from distill.settings import Recipe

# A warm-up longer than this share of the run is capped to it: a 3-epoch warm-up inside a 2-epoch
# run would spend the whole run below the target lr and learn next to nothing.
MAX_WARMUP_FRACTION = 0.1


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer at peak learning rate `lr` (`recipe.lr_at(global batch)`)."""
    # No weight decay on BN affine parameters and biases: decaying them only hurts accuracy.
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau, bool]:
    """The recipe's schedule and whether it steps per batch (True) or per epoch on val loss."""
    total = max(recipe.epochs * steps_per_epoch, 1)
    if recipe.schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=recipe.plateau_factor,
            patience=recipe.plateau_patience,
            min_lr=recipe.min_lr,
        )
        return sched, False
    warmup = min(recipe.warmup_epochs * steps_per_epoch, MAX_WARMUP_FRACTION * total)
    floor = recipe.min_lr / optimizer.param_groups[0]["lr"]

    def factor(step: int) -> float:
        if recipe.schedule == "onecycle":
            # Linear ramp from lr/25 over the first 25% of steps, then cosine to ~0 (the lr
            # shape of OneCycleLR without its momentum cycling; valid for any step count).
            rise = max(int(0.25 * total), 1)
            if step < rise:
                return 1 / 25 + (1 - 1 / 25) * step / rise
            t = (step - rise) / max(total - rise, 1)
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if step < warmup:
            return (step + 1) / warmup
        if recipe.schedule == "cosine":
            t = (step - warmup) / max(total - warmup, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if recipe.schedule == "step":
            return recipe.step_gamma ** ((step // steps_per_epoch) // recipe.step_every)
        if recipe.schedule == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {recipe.schedule!r}")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


class Lookahead:
    """Lookahead (Zhang et al. 2019) as a companion to a plain optimizer.

    Every k steps the slow weights move alpha of the way to the fast weights and the fast weights
    restart from there. Kept outside the optimizer so LR schedulers still see a stock optimizer.
    """

    def __init__(self, params: list[torch.Tensor], k: int, alpha: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.k, self.alpha = k, alpha
        self.steps = 0
        self.slow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def after_step(self) -> None:
        self.steps += 1
        if self.steps % self.k:
            return
        for slow, fast in zip(self.slow, self.params, strict=True):
            slow.lerp_(fast, self.alpha)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "slow": [s.cpu() for s in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        for s, saved in zip(self.slow, state["slow"], strict=True):
            s.copy_(saved)


class EMA:
    """Exponential moving average of weights and BN buffers, evaluated instead of the raw model.

    The decay ramps up as (1 + n) / (10 + n) so early averages are not dominated by the random
    initialisation on short runs. One foreach kernel updates every float tensor (a loop of
    per-tensor lerps would launch ~120 kernels per step for resnet18-5m); integer buffers (BN's
    batch counters) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._pairs = None  # (ema floats, model floats, ema ints, model ints), built on first use

    def _tensors(self, model: nn.Module) -> tuple[list, list, list, list]:
        if self._pairs is None:
            ours = [*self.module.parameters(), *self.module.buffers()]
            theirs = [*model.parameters(), *model.buffers()]
            floats = [(a, b) for a, b in zip(ours, theirs, strict=True) if a.is_floating_point()]
            ints = [(a, b) for a, b in zip(ours, theirs, strict=True) if not a.is_floating_point()]
            self._pairs = (
                [a for a, _ in floats],
                [b for _, b in floats],
                [a for a, _ in ints],
                [b for _, b in ints],
            )
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_f, model_f, ema_i, model_i = self._tensors(model)
        torch._foreach_lerp_(ema_f, model_f, 1 - d)
        if ema_i:
            torch._foreach_copy_(ema_i, model_i)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.module.load_state_dict(state["module"])
