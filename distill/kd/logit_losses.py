"""Distillation losses on logits alone: logit standardisation, DIST and MLKD.

Every loss computes in float32 whatever the autocast dtype of the logits (see distill.losses),
takes the student's logits first and the teacher's second, and returns the distillation term
alone: the cross-entropy on labels is added by the objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Sun et al.'s `normalize` divides by (eps + std) so that a constant row stays finite.
STANDARDIZE_EPS = 1e-7
PEARSON_EPS = 1e-8  # DIST's `cosine_similarity` guard, as in its reference
# MLKD's temperatures: the method's T and four fixed levels around it (Jin et al.'s reference
# sums the same five terms, T = 4 plus 2, 3, 5 and 6).
MLKD_EXTRA_TEMPERATURES = (2.0, 3.0, 5.0, 6.0)


def standardize(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row of logits: (z - mean) / (eps + std), std with Bessel's correction.

    Logit standardisation, Sun et al., "Logit Standardization in Knowledge Distillation", CVPR
    2024 (github.com/sunshangquan/logit-standardization-KD, `normalize`): teacher and student
    logits are z-scored before the temperature, so the student matches the teacher's ranking
    and relative gaps rather than its logits' range, which a smaller net cannot reach.
    """
    logits = logits.float()
    mean = logits.mean(-1, keepdim=True)
    std = logits.std(-1, keepdim=True)
    return (logits - mean) / (STANDARDIZE_EPS + std)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`: [rows]."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    beta: float,
    gamma: float,
    temperature: float,
) -> torch.Tensor:
    """T^2 * (beta * inter + gamma * intra): DIST, Huang et al., "Knowledge Distillation from A
    Stronger Teacher", NeurIPS 2022 (github.com/hunto/DIST_KD, `DIST`).

    With p = softmax(z / T) for student and teacher: inter = 1 - mean over images of the Pearson
    correlation of the two [C] rows (the teacher's ranking of classes for each image); intra =
    the same over classes, of the [B] columns (how the teacher ranks the images for each class).
    Correlation, not KL: the student may match the teacher's relations at another scale.
    """
    ps = F.softmax(student.float() / temperature, 1)
    pt = F.softmax(teacher.float() / temperature, 1)
    inter = 1 - _pearson(ps, pt).mean()
    intra = 1 - _pearson(ps.T, pt.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def _instance(ps: torch.Tensor, log_ps: torch.Tensor, pt: torch.Tensor, log_pt: torch.Tensor):
    """KL(teacher || student) per image summed over classes, batch mean."""
    return (pt * (log_pt - log_ps)).sum(1).mean()


def _batch_gram(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    """MLKD's batch alignment: squared difference of the [B, B] image-similarity Gram matrices
    p p^T, summed, over B."""
    return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / ps.shape[0]


def _class_gram(ps: torch.Tensor, pt: torch.Tensor) -> torch.Tensor:
    """MLKD's class alignment: squared difference of the [C, C] class-correlation matrices
    p^T p, summed, over C."""
    return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / ps.shape[1]


def _mlkd_masks(teacher_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's confidence weights: the share of images whose teacher confidence is at or
    below the batch median, and the share of classes whose summed teacher probability is.

    Jin et al.'s reference multiplies each batch-reduced term by its boolean mask and averages
    (its per-image reduction is commented out), so each term is scaled by the mask's mean; that
    is computed here, on the device (np.percentile's linear interpolation is torch.quantile's).
    """
    p = F.softmax(teacher_weak.float(), 1)
    confidence = p.max(1).values
    class_confidence = p.sum(0)
    image_share = (confidence <= torch.quantile(confidence, 0.5)).float().mean()
    class_share = (class_confidence <= torch.quantile(class_confidence, 0.5)).float().mean()
    return image_share, class_share


def mlkd_loss(
    student_weak: torch.Tensor,
    teacher_weak: torch.Tensor,
    student_strong: torch.Tensor,
    teacher_strong: torch.Tensor,
    *,
    temperature: float,
    weight: float = 1.0,
    temperatures: Sequence[float] = MLKD_EXTRA_TEMPERATURES,
    standardized: bool = False,
) -> torch.Tensor:
    """Multi-level logit distillation, Jin et al., "Multi-Level Logit Distillation", CVPR 2023
    (github.com/Jin-Ying/Multi-Level-Logit-Distillation, `MLKD.forward_train`).

    Summed over the temperatures {T} + `temperatures`, each term times `weight`:
    - instance alignment: T^2 KL(teacher || student) on the weak view (times the image share)
      and on the strong view;
    - batch alignment: the [B, B] Gram matrices of the probabilities, weak view (times the image
      share) and strong view (times the image share);
    - class alignment: the [C, C] class-correlation matrices, weak view (times the class share).
    The shares come from the teacher's confidence on the weak view (`_mlkd_masks`). The reference
    takes the strong instance terms at T = 2 and 6 from the weak logits, a slip this does not
    copy. With `standardized` the logits are z-scored first (Sun et al. 2024 apply their
    standardisation to MLKD this way).
    """
    image_share, class_share = _mlkd_masks(teacher_weak)
    if standardized:
        student_weak, teacher_weak = standardize(student_weak), standardize(teacher_weak)
        student_strong, teacher_strong = standardize(student_strong), standardize(teacher_strong)
    total = student_weak.new_zeros((), dtype=torch.float32)
    for temp in (temperature, *temperatures):
        views = []
        for s, t in ((student_weak, teacher_weak), (student_strong, teacher_strong)):
            log_ps = F.log_softmax(s.float() / temp, 1)
            log_pt = F.log_softmax(t.float() / temp, 1)
            views.append((log_ps.exp(), log_ps, log_pt.exp(), log_pt))
        (ps_w, lps_w, pt_w, lpt_w), (ps_s, lps_s, pt_s, lpt_s) = views
        instance = temp**2 * (
            image_share * _instance(ps_w, lps_w, pt_w, lpt_w) + _instance(ps_s, lps_s, pt_s, lpt_s)
        )
        batch = image_share * (_batch_gram(ps_w, pt_w) + _batch_gram(ps_s, pt_s))
        classes = class_share * _class_gram(ps_w, pt_w)
        total = total + weight * (instance + batch + classes)
    return total
