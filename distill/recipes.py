"""Named training recipes: frozen dataclasses, overridable field by field, saved in checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from distill.augment import AugmentConfig
from distill.errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float  # peak learning rate at `batch_size`; other batch sizes rescale it (see resolve)
    optimizer: str = "sgd"  # "sgd" | "adam"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lookahead_k: int = 0  # 0: no Lookahead
    lookahead_alpha: float = 0.5
    # onecycle (lr ramp 25% then cosine; momentum fixed) | cosine | plateau | step | constant
    schedule: str = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up before cosine
    step_every: int = 5  # schedule "step": multiply lr by step_gamma every step_every epochs
    step_gamma: float = 0.95
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0: no EMA of weights; else per-step decay
    grad_clip: float = 0.0  # 0: no clipping; else max global grad norm
    early_stop_patience: int = 0  # 0: off; else epochs without val-loss improvement
    augment: AugmentConfig = AugmentConfig()
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16
    channels_last: bool = True
    compile: bool = False  # torch.compile, CUDA only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


CROP_FLIP = AugmentConfig(crop_pad=4, flip=True)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "adam-onecycle",
            epochs=30,
            batch_size=256,
            lr=0.01,
            optimizer="adam",
            weight_decay=1e-4,
            schedule="onecycle",
            grad_clip=0.1,
            augment=CROP_FLIP,
        ),
        Recipe(
            "sgd-lookahead-cutmix",
            epochs=200,
            batch_size=128,
            lr=0.1,
            lookahead_k=5,
            lookahead_alpha=0.5,
            schedule="cosine",
            early_stop_patience=20,
            augment=AugmentConfig(crop_pad=4, flip=True, cutmix=1.0),
        ),
        Recipe("sgd-cosine", epochs=200, batch_size=128, lr=0.1, augment=CROP_FLIP),
        Recipe(
            "sgd-plateau",
            epochs=200,
            batch_size=128,
            lr=0.01,
            schedule="plateau",
            plateau_patience=5,
            min_lr=1e-6,
            augment=AugmentConfig(crop_pad=0, flip=True, resized_crop=True),
        ),
        Recipe(
            "adam-step-mixup",
            epochs=300,
            batch_size=64,
            lr=0.01,
            optimizer="adam",
            weight_decay=1e-9,
            schedule="step",
            step_every=5,
            step_gamma=0.95,
            augment=AugmentConfig(crop_pad=4, flip=True, grayscale=0.1, mixup=0.2),
        ),
        # Our GPU recipe: Nesterov SGD at lr 0.1 per 256 images scaled to batch 512, short
        # linear warm-up into cosine, label smoothing, cutout, EMA of weights, bf16 + channels_last.
        Recipe(
            "standard",
            epochs=200,
            batch_size=512,
            lr=0.2,
            nesterov=True,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=3,
            label_smoothing=0.1,
            ema_decay=0.9995,
            augment=AugmentConfig(crop_pad=4, flip=True, cutout=8),
        ),
        # CPU demo: a few epochs of one-cycle Nesterov SGD on small models.
        Recipe(
            "quick",
            epochs=4,
            batch_size=256,
            lr=0.2,
            nesterov=True,
            weight_decay=5e-4,
            schedule="onecycle",
            label_smoothing=0.1,
            augment=CROP_FLIP,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


def resolve_recipe(
    name: str,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    **overrides: Any,
) -> Recipe:
    """The named recipe with CLI overrides applied.

    A new batch size without an explicit lr rescales the recipe's lr: linearly for SGD,
    by the square root for Adam (the usual rules that keep the update size comparable).
    """
    recipe = get_recipe(name)
    changes: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {epochs}")
        changes["epochs"] = epochs
    if batch_size is not None:
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {batch_size}")
        changes["batch_size"] = batch_size
        if lr is None:
            ratio = batch_size / recipe.batch_size
            changes["lr"] = recipe.lr * (math.sqrt(ratio) if recipe.optimizer == "adam" else ratio)
    if lr is not None:
        if not lr > 0:
            raise UserError(f"--lr must be positive, got {lr}")
        changes["lr"] = lr
    return replace(recipe, **changes)
