"""Structured pruning to a parameter budget (SPEC 5): the mechanics, on torch-pruning.

A `BasePruner` over the model's dependency graph ranks every channel group (a residual stream
with all its convs, BNs and shortcuts; a block's inner width; an SE hidden width) by group
importance, globally, keeps multiples of `round_to` channels, and never touches the classifier's
outputs. What torch-pruning does not do is aim at a parameter count: it takes a channel ratio.
`prune_step` searches the ratio that meets a parameter target over pruned copies (parameters only
fall as the ratio rises), so a step lands under its target, within half a percent where the
round_to grid allows.

`prune_to_budget` takes `steps` such steps on a geometric schedule of targets from the model's
size down to the budget, calls `after_step` (fine-tuning) between them, checks the budget after
every step and stops as soon as it holds; while it does not, it keeps stepping at the budget.
`rebuild` proves a pruned model is fully described by its channel plan. The command around them
(`distill prune`: data, teachers, KD fine-tuning, recovery, checkpoint) is run.py beside it.
"""

from __future__ import annotations

import copy
import math
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp

from distill import distributed
from distill.budget import count_macs, count_params
from distill.device import exact_float32
from distill.errors import UserError
from distill.losses import hard_labels
from distill.registry import build_model
from distill.settings import IMPORTANCE
from students.resnet import CifarResNet

IMPORTANCES = typing.get_args(IMPORTANCE)
TARGET_TOLERANCE = 0.005  # a step may land this fraction under its parameter target
TAYLOR_BATCHES = 8  # training batches whose summed gradients score channels for Taylor importance


@dataclass(frozen=True)
class PruneStep:
    """One pruning step: the parameter target it aimed at and where it landed."""

    step: int
    target: int
    ratio: float  # channel pruning ratio (of this step's starting channels) that met the target
    params: int
    macs: int
    val_accuracy: float | None = None  # right after this step, before any fine-tuning
    val_accuracy_finetuned: float | None = None  # after the fine-tuning that followed it


class BudgetPruner(tp.pruner.BasePruner):
    """A global `BasePruner` that can tell what any channel ratio would leave, then prune at one.

    One dependency graph serves a whole search: `groups_at(ratio)` runs BasePruner's ranking in
    interactive mode (the groups and channel indices it would prune, nothing pruned yet), and
    `params_at(ratio)` counts what those groups would leave. The ratio is read from a list the
    scheduler hands out and this class rewrites between calls; `reset()` rewinds to step 0.
    Importance is computed once per group: the weights do not change until `prune_at`.

    Rounding differs from BasePruner's in one way: BasePruner rounds a group's remaining width
    down to a multiple of round_to, which is 0 once fewer than round_to channels would remain (a
    deleted layer); here a group keeps at least round_to channels, or its current width where
    that is already narrower (an SE hidden layer of 4 is left alone rather than removed).
    """

    def __init__(
        self,
        model: CifarResNet,
        example_inputs: torch.Tensor,
        importance: tp.importance.Importance,
        round_to: int,
    ) -> None:
        self._ratios = [0.0, 0.0]  # step k prunes at self._ratios[k]; only step 1 is used
        self._scores: dict[Any, torch.Tensor] = {}

        def schedule(ratio: float, steps: int) -> list[float]:
            # Called for channels (pruning_ratio=1 below) and for attention heads (ratio 0).
            return self._ratios if ratio > 0 else [0.0] * (steps + 1)

        model.eval()  # tracing runs a forward pass: train mode would move BN running statistics
        super().__init__(
            model,
            example_inputs,
            importance,
            global_pruning=True,
            pruning_ratio=1.0,
            iterative_steps=1,
            iterative_pruning_ratio_scheduler=schedule,
            round_to=round_to,
            ignored_layers=[model.fc],  # the classifier keeps every class
        )

    def estimate_importance(self, group) -> torch.Tensor:
        # Every probe ranks the same unpruned weights: score each group once, by its root layer.
        key = (group[0].dep.target.module, group[0].dep.handler)
        if key not in self._scores:
            self._scores[key] = super().estimate_importance(group)
        return self._scores[key]

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        keep = current_channels - n_pruned
        keep -= keep % round_to
        keep = max(keep, min(round_to, current_channels))
        return current_channels - keep

    def groups_at(self, ratio: float) -> list:
        """The groups, with channel indices, that one step at `ratio` prunes (none pruned yet)."""
        self._ratios[1] = ratio
        self.reset()
        return list(self.step(interactive=True))

    def params_at(self, ratio: float) -> int:
        """Trainable parameters left after pruning at `ratio`, counted without pruning."""
        cut_out: dict[Any, set[int]] = defaultdict(set)
        cut_in: dict[Any, set[int]] = defaultdict(set)
        for group in self.groups_at(ratio):
            for dep, idxs in group:
                out = self.DG.is_out_channel_pruning_fn(dep.handler)
                (cut_out if out else cut_in)[dep.target.module].update(idxs)
        total = 0
        for module in self.model.modules():
            for p in module.parameters(recurse=False):
                if p.requires_grad:
                    shape = list(p.shape)  # [out, in, k, k] for convs (no grouped convs here)
                    shape[0] -= len(cut_out.get(module, ()))
                    if p.ndim > 1:
                        shape[1] -= len(cut_in.get(module, ()))
                    total += math.prod(shape)
        return total

    def prune_at(self, ratio: float) -> None:
        for group in self.groups_at(ratio):
            group.prune()


