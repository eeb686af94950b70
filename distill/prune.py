"""Structured pruning to a parameter budget (SPEC 5), distilling while the model recovers.

The mechanics are torch-pruning's: a `BasePruner` over the model's dependency graph ranks every
channel group (a residual stream with all its convs, BNs and shortcuts; a block's inner width; an
SE hidden width) by group importance, globally, keeps multiples of `round_to` channels, and never
touches the classifier's outputs. What torch-pruning does not do is aim at a parameter count: it
takes a channel ratio. `prune_step` searches the ratio that meets a parameter target over pruned
copies (parameters only fall as the ratio rises), so a step lands under its target, within half a
percent where the round_to grid allows.

`prune_to_budget` takes `steps` such steps on a geometric schedule of targets from the model's
size down to the budget, calls `after_step` (fine-tuning) between them, checks the budget after
every step and stops as soon as it holds; while it does not, it keeps stepping at the budget.
`prune_checkpoint` is `distill prune`: a checkpoint in; KD fine-tuning between steps and a final
recovery phase; a `kind="pruned"` checkpoint out, whose channel plan rebuilds the model from plain
values (`torch.load(weights_only=True)`, never a pickled module).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from rich.console import Console

from distill.budget import count_macs, count_params, parse_budget
from distill.checkpoint import (
    check_output,
    file_sha256,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from distill.data import BatchLoader, DataConfig, Dataset, load_data
from distill.errors import UserError
from distill.evaluation import check_classes
from distill.losses import DistillationObjective, KDConfig
from distill.recipes import Recipe
from distill.registry import build_model
from distill.student import load_teachers, read_teachers, resolve_split, teacher_record
from distill.train import (
    RunConfig,
    evaluate_split,
    fit,
    hard_labels,
    last_path,
    resolve_device,
    seed_everything,
)
from students.resnet import CifarResNet

ROUND_TO = 8  # channel widths stay multiples of 8: what GPU kernels and CPU SIMD tile best
IMPORTANCES = ("magnitude", "taylor")
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
        round_to: int = ROUND_TO,
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


def min_params(model: CifarResNet, example_inputs: torch.Tensor, round_to: int = ROUND_TO) -> int:
    """Parameters left when every channel group is cut to its floor: the lowest reachable budget."""
    was_training = model.training
    # At ratio 1 every channel ranks below the threshold, so every group falls to its floor,
    # whatever the importance: magnitude needs no gradients.
    floor = BudgetPruner(model, example_inputs, make_importance("magnitude"), round_to)
    model.train(was_training)
    return floor.params_at(1.0)


def check_reachable(
    model: CifarResNet, budget: int, example_inputs: torch.Tensor, round_to: int = ROUND_TO
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
    round_to: int = ROUND_TO,
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


def prune_to_budget(
    model: CifarResNet,
    budget: int,
    *,
    example_inputs: torch.Tensor,
    importance: str = "magnitude",
    steps: int = 1,
    round_to: int = ROUND_TO,
    gradient_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    after_step: Callable[[CifarResNet, PruneStep], None] | None = None,
    evaluate_step: Callable[[CifarResNet], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[CifarResNet, list[PruneStep]]:
    """Prune `model` until it has at most `budget` trainable parameters; return it and its steps.

    `model` itself is left as it was: every step works on a pruned copy. `gradient_batches(step)`
    yields the (images, targets) whose gradients Taylor importance reads; `after_step(model,
    step)` runs between steps (not after the last), e.g. fine-tuning; `evaluate_step(model)`
    returns a val accuracy recorded right after each step.
    """
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    imp = make_importance(importance)
    if importance == "taylor" and gradient_batches is None:
        raise ValueError("Taylor importance needs gradient_batches")
    check_reachable(model, budget, example_inputs, round_to)
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
            after_step(current, step)
    current.train(was_training)
    return current, history


def rebuild(model: CifarResNet, example_inputs: torch.Tensor) -> CifarResNet:
    """A fresh `CifarResNet` from `model`'s channel plan with its weights: proof that the plan and
    state dict alone describe it (what a checkpoint stores)."""
    fresh = build_model(model.channel_plan()).to(example_inputs.device)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    with torch.inference_mode():
        if not torch.allclose(model(example_inputs), fresh(example_inputs), rtol=1e-4, atol=1e-5):
            raise RuntimeError(
                "the rebuilt channel plan computes something else than the pruned model"
            )
    return fresh


def prune_data_config(
    model_path: Path,
    data: str | None = None,
    *,
    val_size: int | None = None,
    split_seed: int | None = None,
    train_size: int | None = None,
    data_root: Path = Path("~/.cache/distill").expanduser(),
    cache_dir: Path = Path("~/.cache/distill").expanduser(),
) -> DataConfig:
    """The data to prune on: by default the model's own source and validation split (another
    split would put images the model trained on in the validation set)."""
    ckpt = load_checkpoint(model_path)
    source = data or ckpt.get("data", {}).get("source")
    if not source:
        raise UserError(f"{model_path} does not record its data source; pass --data")
    val_size, split_seed = resolve_split([ckpt], val_size, split_seed)
    return DataConfig(
        source=source,
        data_root=data_root,
        cache_dir=cache_dir,
        val_size=val_size,
        train_size=train_size,
        seed=split_seed,
    )


def prune_checkpoint(
    model_path: Path,
    budget: int | str,
    *,
    teacher_paths: Sequence[Path] = (),
    data: DataConfig | Dataset | None = None,
    recipe: Recipe,
    run: RunConfig,
    importance: str = "magnitude",
    steps: int = 3,
    epochs_per_step: int = 1,
    kd: KDConfig | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Prune the model in `model_path` to `budget` parameters, distilling between steps and in a
    final recovery phase of `recipe.epochs`; return the pruned checkpoint (written to `run.out`).

    Teachers: `teacher_paths`, or the unpruned model itself when none is given. `run.out` must be
    set; `run.resume` continues an interrupted recovery phase (the pruning steps are quick and
    held in memory, so an interruption there saves nothing).
    """
    console = console or Console(stderr=True)
    model_path, teacher_paths = Path(model_path), [Path(p) for p in teacher_paths]
    kd = kd or KDConfig.create("hinton", epochs=recipe.epochs)
    limit = parse_budget(budget)
    make_importance(importance)  # an unknown name is a UserError listing the choices
    device = resolve_device(run.device)
    if steps < 1 or epochs_per_step < 0:
        raise UserError(
            f"--steps must be >= 1 and --epochs-per-step >= 0, got {steps}, {epochs_per_step}"
        )
    if run.out is None:
        raise ValueError("prune_checkpoint writes a checkpoint: set run.out")
    if not run.resume:
        check_output(run.out, run.force)

    # Everything checkable before the data is decoded: the files and the budget.
    src = load_checkpoint(model_path)
    source_model = model_from_checkpoint(src)
    example = torch.randn(1, *src["input_size"])
    params_before = count_params(source_model)
    if params_before <= limit:
        raise UserError(
            f"{model_path} already has {params_before:,} parameters, within the budget of "
            f"{limit:,}; nothing to prune: pass a lower --budget"
        )
    check_reachable(source_model, limit, example)
    teacher_ckpts = read_teachers(teacher_paths) if teacher_paths else []
    run = replace(
        run,
        kind="pruned",
        arch=src["arch"] if src["kind"] == "pruned" else f"{src['arch']}-pruned",
    )

    if isinstance(data, Dataset):
        dataset = data
    else:
        data = data or prune_data_config(model_path)
        resolve_split([src], data.val_size, data.seed)
        dataset = load_data(data)
    check_classes(src["classes"], dataset, str(model_path))
    if list(src["input_size"]) != list(dataset.input_size):
        raise UserError(
            f"{model_path} takes {src['input_size']} inputs but the data is "
            f"{list(dataset.input_size)}; prune on the data the model was trained on"
        )
    # The weights were learned under the source's normalisation: keep it for every phase.
    dataset = replace(dataset, mean=tuple(src["mean"]), std=tuple(src["std"]))
    seed_everything(run.seed)
    source_model = source_model.to(device)
    example = example.to(device)
    if teacher_paths:
        teachers, records = load_teachers(
            teacher_paths,
            dataset,
            device,
            channels_last=recipe.channels_last,
            checkpoints=teacher_ckpts,
        )
    else:
        # Self-distillation: the unpruned model teaches what it knew to its pruned self.
        memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
        teachers = [copy.deepcopy(source_model).to(memory_format=memory_format)]
        records = [teacher_record(model_path, src)]
    objective = DistillationObjective(tuple(teachers), kd, recipe.label_smoothing, recipe.amp)

    def val_accuracy(model: CifarResNet) -> float:
        return evaluate_split(model, dataset, dataset.val, device, recipe).accuracy

    if run.resume:
        model, record = _resume_state(run.out, model_path, records, kd)
    else:
        model, record = _prune_phase(
            source_model,
            limit,
            model_path=model_path,
            src=src,
            dataset=dataset,
            recipe=recipe,
            run=run,
            objective=objective,
            importance=importance,
            steps=steps,
            epochs_per_step=epochs_per_step,
            example=example,
            val_accuracy=val_accuracy,
            console=console,
        )
    del source_model
    ckpt = fit(
        model,
        dataset,
        recipe,
        run,
        objective=objective,
        meta={"teachers": records, "kd": kd.to_dict(), "pruning": record},
        console=console,
    )
    # The recovered accuracy is known only now: complete the record and rewrite the file.
    ckpt["pruning"] = record | {"val_accuracy_after": ckpt["metrics"]["val_accuracy"]}
    save_checkpoint(ckpt, run.out)
    return ckpt


