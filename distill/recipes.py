"""Named training recipes (SPEC 3): values of `distill.settings.Recipe`, with the reasons."""

from __future__ import annotations

from typing import Any

from distill import distributed
from distill.errors import UserError
from distill.settings import AugmentSettings, Recipe, override_recipe

CROP_FLIP = AugmentSettings(crop_pad=4, flip=True)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="adam-onecycle",
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
            name="sgd-lookahead-cutmix",
            epochs=200,
            batch_size=128,
            lr=0.1,
            lookahead_k=5,
            lookahead_alpha=0.5,
            schedule="cosine",
            early_stop_patience=20,
            augment=AugmentSettings(crop_pad=4, flip=True, cutmix=1.0),
        ),
        Recipe(name="sgd-cosine", epochs=200, batch_size=128, lr=0.1, augment=CROP_FLIP),
        Recipe(
            name="sgd-plateau",
            epochs=200,
            batch_size=128,
            lr=0.01,
            schedule="plateau",
            plateau_patience=5,
            min_lr=1e-6,
            augment=AugmentSettings(crop_pad=0, flip=True, resized_crop=True),
        ),
        Recipe(
            name="adam-step-mixup",
            epochs=300,
            batch_size=64,
            lr=0.01,
            optimizer="adam",
            weight_decay=1e-9,
            schedule="step",
            step_every=5,
            step_gamma=0.95,
            augment=AugmentSettings(crop_pad=4, flip=True, grayscale=0.1, mixup=0.2),
        ),
        # Our GPU recipe: Nesterov SGD at lr 0.1 per 256 images scaled to batch 512, short
        # linear warm-up into cosine, label smoothing, cutout, EMA of weights, bf16 + channels_last.
        # Its teachers are not smoothed: over long runs smoothing pulls every wrong class towards
        # the same probability and erases the relative non-target information KD transfers
        # (Mueller, Kornblith & Hinton 2019). Not measured here: no GPU has run it yet.
        Recipe(
            name="standard",
            epochs=200,
            batch_size=512,
            lr=0.2,
            nesterov=True,
            weight_decay=5e-4,
            schedule="cosine",
            warmup_epochs=3,
            label_smoothing=0.1,
            ema_decay=0.9995,
            augment=AugmentSettings(crop_pad=4, flip=True, cutout=8),
        ),
        # CPU demo: a few epochs of one-cycle Nesterov SGD on small models. Its teachers ARE
        # smoothed: in short runs a teacher that saw the same images soon gives near one-hot soft
        # targets on them, and smoothing keeps its wrong-class probabilities informative. On the
        # CPU proxy (bench/recipe_study.py, 4 seeds) students of a smoothed teacher reached 65.9%
        # against 60.6% from an unsmoothed one (labels only: 59.9%), the opposite of the long-run
        # result above: the README's "What each choice is worth".
        Recipe(
            name="quick",
            epochs=4,
            batch_size=256,
            lr=0.2,
            nesterov=True,
            weight_decay=5e-4,
            schedule="onecycle",
            label_smoothing=0.1,
            teacher_label_smoothing=0.1,
            augment=CROP_FLIP,
        ),
        # Fine-tuning a pretrained model (`distill teacher import`): its features are already
        # good, so a tenth of a from-scratch lr (the usual transfer-learning choice), a few
        # epochs, no warm-up restarts of what it learned, light weight decay. Smoothed as a
        # teacher for the short-run reason above.
        Recipe(
            "finetune",
            epochs=5,
            batch_size=64,
            lr=0.01,
            nesterov=True,
            weight_decay=1e-4,
            schedule="cosine",
            label_smoothing=0.1,
            teacher_label_smoothing=0.1,
            augment=CROP_FLIP,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None


def make_recipe(recipe: str | Recipe = "standard", **overrides: Any) -> Recipe:
    """A named recipe (or a Recipe) with fields overridden; None values are ignored.

    An explicit lr is the lr of this run's global batch; without one, the lr follows the global
    batch (see `Recipe.lr_at`).
    """
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return override_recipe(base, overrides, distributed.world_size())


def teacher_recipe(recipe: str | Recipe = "standard", **overrides: Any) -> Recipe:
    """`make_recipe` for a model trained to teach: the recipe's `teacher_label_smoothing` in
    place of its label smoothing, unless `overrides` set it."""
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return make_recipe(base, **({"label_smoothing": base.teacher_label_smoothing} | overrides))


def model_recipe(ckpt: dict[str, Any]) -> Recipe:
    """The recipe a checkpoint was trained with (what `distill prune` continues with), or
    `standard` when it records none. An explicit lr it was given stays tied to its batch."""
    record = ckpt.get("recipe")
    return Recipe.from_dict(record) if record else get_recipe("standard")
