"""`KDObjective`: a student's distillation objective, mdistiller's `Distiller` without the
student inside it (SPEC 4).

It owns what a method needs beyond the two models: feature taps on the student and the teacher,
and the modules the method trains (FitNet's connector, CRD's projection heads and memory bank,
ReviewKD's fusion blocks), sized by a dummy forward pass of the actual pair, so a pruned student
with a changed channel plan gets matching connectors. `forward_train(model, batch, progress)`
runs the student and the teachers and returns (student logits, loss); the training loop
optimises `parameters()` with the student's, saves `state_dict()` in the resumable state, and
averages the trainable modules' gradients over ranks (`sync_grads`). The student's checkpoint,
parameter count and ONNX export hold the student alone.

Feature methods (fitnet, at, crd, reviewkd) learn from one teacher: their targets are one
network's insides, which an ensemble does not have. Logit methods average the teachers' logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.data import Dataset
from distill.data.loader import Batch, _seed
from distill.device import Precision, autocast, choose_precision
from distill.errors import UserError
from distill.kd.feature_losses import (
    Connector,
    Embed,
    MemoryBank,
    Review,
    at_loss,
    draw_negatives,
    fitnet_loss,
    hcl_loss,
    nce_loss,
)
from distill.kd.logit_losses import dist_loss, mlkd_loss, standardize
from distill.kd.taps import FeatureTaps, feature_shapes, points
from distill.losses import dkd_loss, ensemble_logits, hinton_kd_loss
from distill.memory import require
from distill.settings import LOGIT_METHODS, KDSettings, Recipe

FEATURE_METHODS = ("crd", "fitnet", "at", "reviewkd")
AT_P = 2.0  # AT's exponent of the activations (mdistiller CFG.AT.P)
REVIEW_MAX_MID = 512  # ReviewKD's fusion width cap (mdistiller MAX_MID_CHANNEL)


def _stages(model: nn.Module) -> int:
    return sum(p.startswith("stage") for p in points(model))


def _paired(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Stage pairs (1-based) from the deep end: nets of different depths pair their last
    min(n_s, n_t) stages, which have matching resolutions in every registry family."""
    n = min(n_student, n_teacher)
    return [(n_student - n + i, n_teacher - n + i) for i in range(1, n + 1)]


def tap_points(method: str, student: nn.Module, teacher: nn.Module, kd: KDSettings):
    """(student points, teacher points) a method reads."""
    if method not in FEATURE_METHODS:
        return [], []
    pairs = _paired(_stages(student), _stages(teacher))
    if method == "fitnet":
        return [f"stage{kd.hint_stage}"], [f"stage{kd.hint_stage}"]
    if method == "at":
        return [f"stage{s}" for s, _ in pairs], [f"stage{t}" for _, t in pairs]
    if method == "reviewkd":  # student outputs, teacher pre-activations (mdistiller's choice)
        student_points = [f"stage{s}" for s, _ in pairs] + ["pool"]
        return student_points, [f"preact{t}" for _, t in pairs] + ["pool"]
    return ["pool"], ["pool"]  # crd