def _prune_phase(
    source_model: CifarResNet,
    limit: int,
    *,
    model_path: Path,
    src: dict[str, Any],
    dataset: Dataset,
    recipe: Recipe,
    run: RunConfig,
    objective: DistillationObjective,
    importance: str,
    steps: int,
    epochs_per_step: int,
    example: torch.Tensor,
    val_accuracy: Callable[[CifarResNet], float],
    console: Console,
) -> tuple[CifarResNet, dict[str, Any]]:
    """Measure, prune step by step with KD fine-tuning in between, and rebuild from the plan."""
    input_size = tuple(dataset.input_size)
    acc_before = val_accuracy(source_model)
    console.print(
        f"source {model_path}: {src['arch']}, {count_params(source_model):,} params, "
        f"val top-1 {acc_before:.2%}"
    )

    def finetune(model: CifarResNet, step: PruneStep) -> None:
        # In memory (no file), and without the test-set pass `fit` ends with when there is one.
        fit(
            model,
            replace(dataset, test=None),
            replace(recipe, epochs=epochs_per_step),
            replace(run, out=None, resume=False, seed=run.seed + step.step),
            objective=objective,
            console=console,
        )

    def taylor_batches(step: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(
            dataset.train,
            recipe.batch_size,
            device=example.device,
            mean=dataset.mean,
            std=dataset.std,
            num_classes=dataset.num_classes,
            shuffle=True,
            seed=run.seed,
        )
        return itertools.islice(loader.epoch(step), TAYLOR_BATCHES)

    pruned, history = prune_to_budget(
        source_model,
        limit,
        example_inputs=example,
        importance=importance,
        steps=steps,
        gradient_batches=taylor_batches,
        after_step=finetune if epochs_per_step > 0 else None,
        evaluate_step=val_accuracy,
        log=console.print,
    )
    model = rebuild(pruned, example).cpu()
    record = {
        "source": {
            "path": str(model_path.resolve()),
            "sha256": file_sha256(model_path),
            "arch": src["arch"],
            "kind": src["kind"],
        },
        "budget": limit,
        "importance": importance,
        "round_to": ROUND_TO,
        "global_pruning": True,
        "steps_planned": steps,
        "steps": len(history),
        "epochs_per_step": epochs_per_step,
        "schedule": [asdict(s) for s in history],
        "params_before": count_params(source_model),
        "params_after": count_params(model),
        "macs_before": count_macs(source_model, input_size),
        "macs_after": count_macs(model, input_size),
        "val_accuracy_before": acc_before,
        "val_accuracy_pruned": history[-1].val_accuracy,
        "val_accuracy_after": None,  # filled in once the recovery phase has run
    }
    return model, record


def _resume_state(
    out: Path, model_path: Path, records: list[dict[str, Any]], kd: KDConfig
) -> tuple[CifarResNet, dict[str, Any]]:
    """The pruned model and record of an interrupted recovery phase (its weights and optimizer
    state are restored by `fit`)."""
    state_file = last_path(out)
    if not state_file.exists():
        raise UserError(f"nothing to resume: {state_file} does not exist; drop --resume")
    saved = load_checkpoint(state_file)
    record = saved.get("pruning") or {}
    same = (
        record.get("source", {}).get("sha256") == file_sha256(model_path)
        and [t.get("sha256") for t in saved.get("teachers", [])] == [r["sha256"] for r in records]
        and saved.get("kd") == kd.to_dict()
    )
    if not same:
        raise UserError(
            f"cannot resume: {state_file} was pruned from another model or distilled with other "
            "teachers or KD settings; pass the same ones, or drop --resume and pass --force"
        )
    return build_model(saved["model_config"]), record