def make_importance(name: str) -> tp.importance.Importance:
    """Group importance: L2 magnitude of every weight in the group, or first-order Taylor
    |w * dL/dw| (needs gradients); both normalised by the group's mean so groups compare."""
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UserError(f"unknown importance {name!r}; choose one of: {', '.join(IMPORTANCES)}")


def min_params(model: CifarResNet, example_inputs: torch.Tensor, round_to: int) -> int:
    """Parameters left when every channel group is cut to its floor: the lowest reachable budget."""
    was_training = model.training
    # At ratio 1 every channel ranks below the threshold, so every group falls to its floor,
    # whatever the importance: magnitude needs no gradients.
    floor = BudgetPruner(model, example_inputs, make_importance("magnitude"), round_to)
    model.train(was_training)
    return floor.params_at(1.0)


def check_reachable(
    model: CifarResNet, budget: int, example_inputs: torch.Tensor, round_to: int
) -> None:
    """Raise a UserError when no pruning of `model` fits in `budget` parameters."""
    if budget <= 0:
        raise UserError(f"budget {budget} is not positive; pass e.g. --budget 2.5M")
    floor = min_params(model, example_inputs, round_to)
    if floor > budget:
        raise UserError(
            f"a budget of {budget:,} parameters is unreachable: with every channel group cut "
            f"to round_to={round_to} channels this model keeps {floor:,}; pass --budget {floor} "
            "or more"
        )


def prune_step(
    model: CifarResNet,
    target: int,
    *,
    importance: tp.importance.Importance,
    example_inputs: torch.Tensor,
    round_to: int,
    tolerance: float = TARGET_TOLERANCE,
) -> tuple[CifarResNet, float]:
    """A pruned copy of `model` with at most `target` parameters and the channel ratio it took.

    The ratio is searched by regula falsi on sqrt(params), which falls about linearly with it (a
    conv's size is the product of its in and out widths), with a bisection whenever an
    interpolation did not halve the bracket; the search stops once a ratio lands within
    `tolerance` under the target or the bracket is narrower than one channel in ten thousand.
    Probes only count (`params_at`); the copy is pruned once, at the ratio found.
    """
    pruned = copy.deepcopy(model)
    for c, p in zip(pruned.parameters(), model.parameters(), strict=True):
        c.grad = p.grad  # deepcopy drops gradients; Taylor importance reads them (never writes)
    pruner = BudgetPruner(pruned, example_inputs, importance, round_to)
    lo, p_lo = 0.0, count_params(model)
    hi, p_hi = 1.0, pruner.params_at(1.0)
    if p_hi > target:
        raise UserError(
            f"cannot prune below {p_hi:,} parameters to reach {target:,}; raise --budget"
        )
    bisect = False
    while p_hi < target * (1 - tolerance) and hi - lo > 1e-4:
        width = hi - lo
        if bisect:
            r = lo + width / 2
        else:
            a, b, t = math.sqrt(p_lo), math.sqrt(p_hi), math.sqrt(target)
            r = min(max(lo + width * (a - t) / (a - b), lo + width / 1000), hi - width / 1000)
        p = pruner.params_at(r)
        if p <= target:
            hi, p_hi = r, p
        else:
            lo, p_lo = r, p
        bisect = not bisect and hi - lo > width / 2
    pruner.prune_at(hi)
    pruned.zero_grad(set_to_none=True)
    if count_params(pruned) != p_hi:
        raise RuntimeError(f"pruning left {count_params(pruned):,} parameters, not {p_hi:,}")
    return pruned, hi


