"""Each distillation loss against its formula written out plainly on a small hand-built example
(the references are named in each loss's docstring), gradients where a method has a trick."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.kd.feature_losses import (
    Connector,
    MemoryBank,
    Review,
    at_loss,
    draw_negatives,
    fitnet_loss,
    hcl_loss,
    nce_loss,
)
from distill.kd.logit_losses import dist_loss, mlkd_loss, standardize
from distill.losses import hinton_kd_loss

S = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5], [1.0, 1.0, 0.0, 2.5]])
T = torch.tensor([[3.0, 1.0, -2.0, 0.5], [0.0, 0.5, 4.0, -1.0], [0.5, 2.0, 0.0, 3.0]])


def softmax_rows(z, temp):
    e = np.exp(np.asarray(z, dtype=np.float64) / temp)
    return e / e.sum(1, keepdims=True)


def test_standardize_z_scores_each_row_with_bessels_std():
    row = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 13.0]])
    # row 1: mean 2, sample std 1; row 2: mean 11, sample std sqrt(((1+1+4)/2)) = sqrt(3)
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-1 / 3**0.5, -1 / 3**0.5, 2 / 3**0.5]])
    assert torch.allclose(standardize(row), expected, atol=1e-6)
    # Invariant to the logits' shift and scale: what the student must match is the shape.
    assert torch.allclose(standardize(3 * S + 7), standardize(S), atol=1e-5)


def test_standardized_kd_gradient_flows_through_the_normalisation():
    s = S.double().clone().requires_grad_(True)

    def loss(x):
        zs, zt = standardize(x).double(), standardize(T).double()
        return hinton_kd_loss(zs, zt, torch.tensor([0, 2, 3]), alpha=1.0, temperature=2.0)

    # The gradient of a z-scored row sums to zero and is orthogonal to the row: a student
    # cannot lower the loss by shifting or scaling its logits.
    loss(s).backward()
    g = s.grad
    assert torch.allclose(g.sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    centred = s.detach() - s.detach().mean(1, keepdim=True)
    assert torch.allclose((g * centred).sum(1), torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_dist_is_the_pearson_correlation_over_classes_and_over_images():
    temp, beta, gamma = 4.0, 2.0, 3.0
    ps, pt = softmax_rows(S, temp), softmax_rows(T, temp)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(3)])
    intra = 1 - np.mean([np.corrcoef(ps[:, j], pt[:, j])[0, 1] for j in range(4)])
    expected = temp**2 * (beta * inter + gamma * intra)
    got = dist_loss(S, T, beta=beta, gamma=gamma, temperature=temp)
    # float32 probabilities at T = 4 differ in the 5th digit: centring loses a few bits.
    assert float(got) == pytest.approx(expected, rel=1e-4)
    assert float(dist_loss(T, T, beta=1, gamma=1, temperature=temp)) == pytest.approx(0, abs=1e-4)


def _plain_mlkd(sw, tw, ss, ts, temperature):
    """Jin et al.'s MLKD.forward_train, written out (without the strong T = 2/6 slip)."""
    pw = softmax_rows(tw, 1.0)
    conf = pw.max(1)
    image_share = np.mean(conf <= np.percentile(conf, 50))
    class_conf = pw.sum(0)
    class_share = np.mean(class_conf <= np.percentile(class_conf, 50))
    total = 0.0
    for temp in (temperature, 2.0, 3.0, 5.0, 6.0):
        views = {}
        for name, s, t in (("w", sw, tw), ("s", ss, ts)):
            ps, pt = softmax_rows(s, temp), softmax_rows(t, temp)
            kl = (pt * (np.log(pt) - np.log(ps))).sum(1).mean() * temp**2
            bc = ((pt @ pt.T - ps @ ps.T) ** 2).sum() / len(ps)
            cc = ((pt.T @ pt - ps.T @ ps) ** 2).sum() / ps.shape[1]
            views[name] = (kl, bc, cc)
        total += image_share * views["w"][0] + views["s"][0]
        total += image_share * (views["w"][1] + views["s"][1])
        total += class_share * views["w"][2]
    return total


def test_mlkd_matches_the_reference_computation():
    strong_s, strong_t = S.flip(0) * 0.7, T.flip(1)
    got = mlkd_loss(S, T, strong_s, strong_t, temperature=4.0)
    assert float(got) == pytest.approx(_plain_mlkd(S, T, strong_s, strong_t, 4.0), rel=1e-5)
    # The confidence shares are the teacher's: no gradient reaches the teacher logits.
    t = T.clone().requires_grad_(True)
    s = S.clone().requires_grad_(True)
    mlkd_loss(s, t.detach(), s, t.detach(), temperature=4.0).backward()
    assert s.grad is not None and t.grad is None


