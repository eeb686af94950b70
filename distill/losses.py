"""Distillation losses (SPEC 4) and the objective that plugs them into `distill.train.fit`.

Hinton KD (Hinton et al. 2015):
    loss = (1 - alpha) * CE(y, s) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))
DKD, decoupled KD (Zhao et al. 2022, mdistiller's `dkd_loss`):
    loss = CE(y, s) + w(progress) * (alpha * TCKD + beta * NCKD)
    TCKD: KL between the binary (target, everything else) distributions at temperature T;
    NCKD: KL between the distributions over the non-target classes alone; both times T^2,
    averaged over the batch; w ramps linearly from 0 to 1 over `warmup_epochs`.

The T^2 factor keeps the soft-target gradients at the same scale as the CE gradients when T
changes (their magnitude falls as 1/T^2). Every loss is computed in float32 whatever the autocast
dtype of the logits: log-softmax and KL of bf16 logits lose too much.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import UserError
from distill.train import autocast, hard_labels

METHODS = ("hinton", "dkd")
# Per-method defaults: Hinton's alpha=0.9, T=4 (SPEC 4); DKD's alpha=1, beta=8, T=4 (mdistiller).
DEFAULT_ALPHA = {"hinton": 0.9, "dkd": 1.0}
DEFAULT_TEMPERATURE = 4.0
DEFAULT_BETA = 8.0
# mdistiller warms DKD up over 20 of 240 epochs; we keep that fraction of whatever run length.
DKD_WARMUP_FRACTION = 20 / 240


@dataclass(frozen=True)
class KDConfig:
    """What the student learns from its teacher(s); saved as the checkpoint's `kd` record."""

    method: str = "hinton"  # hinton | dkd
    alpha: float = 0.9  # hinton: weight of the soft term (CE gets 1 - alpha); dkd: TCKD weight
    temperature: float = DEFAULT_TEMPERATURE
    beta: float = DEFAULT_BETA  # dkd only: NCKD weight
    warmup_epochs: float = 0.0  # the KD term's weight ramps linearly from 0 to 1 over these

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown --kd {self.method!r}; choose one of: {', '.join(METHODS)}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        if self.method == "hinton" and not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha must be in [0, 1] for Hinton KD, got {self.alpha}")
        if self.alpha < 0 or self.beta < 0:
            raise UserError(f"--alpha and --beta must be >= 0, got {self.alpha} and {self.beta}")
        if self.warmup_epochs < 0:
            raise UserError(f"--warmup must be >= 0 epochs, got {self.warmup_epochs}")

    @classmethod
    def create(
        cls,
        method: str = "hinton",
        *,
        alpha: float | None = None,
        temperature: float | None = None,
        beta: float | None = None,
        warmup_epochs: float | None = None,
        epochs: int | None = None,
    ) -> KDConfig:
        """A config with the method's published defaults for every value left as None.

        `epochs` (the run's length) sets DKD's default warm-up: the same fraction of the run as
        mdistiller's 20 of 240 epochs. Hinton KD has no warm-up unless asked for.
        """
        if method not in METHODS:
            raise UserError(f"unknown --kd {method!r}; choose one of: {', '.join(METHODS)}")
        if warmup_epochs is None:
            warmup_epochs = DKD_WARMUP_FRACTION * (epochs or 240) if method == "dkd" else 0.0
        return cls(
            method=method,
            alpha=DEFAULT_ALPHA[method] if alpha is None else alpha,
            temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
            beta=DEFAULT_BETA if beta is None else beta,
            warmup_epochs=float(warmup_epochs),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def warmup_weight(self, progress: float) -> float:
        """Weight of the KD term after `progress` epochs: linear from 0 to 1, then 1."""
        if self.warmup_epochs <= 0:
            return 1.0
        return min(progress / self.warmup_epochs, 1.0)


def _kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over classes, averaged over the batch ("batchmean")."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def hinton_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 0.9,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(targets, student) + kd_weight * alpha * T^2 * KL(t/T || s/T).

    `targets` are int64 labels or soft targets [B, C] (Mixup/CutMix); `kd_weight` is the
    warm-up factor (1 outside any warm-up).
    """
    s, t, temp = student.float(), teacher.float(), temperature
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    kd = _kl(F.log_softmax(t / temp, 1), F.log_softmax(s / temp, 1)) * temp**2
    return (1 - alpha) * ce + kd_weight * alpha * kd


def _split_target(log_p: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the binary distribution (target class, all others): [B, 2].

    log(1 - p_target) is a logsumexp over the non-target log-probabilities, which stays finite
    where a saturated p_target would make log(1 - p_target) of float32 probabilities -inf.
    """
    log_target = log_p.masked_select(gt_mask).unsqueeze(1)
    log_other = log_p.masked_fill(gt_mask, float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], 1)


