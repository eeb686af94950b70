"""Everything one training step touches, built once per run: the model (wrapped in
DistributedDataParallel under torchrun, compiled on request), the batches, the optimizer and its
schedule, mixed precision, Lookahead and the EMA of the weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from distill import distributed
from distill.data import BatchLoader, Dataset
from distill.data.loader import Batch, drops_last
from distill.device import Precision, choose_precision
from distill.errors import UserError
from distill.optim import EMA, Lookahead, make_optimizer, make_scheduler
from distill.settings import Recipe, RunSettings


class Objective(Protocol):
    """(the model to run, the batch, progress in epochs) -> (the model's logits, the loss).

    An objective that is an `nn.Module` (a distillation method's connectors, heads, memory
    bank) is moved to the device, optimised with the model, saved in the resumable state and
    has its gradients averaged over ranks by its `sync_grads()`; it never enters the model's
    checkpoint.
    """

    suspects: str  # the flags to lower when the loss diverges

    def forward_train(
        self, model: nn.Module, batch: Batch, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Sums:
    """An epoch's running sums, on the device (no per-step host sync)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> Sums:
        return cls(
            torch.zeros((), device=device, dtype=torch.float64),
            torch.zeros((), device=device, dtype=torch.long),
        )

    def record(self) -> dict[str, Any]:
        return {"loss": float(self.loss), "correct": int(self.correct), "seen": self.seen}

    def restore(self, saved: dict[str, Any]) -> None:
        self.loss += saved["loss"]
        self.correct += saved["correct"]
        self.seen = saved["seen"]


@dataclass
class Trainer:
    """Everything a training step touches."""

    model: nn.Module  # what steps run: DDP- and/or compile-wrapped
    net: nn.Module  # the plain module under the wrappers (weights, checkpoints)
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: Any
    per_step: bool  # the scheduler steps per batch (else per epoch on val loss)
    loader: BatchLoader
    recipe: Recipe
    device: torch.device
    precision: Precision
    scaler: torch.amp.GradScaler | None = None
    lookahead: Lookahead | None = None
    ema: EMA | None = None

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema else self.net


def check_processes(recipe: Recipe, run: RunSettings, world: int, on_cuda: bool) -> None:
    """Settings that only GPU processes can honour; checked in every rank and, by a command
    that starts the ranks itself, before it starts them."""
    if recipe.sync_bn and world > 1 and not on_cuda:
        raise UserError(
            "--sync-bn synchronises BatchNorm over GPUs (NCCL); on CPU processes drop it"
        )
    if run.ddp_bf16_grads and world > 1 and not on_cuda:
        raise UserError(
            "--ddp-bf16-grads compresses the GPUs' gradient all-reduce (NCCL); on CPU processes "
            "drop it"
        )


def make_trainer(
    model: nn.Module,
    data: Dataset,
    recipe: Recipe,
    run: RunSettings,
    device: torch.device,
    objective: Objective,
) -> Trainer:
    on_cuda = device.type == "cuda"
    world = distributed.world_size()
    check_processes(recipe, run, world, on_cuda)
    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    net = model.to(device, memory_format=memory_format)
    if recipe.sync_bn and world > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    loader = BatchLoader.of(
        data,
        data.train,
        recipe.batch_size,
        device=device,
        augment=recipe.augment,
        shuffle=True,
        drop_last=drops_last(len(data.train.labels), recipe.batch_size, world),
        seed=run.seed,
        rank=distributed.rank(),
        world_size=world,
        channels_last=memory_format == torch.channels_last,
        strong_view=getattr(objective, "wants_strong_view", False),
    )
    if len(loader) == 0:
        raise UserError(
            f"{len(data.train):,} training images make no full batch of {recipe.batch_size} "
            f"on each of {world} processes; lower --batch-size"
        )
    trained: nn.Module = net
    if isinstance(objective, nn.Module):  # a method's own modules learn beside the model
        objective.to(device)
        trained = nn.ModuleList([net, objective])
    optimizer = make_optimizer(trained, recipe, recipe.peak_lr(world))
    scheduler, per_step = make_scheduler(optimizer, recipe, len(loader))
    precision = choose_precision(device, recipe.amp)
    train_model: nn.Module = net
    if world > 1:
        # Bucket views: gradients live in DDP's all-reduce buckets, no copy in or out per step.
        train_model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if on_cuda else None, gradient_as_bucket_view=True
        )
        if run.ddp_bf16_grads:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            train_model.register_comm_hook(None, default_hooks.bf16_compress_hook)
    if recipe.compile and on_cuda:
        train_model = torch.compile(train_model)
    return Trainer(
        model=train_model,
        net=net,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        per_step=per_step,
        loader=loader,
        recipe=recipe,
        device=device,
        precision=precision,
        scaler=torch.amp.GradScaler(device.type) if precision.scaler else None,
        lookahead=Lookahead(list(net.parameters()), recipe.lookahead_k, recipe.lookahead_alpha)
        if recipe.lookahead_k
        else None,
        ema=EMA(net, recipe.ema_decay) if recipe.ema_decay else None,
    )