def test_attention_transfer_pools_the_larger_map_and_normalises():
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)]
    ft = [torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 7, 4, 4, generator=g)]
    expected = 0.0
    for a, b in zip(fs, ft, strict=True):
        if a.shape[2] > b.shape[2]:
            a = F.avg_pool2d(a, a.shape[2] // b.shape[2])
        qa = a.pow(2).mean(1).flatten(1).numpy()
        qb = b.pow(2).mean(1).flatten(1).numpy()
        qa /= np.linalg.norm(qa, axis=1, keepdims=True)
        qb /= np.linalg.norm(qb, axis=1, keepdims=True)
        expected += ((qa - qb) ** 2).mean()
    assert float(at_loss(fs, ft)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "student,teacher",
    [((16, 16, 16), (32, 8, 8)), ((16, 8, 8), (32, 16, 16)), ((16, 8, 8), (64, 8, 8))],
)
def test_fitnet_connector_maps_the_student_onto_the_teacher(student, teacher):
    conn = Connector(student, teacher)
    out = conn(torch.randn(2, *student)).detach()
    assert out.shape == (2, *teacher)
    target = torch.randn(2, *teacher)
    assert float(fitnet_loss(out, target)) == pytest.approx(
        float(((out - target) ** 2).mean()), rel=1e-6
    )


def test_hierarchical_context_loss_weights_the_pooled_levels():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    c, d = torch.randn(2, 5, 1, 1, generator=g), torch.randn(2, 5, 1, 1, generator=g)

    def mse(x, y):
        return float(((x - y) ** 2).mean())

    # A 4x4 map: itself (weight 1), its 2x2 (1/2) and 1x1 (1/4) pools (4 is not below 4).
    level4 = (mse(a, b) + mse(F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)) / 2
              + mse(a.mean((2, 3)), b.mean((2, 3))) / 4) / 1.75  # fmt: skip
    expected = level4 + mse(c, d)
    assert float(hcl_loss([a, c], [b, d])) == pytest.approx(expected, rel=1e-5)


def test_review_fuses_from_the_deepest_level_and_reshapes_to_the_teacher():
    review = Review([(8, 16, 16), (16, 8, 8), (32, 1, 1)], [(12, 16, 16), (24, 8, 8), (40, 1, 1)])
    outs = review([torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 1, 1)])
    assert [tuple(o.shape) for o in outs] == [(2, 12, 16, 16), (2, 24, 8, 8), (2, 40, 1, 1)]
    assert review.blocks[-1].att is None and review.blocks[0].att is not None


def test_nce_loss_is_the_reference_formula():
    scores = torch.tensor([[0.5, 0.1, 0.2], [2.0, 0.3, 0.05]])
    n, m = 10, 2
    pn = m / n
    expected = 0.0
    for row in scores.tolist():
        expected -= math.log(row[0] / (row[0] + pn + 1e-7))
        expected -= sum(math.log(pn / (x + pn + 1e-7)) for x in row[1:])
    assert float(nce_loss(scores, n)) == pytest.approx(expected / 2, rel=1e-6)


def test_memory_bank_scores_normalise_once_and_update_by_momentum():
    torch.manual_seed(0)
    bank = MemoryBank(dim=4, size=6, temperature=0.5, momentum=0.25)
    v_s = F.normalize(torch.randn(2, 4), dim=1).requires_grad_(True)
    v_t = F.normalize(torch.randn(2, 4), dim=1)
    idx = torch.tensor([[0, 3, 4], [1, 5, 3]])
    before_s, before_t = bank.student.clone(), bank.teacher.clone()
    out_s, out_t = bank.scores(v_s, v_t, idx)
    raw_s = torch.exp(torch.einsum("bkd,bd->bk", before_t[idx], v_s.detach()) / 0.5)
    raw_t = torch.exp(torch.einsum("bkd,bd->bk", before_s[idx], v_t) / 0.5)
    z = torch.tensor([raw_s.mean() * 6, raw_t.mean() * 6])
    assert torch.allclose(bank.z, z)
    assert torch.allclose(out_s, raw_s / z[0], rtol=1e-5)
    assert torch.allclose(out_t, raw_t / z[1], rtol=1e-5)
    # Stop-gradient: the loss reaches the embedding, never the bank (a buffer).
    nce_loss(out_s, 6).backward()
    assert v_s.grad is not None and not bank.student.requires_grad
    bank.update(v_s, v_t, torch.tensor([0, 1]))
    expected = F.normalize(before_s[:2] * 0.25 + v_s.detach() * 0.75, dim=1)
    assert torch.allclose(bank.student[:2], expected)
    assert torch.equal(bank.student[2:], before_s[2:])
    bank.scores(v_s, v_t, idx)
    assert torch.allclose(bank.z, z)  # Z was fixed at the first step


def test_negatives_are_drawn_from_other_classes():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    start = torch.cumsum(counts, 0) - counts
    index = torch.tensor([0, 1, 2, 7])
    g = torch.Generator().manual_seed(0)
    idx = draw_negatives(index, labels, order, start, counts, 500, g)
    assert idx.shape == (4, 501)
    assert torch.equal(idx[:, 0], index)
    assert (labels[idx[:, 1:]] != labels[index][:, None]).all()
    # Every image of another class is drawn: the draw covers them all.
    assert set(idx[0, 1:].tolist()) == {1, 2, 4, 5, 8, 9}