def scheduled_target(start: int, budget: int, step: int, steps: int) -> int:
    """Geometric schedule: each of `steps` steps removes the same fraction; then the budget."""
    if step >= steps:
        return budget
    return round(start * (budget / start) ** (step / steps))


def accumulate_gradients(
    model: CifarResNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Sum the cross-entropy gradients of `batches` into `.grad` (for Taylor importance).

    Eval mode: the BN running statistics stay as they are and the gradients are those of the
    network that will be pruned.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x).float(), hard_labels(y)).backward()
    if distributed.active():
        # Every rank must rank channels on the very same numbers, or the ranks would prune
        # different networks: the all-reduced sum is identical on every rank.
        for p in model.parameters():
            if p.grad is not None:
                distributed.all_reduce_sum(p.grad)


def prune_to_budget(
    model: CifarResNet,
    budget: int,
    *,
    example_inputs: torch.Tensor,
    steps: int,
    importance: IMPORTANCE,
    round_to: int,
    gradient_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    after_step: Callable[[CifarResNet, PruneStep], float | None] | None = None,
    evaluate_step: Callable[[CifarResNet], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[CifarResNet, list[PruneStep]]:
    """Prune `model` until it has at most `budget` trainable parameters; return it and its steps.

    `model` itself is left as it was: every step works on a pruned copy. `gradient_batches(step)`
    yields the (images, targets) whose gradients Taylor importance reads; `after_step(model,
    step)` runs between steps (not after the last), e.g. fine-tuning, and may return the val
    accuracy it reached; `evaluate_step(model)`
    returns a val accuracy recorded right after each step.
    """
    imp = make_importance(importance)
    if importance == "taylor" and gradient_batches is None:
        raise ValueError("Taylor importance needs gradient_batches")
    was_training = model.training
    input_size = tuple(example_inputs.shape[1:])
    start = count_params(model)
    history: list[PruneStep] = []
    current = model
    # Each step lands under its target and the last scheduled target is the budget, so this
    # normally ends after `steps` steps or earlier; it goes on at the budget if it ever does not.
    scheduled = 0
    while count_params(current) > budget:
        scheduled += 1
        target = scheduled_target(start, budget, scheduled, steps)
        if count_params(current) <= target:
            continue  # an earlier step already landed under this one's target
        k = len(history) + 1
        if gradient_batches is not None and importance == "taylor":
            accumulate_gradients(current, gradient_batches(k))
        pruned, ratio = prune_step(
            current, target, importance=imp, example_inputs=example_inputs, round_to=round_to
        )
        current.zero_grad(set_to_none=True)
        current = pruned
        step = PruneStep(
            step=k,
            target=target,
            ratio=ratio,
            params=count_params(current),
            macs=count_macs(current, input_size),
            val_accuracy=evaluate_step(current) if evaluate_step else None,
        )
        history.append(step)
        if log is not None:
            acc = f", val top-1 {step.val_accuracy:.2%}" if step.val_accuracy is not None else ""
            log(
                f"prune step {k}: {step.params:,} params (target {target:,}), "
                f"{step.macs / 1e6:.1f}M MACs, {ratio:.1%} of channels ranked out{acc}"
            )
        if after_step is not None and step.params > budget:
            history[-1] = replace(step, val_accuracy_finetuned=after_step(current, step))
    current.train(was_training)
    return current, history


def rebuild(model: CifarResNet, example_inputs: torch.Tensor) -> CifarResNet:
    """A fresh `CifarResNet` from `model`'s channel plan with its weights: proof that the plan and
    state dict alone describe it (what a checkpoint stores)."""
    fresh = build_model(model.channel_plan()).to(example_inputs.device)
    fresh.load_state_dict(model.state_dict())
    # The pruned model's untouched convs keep the memory format training gave them; a GPU runs
    # other kernels for another format, so compare like with like.
    if model.stem[0].weight.is_contiguous(memory_format=torch.channels_last):
        fresh = fresh.to(memory_format=torch.channels_last)
    model.eval()
    fresh.eval()
    # Summation order still differs between kernels: float32 noise, larger on a GPU.
    rtol, atol = (1e-3, 1e-4) if example_inputs.device.type == "cuda" else (1e-4, 1e-5)
    with torch.inference_mode(), exact_float32():
        if not torch.allclose(model(example_inputs), fresh(example_inputs), rtol=rtol, atol=atol):
            raise RuntimeError(
                "the rebuilt channel plan computes something else than the pruned model"
            )
    return fresh
