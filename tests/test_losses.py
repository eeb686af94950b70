"""Distillation losses against values computed by hand with `math` on 2-3 classes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.data.loader import Batch
from distill.errors import UserError
from distill.kd.objective import KDObjective
from distill.losses import dkd_loss, hinton_kd_loss
from distill.settings import KDSettings, resolve_kd
from distill.typed import build

TOL = 1e-5  # float32 losses of O(1) values

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, 4.0]]
LABELS = [1, 2]


def softmax(z, temp=1.0):
    e = [math.exp(v / temp) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def ce(z, target):
    """Cross-entropy of logits z against a class index or a probability list."""
    if isinstance(target, int):
        return -math.log(softmax(z)[target])
    return -sum(q * math.log(p) for q, p in zip(target, softmax(z), strict=True))


def mean(values):
    return sum(values) / len(values)


def hand_kl(temp):
    """Batch mean of KL(softmax(TEACHER / T) || softmax(STUDENT / T))."""
    pairs = zip(STUDENT, TEACHER, strict=True)
    return mean([kl(softmax(t, temp), softmax(s, temp)) for s, t in pairs])


def hand_ce(targets=LABELS):
    return mean([ce(z, c) for z, c in zip(STUDENT, targets, strict=True)])


def tensors(labels=LABELS):
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(labels)


@pytest.mark.parametrize("alpha,temp", [(0.9, 4.0), (0.5, 2.0), (1.0, 1.0)])
def test_hinton_matches_hand_computation(alpha, temp):
    s, t, y = tensors()
    expected = (1 - alpha) * hand_ce() + alpha * temp**2 * hand_kl(temp)
    got = hinton_kd_loss(s, t, y, alpha=alpha, temperature=temp)
    assert got.item() == pytest.approx(expected, abs=TOL)


def test_hinton_with_soft_targets_and_label_smoothing():
    s, t, _ = tensors()
    soft = [[0.0, 0.7, 0.3], [0.25, 0.0, 0.75]]  # what Mixup/CutMix hand the loss
    got = hinton_kd_loss(s, t, torch.tensor(soft), alpha=0.9, temperature=4.0)
    assert got.item() == pytest.approx(0.1 * hand_ce(soft) + 0.9 * 16 * hand_kl(4), abs=TOL)
    # Label smoothing eps: the hard target becomes (1 - eps) one-hot + eps / C.
    eps, smoothed = 0.1, []
    for z, c in zip(STUDENT, LABELS, strict=True):
        smoothed.append(ce(z, [(1 - eps) * (i == c) + eps / 3 for i in range(3)]))
    got = hinton_kd_loss(s, t, tensors()[2], alpha=0.0, label_smoothing=eps, temperature=4.0)
    assert got.item() == pytest.approx(mean(smoothed), abs=TOL)


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = tensors()
    assert hinton_kd_loss(s, t, y, alpha=0.0, temperature=4.0).item() == pytest.approx(
        F.cross_entropy(s, y).item(), abs=1e-7
    )
    # ...whatever the teacher says.
    assert hinton_kd_loss(s, -5 * t, y, alpha=0.0, temperature=4.0).item() == pytest.approx(
        F.cross_entropy(s, y).item(), abs=1e-7
    )


def test_identical_logits_leave_only_the_ce_term():
    s, _, y = tensors()
    got = hinton_kd_loss(s, s.clone(), y, alpha=0.9, temperature=4.0).item()
    assert got == pytest.approx(0.1 * hand_ce(), abs=TOL)


def test_t_squared_keeps_the_soft_gradient_scale_independent_of_t():
    """d(T^2 KL)/ds = T (p_s - p_t) -> (s - t - mean(s - t)) / C as T grows: no 1/T^2 fade."""
    s, t, y = tensors()
    grads = []
    for temp in (100.0, 200.0, 400.0):
        s_ = s.clone().requires_grad_(True)
        hinton_kd_loss(s_, t, y, alpha=1.0, temperature=temp).backward()
        grads.append(s_.grad)
    d = s - t
    limit = (d - d.mean(1, keepdim=True)) / 3 / len(s)  # "batchmean" divides by the batch
    for g in grads:
        assert torch.allclose(g, limit, atol=1.5e-3), (g, limit)  # error is O(1/T)
    # And the value itself is T^2 times the KL at T (T = 2 against T = 1 on the same logits).
    got = hinton_kd_loss(s, t, y, alpha=1.0, temperature=2.0).item()
    assert got == pytest.approx(4 * hand_kl(2), abs=TOL)


def dkd_by_hand(student, teacher, labels, alpha, beta, temp):
    total = []
    for s, t, c in zip(student, teacher, labels, strict=True):
        ps, pt = softmax(s, temp), softmax(t, temp)
        bs, bt = [ps[c], 1 - ps[c]], [pt[c], 1 - pt[c]]  # (target, all other classes)
        tckd = kl(bt, bs)
        s_other = [v for i, v in enumerate(s) if i != c]
        t_other = [v for i, v in enumerate(t) if i != c]
        nckd = kl(softmax(t_other, temp), softmax(s_other, temp))
        total.append(ce(s, c) + temp**2 * (alpha * tckd + beta * nckd))
    return mean(total)


@pytest.mark.parametrize("alpha,beta,temp", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_hand_computation(alpha, beta, temp):
    s, t, y = tensors()
    expected = dkd_by_hand(STUDENT, TEACHER, LABELS, alpha, beta, temp)
    got = dkd_loss(s, t, y, alpha=alpha, beta=beta, temperature=temp)
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_dkd_two_classes_has_no_non_target_term():
    """With 2 classes the non-target distribution is one class with probability 1: NCKD = 0."""
    s, t, y = torch.tensor([[0.3, -0.2]]), torch.tensor([[2.0, 1.0]]), torch.tensor([0])
    ps, pt = softmax([0.3, -0.2], 4), softmax([2.0, 1.0], 4)
    expected = ce([0.3, -0.2], 0) + 16 * kl(pt, ps)  # binary KL = the full KL here
    got = dkd_loss(s, t, y, alpha=1.0, beta=100.0, temperature=4.0).item()
    assert got == pytest.approx(expected, abs=TOL)


def test_dkd_decomposes_classical_kd():
    """Zhao et al. eq. 7: KL(p_t || p_s) = TCKD + (1 - p_t[target]) * NCKD, per sample."""
    s, t, y = torch.tensor([STUDENT[0]]), torch.tensor([TEACHER[0]]), torch.tensor([1])
    ce_only = dkd_loss(s, t, y, alpha=0.0, beta=0.0, temperature=4.0)
    tckd = dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=4.0) - ce_only
    nckd = dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=4.0) - ce_only
    kd = hinton_kd_loss(s, t, y, alpha=1.0, temperature=4.0)
    pt_target = softmax(TEACHER[0], 4)[1]
    assert kd.item() == pytest.approx((tckd + (1 - pt_target) * nckd).item(), abs=1e-4)


def test_dkd_stays_finite_when_the_teacher_is_certain():
    # p_target = 1 - 3e-11 at T=4: 1 - p in float32 is 0 and a naive log(1 - p) is -inf.
    s = torch.tensor([[50.0, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[100.0, 0.0, 1.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), alpha=1.0, beta=8.0, temperature=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_soft_targets_decouple_on_the_largest_share():
    s, t, _ = tensors()
    soft = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.0, 0.8]])
    hard = dkd_loss(s, t, torch.tensor(LABELS), alpha=1.0, beta=8.0, temperature=4.0)
    ce_gap = F.cross_entropy(s, soft) - F.cross_entropy(s, torch.tensor(LABELS))
    got = dkd_loss(s, t, soft, alpha=1.0, beta=8.0, temperature=4.0)
    assert got.item() == pytest.approx((hard + ce_gap).item(), abs=TOL)


class FixedLogits(nn.Module):
    """A 'teacher' that returns the same logits for every image and records what it saw."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x)
        return self.logits.expand(len(x), -1)