def _non_target(logits: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """The logits without the target column: [B, C - 1] (order of the other classes kept)."""
    return logits.masked_select(~gt_mask).view(len(logits), -1)


def dkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    label_smoothing: float = 0.0,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """CE(targets, student) + kd_weight * (alpha * TCKD + beta * NCKD), Zhao et al. 2022.

    With soft targets (Mixup/CutMix) the CE term uses them as they are and the target class of
    the decoupling is each row's largest share.
    """
    s, t, temp = student.float(), teacher.float(), temperature
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    gt_mask = F.one_hot(hard_labels(targets), s.shape[1]).bool()
    log_ps, log_pt = F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1)
    tckd = _kl(_split_target(log_pt, gt_mask), _split_target(log_ps, gt_mask)) * temp**2
    nckd = (
        _kl(
            F.log_softmax(_non_target(t, gt_mask) / temp, 1),
            F.log_softmax(_non_target(s, gt_mask) / temp, 1),
        )
        * temp**2
    )
    return ce + kd_weight * (alpha * tckd + beta * nckd)


@torch.inference_mode()
def ensemble_logits(
    teachers: tuple[nn.Module, ...] | list[nn.Module], images: torch.Tensor, amp: bool = True
) -> torch.Tensor:
    """Mean of the teachers' float32 logits on `images`, in eval mode, without autograd.

    The result is an inference tensor: clone it outside inference mode before a loss saves it
    for backward.
    """
    with autocast(images.device, amp):
        return torch.stack([t(images).float() for t in teachers]).mean(0)


@dataclass(frozen=True)
class DistillationObjective:
    """The `Objective` of a student: its loss against the (averaged) teachers' soft targets.

    The teachers see exactly the batch the student sees (`images`, after augmentation and
    Mixup/CutMix, same memory format), under the same autocast as the student's forward.
    """

    teachers: tuple[nn.Module, ...]
    config: KDConfig
    label_smoothing: float = 0.0
    amp: bool = True  # bf16 autocast for the teachers' forward, the same as the student's

    def __post_init__(self) -> None:
        if not self.teachers:
            raise ValueError("DistillationObjective needs at least one teacher")
        for t in self.teachers:
            t.eval().requires_grad_(False)  # BN running stats frozen, no grads kept

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        # The clone turns the inference tensor into a normal one that autograd may save.
        return ensemble_logits(self.teachers, images, self.amp).clone()

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor, progress: float
    ) -> torch.Tensor:
        teacher = self.teacher_logits(images)
        c = self.config
        weight = c.warmup_weight(progress)
        if c.method == "dkd":
            return dkd_loss(
                logits,
                teacher,
                targets,
                alpha=c.alpha,
                beta=c.beta,
                temperature=c.temperature,
                label_smoothing=self.label_smoothing,
                kd_weight=weight,
            )
        return hinton_kd_loss(
            logits,
            teacher,
            targets,
            alpha=c.alpha,
            temperature=c.temperature,
            label_smoothing=self.label_smoothing,
            kd_weight=weight,
        )
