"""Distillation losses (SPEC 4), the labels-only objective and the teachers' averaged logits;
the distillation objective of every method is `distill.kd.objective.KDObjective`.

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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distill.data.loader import Batch
from distill.device import Precision, autocast


def _kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over classes, averaged over the batch ("batchmean")."""
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def hinton_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(targets, student) + kd_weight * alpha * T^2 * KL(t/T || s/T).
    The weights and T come from the run's KDSettings (their defaults live there alone).

    `targets` are int64 labels or soft targets [B, C] (Mixup/CutMix); `kd_weight` is the
    warm-up factor (1 outside any warm-up).
    """
    s, t, temp = student.float(), teacher.float(), temperature
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    kd = _kl(F.log_softmax(t / temp, 1), F.log_softmax(s / temp, 1)) * temp**2
    return (1 - alpha) * ce + kd_weight * alpha * kd


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """int64 labels, or the largest share of each row of soft (Mixup/CutMix) targets."""
    return targets if targets.ndim == 1 else targets.argmax(1)


def _split_target(log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the binary distribution (target class, all others): [B, 2].

    log(1 - p_target) is a logsumexp over the non-target log-probabilities, which stays finite
    where a saturated p_target would make log(1 - p_target) of float32 probabilities -inf.
    gather/scatter, not boolean masks: a masked_select sizes its output from the data, which is
    a host sync on a GPU every step.
    """
    column = target[:, None]
    log_target = log_p.gather(1, column)
    log_other = log_p.scatter(1, column, float("-inf")).logsumexp(1, keepdim=True)
    return torch.cat([log_target, log_other], 1)


def _non_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logits without the target column: [B, C - 1] (order of the other classes kept)."""
    b, c = logits.shape
    others = torch.arange(c - 1, device=logits.device).expand(b, -1)
    return logits.gather(1, others + (others >= target[:, None]).long())


def dkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    label_smoothing: float = 0.0,
    kd_weight: float = 1.0,
) -> torch.Tensor:
    """CE(targets, student) + kd_weight * (alpha * TCKD + beta * NCKD), Zhao et al. 2022.

    With soft targets (Mixup/CutMix) the CE term uses them as they are and the target class of
    the decoupling is each row's largest share.
    """
    s, t, temp = student.float(), teacher.float(), temperature
    ce = F.cross_entropy(s, targets, label_smoothing=label_smoothing)
    target = hard_labels(targets)
    log_ps, log_pt = F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1)
    tckd = _kl(_split_target(log_pt, target), _split_target(log_ps, target)) * temp**2
    nckd = (
        _kl(
            F.log_softmax(_non_target(t, target) / temp, 1),
            F.log_softmax(_non_target(s, target) / temp, 1),
        )
        * temp**2
    )
    return ce + kd_weight * (alpha * tckd + beta * nckd)


@dataclass(frozen=True)
class CrossEntropy:
    """The objective of a model trained on labels alone."""

    label_smoothing: float = 0.0
    suspects: str = "--lr"  # what to lower when the loss diverges

    def forward_train(
        self, model: nn.Module, batch: Batch, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.x)
        # Works for hard labels and for Mixup/CutMix soft targets alike; float32 for stability.
        loss = F.cross_entropy(logits.float(), batch.targets, label_smoothing=self.label_smoothing)
        return logits, loss


@torch.inference_mode()
def ensemble_logits(
    teachers: tuple[nn.Module, ...] | list[nn.Module],
    images: torch.Tensor,
    precision: Precision = Precision(None),
    tta: bool = False,
) -> torch.Tensor:
    """Mean of the teachers' float32 logits on `images` (and, with `tta`, on their mirrors), in
    eval mode, without autograd.

    The result is an inference tensor: clone it outside inference mode before a loss saves it
    for backward.
    """
    views = (images, images.flip(3)) if tta else (images,)
    with autocast(images.device, precision):
        return torch.stack([t(v).float() for t in teachers for v in views]).mean(0)