class Logits(nn.Module):
    """A 'student' whose logits are given (a parameter, so the loss has something to train)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits).clone())

    def forward(self, x):
        return self.logits


def step(objective, student, images, targets, progress):
    batch = Batch(images, targets, torch.arange(len(targets)))
    return objective.forward_train(student, batch, progress)


def test_ensemble_averages_teacher_logits():
    a = [[3.0, 0.0, 1.0], [0.0, 2.0, 2.0]]
    b = [[1.0, 0.0, 1.0], [2.0, 0.0, 6.0]]  # mean of a and b is TEACHER
    s, _, y = tensors()
    student = Logits(s)
    objective = KDObjective(
        student, (FixedLogits(a), FixedLogits(b)), resolve_kd(KDSettings(), 4, 3),
        input_size=(3, 4, 4),
    )  # fmt: skip
    images = torch.rand(2, 3, 4, 4)
    expected = 0.1 * hand_ce() + 0.9 * 16 * hand_kl(4)
    assert step(objective, student, images, y, 0.0)[1].item() == pytest.approx(expected, abs=TOL)
    for teacher in objective.teachers:
        assert not teacher.training
        assert teacher.seen[-1] is images  # the very batch the student saw


def test_objective_backpropagates_into_the_student_only():
    student = nn.Linear(12, 3)
    teacher = FixedLogits(TEACHER[0:1] * 4)
    kd = resolve_kd(KDSettings("dkd"), 12, 3)
    objective = KDObjective(student, (teacher,), kd, input_size=(3, 2, 2))
    images = torch.rand(4, 3, 2, 2)
    _, loss = objective.forward_train(
        lambda x: student(x.flatten(1)), Batch(images, torch.tensor([0, 1, 2, 1]), None), 5.0
    )
    loss.backward()  # the teacher's inference-mode logits must not break autograd
    assert student.weight.grad is not None and torch.isfinite(student.weight.grad).all()
    assert objective.extra_parameters() == 0  # a logit method trains nothing of its own


def test_dkd_warmup_is_linear_in_epochs():
    kd = resolve_kd(KDSettings("dkd", warmup_epochs=4.0, beta=8.0), 12, 3)
    s, t, y = tensors()
    student = Logits(s)
    objective = KDObjective(student, (FixedLogits(TEACHER),), kd, input_size=(3, 1, 1))
    images = torch.zeros(2, 3, 1, 1)
    ce_only = F.cross_entropy(s, y).item()
    full = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0).item()

    def loss(progress):
        return step(objective, student, images, y, progress)[1].item()

    assert loss(0.0) == pytest.approx(ce_only, abs=TOL)
    assert loss(1.0) == pytest.approx(ce_only + 0.25 * (full - ce_only), abs=TOL)
    assert loss(9.0) == pytest.approx(full, abs=TOL)


def test_config_defaults_and_refusals():
    hinton = resolve_kd(KDSettings("hinton"), 12, 10)
    assert (hinton.alpha, hinton.temperature, hinton.warmup_epochs) == (0.9, 4.0, 0.0)
    # DKD on CIFAR-100 over 240 epochs: exactly mdistiller's published beta 8, warm-up 20.
    dkd = resolve_kd(KDSettings("dkd"), 240, 100)
    assert (dkd.alpha, dkd.beta, dkd.temperature) == (1.0, pytest.approx(8.0), 4.0)
    assert dkd.warmup_epochs == pytest.approx(20.0)
    # Ten classes, a short run: beta scaled to 9 other classes, at least one epoch of warm-up
    # and never longer than the run itself.
    short = resolve_kd(KDSettings("dkd"), 6, 10)
    assert short.beta == pytest.approx(8 * 9 / 99) and short.warmup_epochs == 1.0
    assert resolve_kd(KDSettings("dkd"), 1, 10).warmup_epochs == 1.0
    assert resolve_kd(KDSettings("dkd", beta=2.0, warmup_epochs=0.0), 6, 10).beta == 2.0
    for bad in (
        dict(method="hinton", alpha=1.5),
        dict(method="hinton", temperature=0.0),
        dict(method="dkd", beta=-1.0),
        dict(method="hinton", temperature=float("inf")),
    ):
        with pytest.raises(UserError):
            build(KDSettings, bad)
    methods = "one of hinton, dkd, dist, mlkd, crd, fitnet, at, reviewkd"
    with pytest.raises(UserError, match=methods):
        build(KDSettings, {"method": "rkd"})
    for bad in (dict(crd_momentum=1.5), dict(crd_negatives=0), dict(hint_stage=0)):
        with pytest.raises(UserError):
            build(KDSettings, bad)
