"""Every setting distill has: one frozen dataclass per concern, each default written once.

- `DataSettings`: the source, its validation split and cache (`--data`, `[data]`, a checkpoint's
  `data` record).
- `AugmentSettings`, `Recipe`: how a model trains (`--recipe` and flags, `[teacher]`/`[student]`,
  a checkpoint's `recipe`).
- `KDSettings`: what a student learns from its teachers (`--kd ...`, `[kd]`, a checkpoint's `kd`).
- `PruneSettings`: how a model is pruned to a budget (`distill prune` flags, `[prune]`).
- `RunSettings`: where and how a run happens, not what it learns (`--out --device --seed ...`).
- `ExportSettings`, `BenchSettings`: the deploy stage (`distill export/bench`, `[export]`,
  `[bench]`).
- `distill.pipeline.config.PipelineSettings` composes them for `distill pipeline`.

CLI flags (distill/flags.py), pipeline TOML files (distill/pipeline.py) and checkpoint records all
go through `build`, which checks each value's type and names the key on a mistake; each class's
`__post_init__` checks ranges (finite numbers, positive counts). A field's metadata holds its help
text and its flag, which the CLI and the README's settings table are generated from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from distill.errors import UserError
from distill.memory import MAX_BATCH, MAX_IMAGE_SIDE
from distill.typed import (
    as_paths,
    build,
    flag_of,
    fraction,
    non_negative,
    positive,
    require,
    seeds,
    setting,
    to_dict,
    whole_numbers_as_floats,
)

CACHE_HOME = "~/.cache/distill"  # downloads and the decoded-data cache, never beside the data


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DataSettings:
    source: str = setting(
        "",
        "cifar10, cifar100, a folder holding cifar-10-batches-py / cifar-100-python, or an "
        "image-folder root (train/<class>/*, optional test/<class>/*).",
        flag="--data",
    )
    val_size: int = setting(5000, "Images held out for validation (seeded, stratified).")
    train_size: int | None = setting(None, "Stratified training subsample, for quick runs.")
    split_seed: int = setting(0, "Seed of the validation split; keep it fixed across stages.")
    data_root: Path = setting(Path(CACHE_HOME), "Where cifar10/cifar100 are downloaded.")
    cache_dir: Path = setting(Path(CACHE_HOME), "Decoded uint8 cache (never beside the data).")
    image_size: int = setting(
        32,
        "Side of the square images a model sees. An image folder's images are resized on their "
        "shorter side and centre-cropped to it (what evaluation and prediction see); training "
        "then augments with the recipe's pad-and-crop or random-resized-crop. CIFAR is "
        "resized from 32 when it differs.",
    )

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        as_paths(self, "data_root", "cache_dir")
        positive(self, "val_size", "train_size", "image_size")
        require(
            self.image_size <= MAX_IMAGE_SIDE,
            "image_size",
            f"must be at most {MAX_IMAGE_SIDE} pixels, got {self.image_size}",
        )
        seeds(self, "split_seed")

    def record(self) -> dict[str, Any]:
        return to_dict(self)


SPLIT_FIELDS = ("val_size", "split_seed")  # a model's validation split: students must share it
CARRIED_FIELDS = ("image_size",)  # followed unless told otherwise (a student may choose its own)
# A pruned model continues on its source's training images too (a model trained on a 2,000-image
# subsample must not recover on all 45,000 by default).
PRUNE_CARRIES = (*CARRIED_FIELDS, "train_size")


def data_for_model(
    record: Mapping[str, Any],
    given: Mapping[str, Any],
    what: str,
    carry: tuple[str, ...] = CARRIED_FIELDS,
) -> DataSettings:
    """The data to evaluate, distil from, prune or export a model on: the source and split the
    model recorded (`record` is its checkpoint's `data`), with `given` settings on top. The
    fields in `carry` (the image size; pruning adds the training subsample) follow the model's
    unless given.

    An explicit split that differs from the model's is refused: its validation images would
    overlap the model's training images and inflate every accuracy measured on them.
    """
    values = {k: v for k, v in given.items() if v is not None}
    for key in SPLIT_FIELDS:
        theirs, ours = record.get(key), values.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            flag = "--" + key.replace("_", "-")
            raise UserError(
                f"{flag} {ours} differs from {what}'s {theirs}, so its validation images would "
                f"overlap {what}'s training set; drop {flag}"
            )
        if ours is None and theirs is not None:
            values[key] = theirs
    for key in carry:
        if values.get(key) is None and record.get(key) is not None:
            values[key] = record[key]
    if not values.get("source"):
        if not record.get("source"):
            raise UserError(f"{what} does not record its data source; pass --data")
        values["source"] = record["source"]
    return build(DataSettings, values, label=_flag_label(DataSettings))


def _flag_label(cls: type) -> Callable[[str], str]:
    flags = {f.name: flag_of(f) for f in fields(cls)}
    return lambda name: flags.get(name, name)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class AugmentSettings:
    crop_pad: int = setting(4, "Random crop with this much zero padding; 0: off.")
    flip: bool = setting(True, "Horizontal flip with probability 1/2.")
    cutout: int = setting(0, "Side of a zeroed square at a random centre; 0: off.")
    grayscale: float = setting(0.0, "Probability an image is turned to grayscale.")
    mixup: float = setting(0.0, "Mixup Beta(a, a) parameter; 0: off.")
    cutmix: float = setting(0.0, "CutMix Beta(a, a) parameter; 0: off.")
    resized_crop: bool = setting(False, "Random-resized-crop (scale 0.35-1) back to size.")

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        non_negative(self, "crop_pad", "cutout", "mixup", "cutmix")
        fraction(self, "grayscale")

    @property
    def mixes(self) -> bool:
        """True when targets become soft label distributions (Mixup or CutMix)."""
        return self.mixup > 0 or self.cutmix > 0


OPTIMIZERS = Literal["sgd", "adam"]
# onecycle (lr ramp 25% then cosine; momentum fixed) | cosine | plateau | step | constant
SCHEDULES = Literal["onecycle", "cosine", "plateau", "step", "constant"]


@dataclass(frozen=True)
class Recipe:
    """How a model trains. Named recipes live in distill/recipes.py; flags override fields."""

    name: str = setting("custom", "The recipe's name.", cli=False)
    epochs: int = setting(1, "Training epochs.")
    batch_size: int = setting(
        128, "Images per step per process; the global batch is this x the number of processes."
    )
    lr: float = setting(
        0.1,
        "Peak learning rate of this run's global batch (batch size x processes), given as a "
        "flag, a TOML key or a Python keyword alike. Not given: the recipe's lr, scaled from "
        "the batch it was tuned at to the global batch (linearly for SGD, by the square root "
        "for Adam).",
    )
    lr_batch: int = setting(
        0, "Global batch at which `lr` was tuned (0: the recipe's batch_size).", cli=False
    )
    optimizer: OPTIMIZERS = setting("sgd", "sgd or adam.", cli=False)
    momentum: float = setting(0.9, "SGD momentum.", cli=False)
    nesterov: bool = setting(False, "Nesterov momentum.", cli=False)
    weight_decay: float = setting(
        5e-4, "Weight decay (never on BN parameters and biases).", cli=False
    )
    lookahead_k: int = setting(0, "Lookahead every k steps; 0: off.", cli=False)
    lookahead_alpha: float = setting(0.5, "Lookahead slow-weight step.", cli=False)
    schedule: SCHEDULES = setting("cosine", "Learning-rate schedule.", cli=False)
    warmup_epochs: float = setting(
        0.0, "Linear warm-up before cosine, in epochs (capped at a tenth of the run).", cli=False
    )
    step_every: int = setting(
        5, "schedule step: multiply the lr every this many epochs.", cli=False
    )
    step_gamma: float = setting(0.95, "schedule step: the factor.", cli=False)
    plateau_patience: int = setting(5, "schedule plateau: epochs without improvement.", cli=False)
    plateau_factor: float = setting(0.1, "schedule plateau: the factor.", cli=False)
    min_lr: float = setting(0.0, "Floor of the schedule.", cli=False)
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy.")
    teacher_label_smoothing: float = setting(
        0.0,
        "Label smoothing when this recipe trains a teacher (distill/recipes.py says why).",
        cli=False,
    )
    ema_decay: float = setting(0.0, "Per-step decay of an EMA of the weights; 0: off.")
    grad_clip: float = setting(0.0, "Max global gradient norm; 0: off.", cli=False)
    early_stop_patience: int = setting(
        0, "Stop after this many epochs without a better val loss; 0: off.", cli=False
    )
    augment: AugmentSettings = setting(
        help="Batch augmentation.", cli=False, factory=AugmentSettings
    )
    amp: bool = setting(
        True,
        "Mixed precision: bf16 autocast on CUDA GPUs with bf16 and on CPUs with native bf16; "
        "fp16 with a gradient scaler on older GPUs; fp32 elsewhere.",
    )
    channels_last: bool = setting(
        True,
        "channels_last memory format: faster convolutions on GPUs and on CPUs (oneDNN; 1.2x bf16 "
        "and 1.4x fp32 training of resnet18-quarter on a 2-core Zen 4).",
        cli=False,
    )
    compile: bool = setting(False, "torch.compile the model (CUDA only).")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes (several processes only).")

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        positive(self, "epochs", "batch_size", "lr", "step_every")
        require(
            self.batch_size <= MAX_BATCH,
            "batch_size",
            f"must be at most {MAX_BATCH:,} images per process, got {self.batch_size:,}",
        )
        non_negative(
            self,
            "lr_batch",
            "weight_decay",
            "warmup_epochs",
            "min_lr",
            "ema_decay",
            "grad_clip",
            "early_stop_patience",
            "plateau_patience",
            "lookahead_k",
        )
        fraction(self, "lookahead_alpha", "label_smoothing", "teacher_label_smoothing")
        fraction(self, "momentum", "step_gamma", "plateau_factor")
        require(self.ema_decay < 1, "ema_decay", f"must be below 1, got {self.ema_decay}")
        if self.lr_batch == 0:  # the recipe's lr was tuned at its own batch size
            object.__setattr__(self, "lr_batch", self.batch_size)

    def peak_lr(self, world_size: int = 1) -> float:
        """The one meaning of a run's lr: the optimizer's peak for this run's global batch.
        The optimizer, the plan line, the metrics, the resume note and the divergence hint all
        read it from here."""
        return self.lr_at(self.batch_size * world_size)

    def lr_at(self, global_batch: int) -> float:
        """The peak lr for `global_batch` images per step: the usual scaling rules that keep the
        update size comparable (linear for SGD, square root for Adam)."""
        ratio = global_batch / self.lr_batch
        return self.lr * (math.sqrt(ratio) if self.optimizer == "adam" else ratio)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        """A checkpoint's recipe record (keys of other versions ignored)."""
        return build(cls, d, label=lambda n: f"recipe.{n}", unknown="ignore")


def override_recipe(
    recipe: Recipe,
    given: Mapping[str, Any],
    world_size: int = 1,
    label: Callable[[str], str] | None = None,
) -> Recipe:
    """`recipe` with the fields in `given` (flags, a TOML table or Python keywords) replaced: the
    one way every entry point resolves a recipe, so an lr means the same from each.

    An explicit lr is the lr of this run's global batch (batch_size x world_size); without one,
    a new batch size keeps the recipe's `lr_batch`, so the lr follows the global batch.
    `label` names a field in messages as the user wrote it (default: its flag).
    """
    values = {k: v for k, v in given.items() if v is not None}
    if "lr" in values and "lr_batch" not in values:
        values["lr_batch"] = values.get("batch_size", recipe.batch_size) * world_size
    return build(Recipe, values, base=recipe, label=label or _flag_label(Recipe))


# ---------------------------------------------------------------------------------------------
# Distillation

KD_METHODS = Literal["hinton", "dkd", "dist", "mlkd", "crd", "fitnet", "at", "reviewkd"]
# One line per method for --help and `distill kd-methods`: what it matches and its source.
KD_METHOD_HELP: dict[str, str] = {
    "hinton": "soft targets at temperature T (Hinton et al. 2015)",
    "dkd": "decoupled target and non-target KD (Zhao et al., CVPR 2022)",
    "dist": "inter- and intra-class Pearson correlation of probabilities "
    "(Huang et al., NeurIPS 2022)",
    "mlkd": "instance, batch and class alignment at 5 temperatures on a weak and a strong view "
    "(Jin et al., CVPR 2023)",
    "crd": "contrastive embeddings against a memory bank of the training set "
    "(Tian et al., ICLR 2020)",
    "fitnet": "one stage's feature map through a trained connector (Romero et al., ICLR 2015)",
    "at": "spatial attention maps of every stage (Zagoruyko & Komodakis, ICLR 2017)",
    "reviewkd": "fused multi-stage features, hierarchical context loss (Chen et al., CVPR 2021)",
}  # fmt: skip
LOGIT_METHODS = ("hinton", "dkd", "dist", "mlkd")  # the ones logit standardisation modifies


@dataclass(frozen=True)
class KDSettings:
    method: KD_METHODS = setting(
        "hinton",
        "Distillation method: " + ", ".join(KD_METHOD_HELP) + " (`distill kd-methods` describes "
        "each and measures its cost).",
        flag="--kd",
    )
    alpha: float | None = setting(
        None,
        "Weight of the method's distillation term; as published: hinton 0.9 (the CE gets "
        "1 - alpha), dkd 1 (TCKD), dist 2 (inter-class), mlkd 1, crd 0.8, fitnet 100, at 1000, "
        "reviewkd 5 (mdistiller's CIFAR-100 configs).",
        shown="the method's",
    )
    temperature: float = setting(4.0, "Softmax temperature T.")
    beta: float | None = setting(
        None,
        "dkd: NCKD weight, as published 8 x (classes - 1) / 99 (0.73 for 10 classes); dist: "
        "intra-class weight, as published 2.",
        shown="the method's",
    )
    warmup_epochs: float | None = setting(
        None,
        "Epochs over which the KD term ramps up: dkd and reviewkd 1/12 of the run (their "
        "published 20 of 240 epochs), at least 1; the others none.",
        flag="--warmup",
        shown="the method's",
    )
    teacher_tta: bool = setting(
        False, "Teachers' soft targets average the image and its mirror (2x teacher cost)."
    )
    logit_standardize: bool = setting(
        False,
        "Z-score teacher and student logits before the temperature, for hinton, dkd, dist and "
        "mlkd (Sun et al., CVPR 2024; published with T 2 and the KD term weighted 9 to CE 0.1).",
    )
    hint_stage: int = setting(
        2, "fitnet: the stage whose output the student is hinted on (published: 2)."
    )
    crd_negatives: int = setting(
        16384, "crd: negatives per image drawn from other classes each step (published: 16384)."
    )
    crd_dim: int = setting(128, "crd: width of the contrastive embedding (published: 128).")
    crd_temperature: float = setting(0.07, "crd: NCE temperature (published: 0.07).")
    crd_momentum: float = setting(0.5, "crd: memory bank momentum (published: 0.5).")

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        positive(self, "temperature", "hint_stage", "crd_negatives", "crd_dim", "crd_temperature")
        non_negative(self, "alpha", "beta", "warmup_epochs")
        fraction(self, "crd_momentum")
        if self.method == "hinton":
            fraction(self, "alpha")


# The values a KDSettings leaves as None, per method (bench/recipe_study.py measures them).
# Hinton: alpha 0.9, T 4 (SPEC 4). DKD: mdistiller's alpha 1, and its beta 8 and warm-up over 20
# of 240 epochs were tuned for CIFAR-100 over 240 epochs. With ten classes they collapse (45% vs
# 60% labels only on the CPU proxy): the non-target term sums over C - 1 classes, so beta is
# scaled to the non-target classes (8 at 100 classes, 0.73 at 10), and a short run warms up over
# at least one epoch (each fix alone: 58% and 46%; both: 61%, on a par with Hinton there).
# The other methods' weights are their published CIFAR-100 ones (mdistiller's configs; DIST's
# and MLKD's papers); `kd_notes` says so when the data has another number of classes. DIST's
# match its authors' CIFAR config (image_classification_sota, dist_cifar.yaml: CE weight 1,
# kd_loss_weight 2 on DIST(beta=1, gamma=1) at tau 4): CE + 4^2 * (2 inter + 2 intra).
KD_DEFAULTS: dict[str, dict[str, float]] = {
    "hinton": {"alpha": 0.9, "beta_per_other_class": 0.0, "warmup_fraction": 0.0,
               "warmup_min_epochs": 0.0},
    "dkd": {"alpha": 1.0, "beta_per_other_class": 8.0 / 99, "warmup_fraction": 20 / 240,
            "warmup_min_epochs": 1.0},
    "dist": {"alpha": 2.0, "beta": 2.0, "warmup_fraction": 0.0, "warmup_min_epochs": 0.0},
    "mlkd": {"alpha": 1.0, "warmup_fraction": 0.0, "warmup_min_epochs": 0.0},
    "crd": {"alpha": 0.8, "warmup_fraction": 0.0, "warmup_min_epochs": 0.0},
    "fitnet": {"alpha": 100.0, "warmup_fraction": 0.0, "warmup_min_epochs": 0.0},
    "at": {"alpha": 1000.0, "warmup_fraction": 0.0, "warmup_min_epochs": 0.0},
    "reviewkd": {"alpha": 5.0, "warmup_fraction": 20 / 240, "warmup_min_epochs": 1.0},
}  # fmt: skip
PUBLISHED_CLASSES = 100  # the published defaults were tuned on CIFAR-100


def resolve_kd(kd: KDSettings, epochs: int, num_classes: int) -> KDSettings:
    """`kd` with every default filled in for a run of `epochs` epochs on `num_classes` classes:
    the warm-up is measured in the epochs of the run that distils (a prune's recovery, a
    student's training), never longer than that run."""
    d = KD_DEFAULTS[kd.method]
    warmup = min(max(d["warmup_fraction"] * epochs, d["warmup_min_epochs"]), epochs)
    default_beta = d.get("beta", d.get("beta_per_other_class", 0.0) * (num_classes - 1))
    return replace(
        kd,
        alpha=d["alpha"] if kd.alpha is None else kd.alpha,
        beta=default_beta if kd.beta is None else kd.beta,
        warmup_epochs=warmup if kd.warmup_epochs is None else kd.warmup_epochs,
    )


def kd_notes(kd: KDSettings, num_classes: int) -> list[str]:
    """What a user should know before distilling with `kd` on `num_classes` classes: weights
    published for CIFAR-100 and used as they are on other data (DKD's beta is scaled instead)."""
    if kd.method in ("hinton", "dkd") or num_classes == PUBLISHED_CLASSES or kd.alpha is not None:
        return []
    return [
        f"{kd.method}'s default weight (--alpha) was tuned on CIFAR-100 ({PUBLISHED_CLASSES} "
        f"classes); this data has {num_classes}, so compare a few values on it"
    ]


_METHOD_KEYS = {
    "dkd": ("beta",),
    "dist": ("beta",),
    "fitnet": ("hint_stage",),
    "crd": ("crd_negatives", "crd_dim", "crd_temperature", "crd_momentum"),
}


def kd_record(kd: KDSettings) -> dict[str, Any]:
    """What a checkpoint says about its distillation: only the keys that apply to the method
    (and the logit standardisation only when it was on)."""
    d = to_dict(kd)
    method_keys = {k for keys in _METHOD_KEYS.values() for k in keys}
    for key in method_keys - set(_METHOD_KEYS.get(kd.method, ())):
        d.pop(key)
    if not kd.logit_standardize:
        d.pop("logit_standardize")
    return d


# ---------------------------------------------------------------------------------------------
# Pruning


IMPORTANCE = Literal["magnitude", "taylor"]


@dataclass(frozen=True)
class PruneSettings:
    budget: str = setting("", "Parameter budget of the pruned model, e.g. 2.5M or 800k.")
    steps: int = setting(3, "Pruning steps, geometric towards the budget.")
    epochs_per_step: int = setting(1, "KD fine-tuning epochs between steps (0: none).")
    epochs: int | None = setting(None, "Recovery epochs after the last step.", shown="the recipe's")
    importance: IMPORTANCE = setting(
        "magnitude", "magnitude (group L2 norm) or taylor (|w x grad| over 8 batches)."
    )
    round_to: int = setting(8, "Channel widths stay multiples of this (8, 16, 32).")
    enabled: bool = setting(True, "pipeline: run the prune stage (false skips it).", cli=False)

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        positive(self, "steps", "epochs", "round_to")
        non_negative(self, "epochs_per_step")


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunSettings:
    """Where and how a run happens; what it learns is the Recipe."""

    out: Path | None = setting(None, "Checkpoint to write (.pt).", flag="--out", short="-o")
    device: Literal["auto", "cpu", "cuda"] = setting(
        "auto", "auto (CUDA when present), cpu or cuda."
    )
    seed: int = setting(0, "Seed of initialisation, order and augmentation.")
    resume: bool = setting(False, "Continue the interrupted run saved beside --out.")
    force: bool = setting(False, "Overwrite an existing --out (or start over instead of resuming).")
    quiet: bool = setting(False, "Print nothing but errors and the result.")
    keep_last: bool = setting(False, "Keep NAME.last.pt (the resumable state) after success.")
    tensorboard: Path | None = setting(
        None,
        "Also log the metrics to TensorBoard in this folder (pip install distill[tensorboard]).",
    )
    # Off by default until measured on GPUs: it halves the all-reduce traffic, which pays over
    # slow links between nodes, and costs a rounding of every gradient to 8 mantissa bits.
    ddp_bf16_grads: bool = setting(
        False, "Several GPU processes: all-reduce gradients in bf16 (half the traffic)."
    )
    mlflow: str | None = setting(
        None,
        "Also track the run in MLflow: params, per-epoch metrics, the checkpoint and later its "
        "ONNX files; a server URL or sqlite:///runs.db offline (pip install distill[mlflow]).",
    )
    mlflow_parent: str | None = setting(
        None, "The MLflow run this one nests under (a pipeline's).", cli=False
    )

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        as_paths(self, "out", "tensorboard")
        seeds(self, "seed")


# ---------------------------------------------------------------------------------------------
# Deploy


@dataclass(frozen=True)
class ExportSettings:
    int8: bool = setting(False, "Static int8 (QDQ, per-channel), calibrated on training images.")
    fp16: bool = setting(False, "Half-precision weights for GPUs; input/output stay float32.")
    tta: bool = setting(False, "Bake the flip average (image + mirror) into the graph.")
    int8_max_drop: float = setting(
        0.02, "Refuse an int8 file that loses more than this much val top-1 (0.02: 2 points)."
    )

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        fraction(self, "int8_max_drop")
        if self.int8 and self.fp16:
            raise UserError("--int8 and --fp16 are separate exports; pass one of them")


@dataclass(frozen=True)
class BenchSettings:
    batch_sizes: tuple[int, ...] = setting((1, 32, 256), "Batch sizes to time.")
    seconds: float = setting(2.0, "Timed seconds per engine and batch size, at least.")
    threads: int | None = setting(None, "Threads for every engine.", shown="physical cores")
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "auto, cpu or cuda.")
    engines: tuple[str, ...] = setting(
        (), "Engines to time, e.g. pytorch,onnxruntime,openvino.", shown="every one installed"
    )
    accuracy: bool = setting(
        True, "Measure each engine's top-1 on the model's validation split too."
    )

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        require(len(self.batch_sizes) > 0, "batch_sizes", "must name at least one batch size")
        for b in self.batch_sizes:
            require(
                0 < b <= MAX_BATCH, "batch_sizes", f"must be between 1 and {MAX_BATCH:,}, got {b}"
            )
        positive(self, "seconds", "threads")
        require(self.seconds <= 3600, "seconds", f"must be at most 3600, got {self.seconds}")