class KDObjective(nn.Module):
    """The loss of a student learning from `teachers` by `kd.method` (resolved settings).

    `input_size` [C, H, W] sizes the method's modules; `train_labels` (the training split's
    labels, CRD only) size the memory bank and let negatives be drawn from other classes.
    `seed` and the rank seed the negatives' generator, whose state is part of `state_dict()`.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        kd: KDSettings,
        *,
        input_size: Sequence[int],
        train_labels: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        precision: Precision = Precision(None),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("KDObjective needs at least one teacher")
        if None in (kd.alpha, kd.beta, kd.warmup_epochs):
            raise ValueError("resolve the KD settings (resolve_kd) before training")
        check_method(kd, len(teachers), student, teachers[0])
        self.kd, self.label_smoothing, self.precision = kd, label_smoothing, precision
        self._teachers = tuple(teachers)  # a tuple: not submodules, never in state_dict()
        for t in self._teachers:
            t.eval().requires_grad_(False)  # BN running stats frozen, no grads kept
        s_points, t_points = tap_points(kd.method, student, teachers[0], kd)
        self._student_taps = FeatureTaps(student, s_points) if s_points else None
        self._teacher_taps = FeatureTaps(teachers[0], t_points) if t_points else None
        s_shapes = feature_shapes(student, s_points, input_size) if s_points else {}
        t_shapes = feature_shapes(teachers[0], t_points, input_size) if t_points else {}
        self._s_points, self._t_points = s_points, t_points
        if kd.method == "fitnet":
            self.connector = Connector(s_shapes[s_points[0]], t_shapes[t_points[0]])
        elif kd.method == "reviewkd":
            as_maps = [_as_map(s_shapes[p]) for p in s_points]
            self.review = Review(as_maps, [_as_map(t_shapes[p]) for p in t_points], REVIEW_MAX_MID)
        elif kd.method == "crd":
            if train_labels is None:
                raise ValueError("crd needs the training labels (its memory bank's size)")
            self.embed_s = Embed(s_shapes["pool"][0], kd.crd_dim)
            self.embed_t = Embed(t_shapes["pool"][0], kd.crd_dim)
            self.bank = MemoryBank(kd.crd_dim, len(train_labels), kd.crd_temperature,
                                   kd.crd_momentum)  # fmt: skip
            labels = train_labels.long().cpu()
            if len(labels.unique()) < 2:
                raise UserError("--kd crd draws negatives from other classes; the training "
                                "images hold one class: use another method")  # fmt: skip
            order = torch.argsort(labels, stable=True)
            counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
            self.register_buffer("labels", labels, persistent=False)
            self.register_buffer("by_class", order, persistent=False)
            self.register_buffer("class_count", counts, persistent=False)
            self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
            self._generator_seed = _seed("crd", seed, distributed.rank())
            self._generator: torch.Generator | None = None
        # The student's device: the modules train beside it.
        self.to(next(student.parameters()).device)
        self._record(False)

    # -- what the loop sees --------------------------------------------------------------------

    @property
    def teachers(self) -> tuple[nn.Module, ...]:
        return self._teachers

    @property
    def suspects(self) -> str:
        """What to lower when the loss diverges."""
        extra = {"dkd": " or --beta", "dist": " or --beta"}.get(self.kd.method, "")
        if self.kd.method in FEATURE_METHODS:
            return "--lr or --alpha"
        return f"--lr, --temperature{extra}"

    @property
    def wants_strong_view(self) -> bool:
        return self.kd.method == "mlkd"

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds (never part of the student)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The (averaged) teachers' float32 logits, outside autograd, on `images`."""
        # The clone turns the inference tensor into a normal one that autograd may save.
        return ensemble_logits(self._teachers, images, self.precision, self.kd.teacher_tta).clone()

    def warmup_weight(self, progress: float) -> float:
        """Weight of the KD term after `progress` epochs: linear from 0 to 1, then 1."""
        if self.kd.warmup_epochs <= 0:
            return 1.0
        return min(progress / self.kd.warmup_epochs, 1.0)

    def sync_grads(self) -> None:
        """Average the method's gradients over ranks (DDP averages the student's alone): one
        all-reduce of the flattened gradients."""
        if not distributed.active():
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        distributed.all_reduce_sum(flat).div_(distributed.world_size())
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def forward_train(
        self, model: nn.Module, batch: Batch, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the student `model` (the loop's, DDP-wrapped or not) on the batch and return (its
        logits on the batch, the loss). Call it under the run's autocast."""
        x, y = batch.x, batch.targets
        if self.kd.method == "mlkd":
            if batch.strong is None:
                raise ValueError("mlkd needs the loader's strong view (strong_view=True)")
            # One forward over both views: DDP allows one forward per backward.
            both = model(torch.cat([x, batch.strong]))
            logits, strong = both.split(len(x))
            teacher = self.teacher_logits(torch.cat([x, batch.strong]))
            t_weak, t_strong = teacher.split(len(x))
            loss = self._ce(logits, y) + self._ce(strong, y)
            loss = loss + self.warmup_weight(progress) * mlkd_loss(
                logits, t_weak, strong, t_strong,
                temperature=self.kd.temperature, weight=self.kd.alpha,
                standardized=self.kd.logit_standardize,
            )  # fmt: skip
            return logits, loss
        self._record(True)
        try:
            logits = model(x)
            feats = self._student_taps.take() if self._student_taps else {}
            if self.kd.method in FEATURE_METHODS:
                with torch.no_grad(), autocast(x.device, self.precision):
                    self._teachers[0](x)
                t_feats = self._teacher_taps.take()
                return logits, self._feature_loss(logits, y, feats, t_feats, batch, progress)
        finally:
            self._record(False)
        return logits, self._logit_loss(logits, self.teacher_logits(x), y, progress)

    def close(self) -> None:
        """Take the taps off the models (the end of the run that trained with them)."""
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.remove()

    def _record(self, on: bool) -> None:
        """Taps keep tensors only inside `forward_train`."""
        for taps in (self._student_taps, self._teacher_taps):
            if taps is not None:
                taps.recording = on

    # -- the methods ----------------------------------------------------------------------------

    def _ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def _logit_loss(
        self, s: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, progress: float
    ) -> torch.Tensor:
        kd, w = self.kd, self.warmup_weight(progress)
        zs, zt = (standardize(s), standardize(t)) if kd.logit_standardize else (s, t)
        if kd.method == "hinton":
            # hinton_kd_loss's CE would see the standardised logits: take only its KD term.
            kd_term = hinton_kd_loss(zs, zt, targets, alpha=1.0, temperature=kd.temperature)
            return (1 - kd.alpha) * self._ce(s, targets) + w * kd.alpha * kd_term
        if kd.method == "dkd" and not kd.logit_standardize:
            return dkd_loss(s, t, targets, alpha=kd.alpha, beta=kd.beta,
                            temperature=kd.temperature, label_smoothing=self.label_smoothing,
                            kd_weight=w)  # fmt: skip
        if kd.method == "dkd":
            # dkd_loss includes a CE on its inputs: swap it for the CE on the raw logits.
            dkd = dkd_loss(zs, zt, targets, alpha=kd.alpha, beta=kd.beta,
                           temperature=kd.temperature, label_smoothing=self.label_smoothing,
                           kd_weight=w)  # fmt: skip
            return dkd - self._ce(zs, targets) + self._ce(s, targets)
        return self._ce(s, targets) + w * dist_loss(
            zs, zt, beta=kd.alpha, gamma=kd.beta, temperature=kd.temperature
        )

    def _feature_loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        fs: dict[str, torch.Tensor],
        ft: dict[str, torch.Tensor],
        batch: Batch,
        progress: float,
    ) -> torch.Tensor:
        kd, w = self.kd, self.warmup_weight(progress)
        ce = self._ce(logits, targets)
        s_list = [fs[p] for p in self._s_points]
        t_list = [ft[p].float() for p in self._t_points]
        if kd.method == "fitnet":
            term = fitnet_loss(self.connector(s_list[0].float()), t_list[0])
        elif kd.method == "at":
            term = at_loss(s_list, t_list, AT_P)
        elif kd.method == "reviewkd":
            maps = [f.float() if f.ndim == 4 else f.float()[:, :, None, None] for f in s_list]
            t_maps = [f if f.ndim == 4 else f[:, :, None, None] for f in t_list]
            term = hcl_loss(self.review(maps), t_maps)
        else:
            term = self._crd_loss(fs["pool"], ft["pool"], batch.index)
        return ce + w * kd.alpha * term

    def _crd_loss(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        v_s, v_t = self.embed_s(f_s), self.embed_t(f_t)
        if self._generator is None:  # made on first use, on the bank's device
            self._generator = torch.Generator(device=index.device)
            self._generator.manual_seed(self._generator_seed)
        idx = draw_negatives(
            index, self.labels, self.by_class, self.class_start, self.class_count,
            self.kd.crd_negatives, self._generator,
        )  # fmt: skip
        out_s, out_t = self.bank.scores(v_s, v_t, idx)
        n = self.bank.student.shape[0]
        loss = nce_loss(out_s, n) + nce_loss(out_t, n)
        self.bank.update(v_s, v_t, index)
        return loss

    # The negatives' generators (one per rank, as the CPU RNG states of `.last.pt` are) are
    # part of the resumable state, so a resumed run draws the same negatives. Every rank calls
    # `state_dict()` when a resumable state is taken (the gather is a collective).
    def get_extra_state(self) -> dict:
        if self.kd.method != "crd":
            return {}
        mine = self._generator.get_state() if self._generator is not None else None
        return {"generators": distributed.gather(mine)}

    def set_extra_state(self, state: dict) -> None:
        states = state.get("generators") or []
        rank = distributed.rank()
        if self.kd.method != "crd" or rank >= len(states) or states[rank] is None:
            return
        self._generator = torch.Generator(device=self.bank.student.device)
        self._generator.set_state(states[rank])


def _as_map(shape: Sequence[int]) -> tuple[int, int, int]:
    """A pooled embedding [C] as the 1x1 map ReviewKD fuses it as."""
    return tuple(shape) if len(shape) == 3 else (shape[0], 1, 1)


def check_method(kd: KDSettings, n_teachers: int, student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a method that cannot run with these models, in one line each."""
    if kd.method in FEATURE_METHODS and n_teachers > 1:
        raise UserError(
            f"--kd {kd.method} learns from one teacher's features; pass one --teacher, or use a "
            f"logit method ({', '.join(LOGIT_METHODS)}) with an ensemble"
        )
    if kd.method in FEATURE_METHODS and kd.teacher_tta:
        raise UserError(f"--teacher-tta applies to logit methods; drop it with --kd {kd.method}")
    if kd.logit_standardize and kd.method not in LOGIT_METHODS:
        raise UserError(
            f"--logit-standardize modifies the logit methods ({', '.join(LOGIT_METHODS)}); "
            f"drop it with --kd {kd.method}"
        )
    if kd.method == "fitnet":
        n = min(_stages(student), _stages(teacher))
        if kd.hint_stage > n:
            raise UserError(f"--hint-stage {kd.hint_stage} is past the last stage; use 1 to {n}")


def check_crd_memory(
    kd: KDSettings,
    images: int,
    batch: int,
    device: torch.device,
    fix: str = "lower --crd-negatives, --crd-dim or --batch-size",
) -> None:
    """CRD's memory bank (a student and a teacher embedding per training image) and one step's
    gathered negatives (batch x (negatives + 1) embeddings per side, and their indices),
    refused before either is allocated."""
    batch = min(batch, images)  # a data set smaller than a batch is one smaller batch
    rows = batch * (kd.crd_negatives + 1)
    need = 2 * images * kd.crd_dim * 4 + 2 * rows * kd.crd_dim * 4 + rows * 8
    require(
        need,
        f"--kd crd with --crd-dim {kd.crd_dim:,} and --crd-negatives {kd.crd_negatives:,} at "
        f"batch {batch:,}",
        fix,
        device,
    )


def make_objective(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    kd: KDSettings,
    dataset: Dataset,
    recipe: Recipe,
    device: torch.device,
    seed: int,
) -> KDObjective:
    """The objective of `student` distilled on `dataset` with `recipe` (`kd` resolved)."""
    if kd.method == "mlkd" and recipe.augment.mixes:
        raise UserError(
            "--kd mlkd aligns a weak and a strong view of the same images, which Mixup/CutMix "
            "blend; choose a recipe without mixing, or another method"
        )
    if kd.method == "crd":
        check_crd_memory(kd, len(dataset.train.labels), recipe.batch_size, device)
    return KDObjective(
        student,
        teachers,
        kd,
        input_size=tuple(dataset.input_size),
        train_labels=dataset.train.labels,
        label_smoothing=recipe.label_smoothing,
        precision=choose_precision(device, recipe.amp),
        seed=seed,
    )
