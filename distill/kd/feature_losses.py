"""Distillation losses on the models' insides and the small modules they train: FitNet's
connector, AT's attention maps, CRD's projection heads and memory bank, ReviewKD's fusion blocks
and hierarchical context loss. Formulas as in mdistiller (github.com/megvii-research/mdistiller,
`mdistiller/distillers/`), which reproduces the published CIFAR-100 table.

Features arrive in the autocast dtype; every loss computes in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed

# ---------------------------------------------------------------------------------------------
# FitNet (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015)


class Connector(nn.Module):
    """Maps a student feature map [Cs, Hs, Ws] onto the teacher's [Ct, Ht, Wt]: mdistiller's
    `ConvReg` (conv, BN, ReLU). A 3x3 stride-2 conv halves, a 4x4 stride-2 transposed conv
    doubles, and a (1 + Hs - Ht) x (1 + Ws - Wt) conv shrinks the spatial size."""

    def __init__(self, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        super().__init__()
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        if hs == 2 * ht:
            self.conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1)
        elif 2 * hs == ht:
            self.conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1)
        elif hs >= ht:
            self.conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt))
        else:
            raise ValueError(f"no connector from {tuple(student_shape)} to {tuple(teacher_shape)}")
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def fitnet_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the connector's output and the teacher's feature map
    (mdistiller `FitNet`: `F.mse_loss(conv_reg(f_s), f_t)`)."""
    return F.mse_loss(student_hint.float(), teacher_hint.float())


# ---------------------------------------------------------------------------------------------
# AT (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017)


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The L2-normalised spatial map mean_c |f_c|^p, flattened: [B, H*W] (mdistiller `_at`,
    which raises f to the power p without the absolute value; equal for the even p = 2)."""
    return F.normalize(feature.float().pow(p).mean(1).flatten(1))


def at_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], p: float = 2.0
) -> torch.Tensor:
    """Sum over stages of the mean squared difference of the attention maps; the larger map is
    average-pooled to the smaller (mdistiller `at_loss` / `single_stage_at_loss`)."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student, teacher, strict=True):
        hs, ht = fs.shape[2], ft.shape[2]
        if hs > ht:
            fs = F.adaptive_avg_pool2d(fs.float(), (ht, ht))
        elif hs < ht:
            ft = F.adaptive_avg_pool2d(ft.float(), (hs, hs))
        total = total + (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()
    return total


# ---------------------------------------------------------------------------------------------
# CRD (Tian et al., "Contrastive Representation Distillation", ICLR 2020)

NCE_EPS = 1e-7  # the reference's guard in log(P / (P + m Pn))


class Embed(nn.Module):
    """A linear projection to the contrastive space, L2-normalised (CRD's `Embed`)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.float().flatten(1)), dim=1)


class MemoryBank(nn.Module):
    """CRD's `ContrastMemory`: one embedding per training image for the student's view and one
    for the teacher's, each a momentum average of that image's embeddings, and the two NCE
    normalisers Z, fixed at the first step.

    `scores(v_s, v_t, idx)` returns exp(<bank row, embedding> / T) / Z for each image's positive
    (column 0) and its negatives: the student's embeddings against the teacher bank and the
    teacher's against the student bank. `update(v_s, v_t, index)` then moves the rows of the
    batch's images. Under DDP the update gathers every rank's embeddings and indices first, so
    every rank holds the same bank: the one a single process would hold after the whole global
    batch.
    """

    def __init__(self, dim: int, size: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        std = 1 / math.sqrt(dim / 3)  # the reference's uniform init in [-std, std]
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("student", (torch.rand(size, dim, generator=gen) * 2 - 1) * std)
        self.register_buffer("teacher", (torch.rand(size, dim, generator=gen) * 2 - 1) * std)
        self.register_buffer("z", torch.full((2,), -1.0))  # unset until the first step
        self._z_known = False  # a host-side flag: the buffer is read back once, not every step

    def scores(
        self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(student scores, teacher scores), each [B, K + 1]; `idx` [B, K + 1] holds each image's
        own index in column 0 and its negatives after it."""
        b, k1 = idx.shape
        rows_t = self.teacher.index_select(0, idx.flatten()).view(b, k1, -1)
        rows_s = self.student.index_select(0, idx.flatten()).view(b, k1, -1)
        out_s = torch.exp(torch.bmm(rows_t, v_s.unsqueeze(2)).squeeze(2) / self.temperature)
        out_t = torch.exp(torch.bmm(rows_s, v_t.unsqueeze(2)).squeeze(2) / self.temperature)
        if not self._z_known and bool(self.z[0] < 0):  # a host sync, once per process
            n = self.student.shape[0]
            means = torch.stack([out_s.mean(), out_t.mean()]).detach()
            distributed.all_reduce_sum(means)
            self.z.copy_(means / distributed.world_size() * n)
        self._z_known = True
        return out_s / self.z[0], out_t / self.z[1]

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, index: torch.Tensor) -> None:
        v_s = distributed.all_gather_cat(v_s.detach().float())
        v_t = distributed.all_gather_cat(v_t.detach().float())
        index = distributed.all_gather_cat(index)
        for bank, v in ((self.student, v_s), (self.teacher, v_t)):
            rows = bank.index_select(0, index) * self.momentum + v * (1 - self.momentum)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))


def nce_loss(scores: torch.Tensor, data_size: int) -> torch.Tensor:
    """CRD's `ContrastLoss`: noise-contrastive estimation with a uniform noise distribution over
    the `data_size` images, -(log D(positive) + sum log(1 - D(negatives))), batch mean, where
    D(x) = P(x) / (P(x) + m / data_size) for m negatives."""
    m = scores.shape[1] - 1
    noise = m / data_size
    pos, neg = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + NCE_EPS))
    log_d0 = torch.log(noise / (neg + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


def draw_negatives(
    index: torch.Tensor,
    labels: torch.Tensor,
    by_class: torch.Tensor,
    class_start: torch.Tensor,
    class_count: torch.Tensor,
    k: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """[B, K + 1]: each image's index, then K images of other classes drawn uniformly with
    replacement (CRD's "exact" sampling), on the device.

    `by_class` lists the training indices sorted by class; class c's images are
    `by_class[class_start[c] : class_start[c] + class_count[c]]`. A draw r from the N - n_c
    images of other classes skips over class c's block.
    """
    n = by_class.shape[0]
    c = labels[index]
    start, count = class_start[c][:, None], class_count[c][:, None]
    u = torch.rand(index.shape[0], k, generator=generator, device=index.device)
    r = (u * (n - count)).long()
    r = r + (r >= start) * count
    return torch.cat([index[:, None], by_class[r]], 1)


# ---------------------------------------------------------------------------------------------
# ReviewKD (Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021)


class FusionBlock(nn.Module):
    """ReviewKD's attention-based fusion (`ABF`): a 1x1 conv to `mid` channels, fused with the
    deeper level's output through two sigmoid attention maps, then a 3x3 conv to the teacher's
    width. The deepest level has nothing to fuse."""

    def __init__(self, c_in: int, mid: int, c_out: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)
        )
        self.att = nn.Sequential(nn.Conv2d(mid * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output at the teacher's size, the fused map passed on to the shallower level)."""
        x = self.conv1(x)
        if self.att is not None and deeper is not None:
            h, w = x.shape[2:]
            deeper = F.interpolate(deeper, (h, w), mode="nearest")
            z = self.att(torch.cat([x, deeper], 1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        fused = x
        if x.shape[-1] != out_size:
            x = F.interpolate(x, (out_size, out_size), mode="nearest")
        return self.conv2(x), fused


class Review(nn.Module):
    """The review path: fusion blocks from the deepest level (the pooled embedding as a 1x1 map)
    to the shallowest, each level's output reshaped to its teacher level."""

    def __init__(
        self,
        student_shapes: Sequence[Sequence[int]],
        teacher_shapes: Sequence[Sequence[int]],
        max_mid: int = 512,
    ) -> None:
        super().__init__()
        mid = min(max_mid, student_shapes[-1][0])
        n = len(student_shapes)
        self.out_sizes = [s[1] for s in teacher_shapes]
        self.blocks = nn.ModuleList(
            FusionBlock(s[0], mid, t[0], i < n - 1)
            for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes, strict=True))
        )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        deeper = None
        for i in reversed(range(len(features))):
            out, deeper = self.blocks[i](features[i], deeper, self.out_sizes[i])
            outs.insert(0, out)
        return outs


HCL_LEVELS = (4, 2, 1)  # the pyramid of pooled sizes the context loss compares


def hcl_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss (mdistiller `hcl_loss`): per level, the MSE of the maps plus the
    MSE of their 4x4, 2x2 and 1x1 average pools (those smaller than the map) at weights 1/2,
    1/4, 1/8, normalised by the weights' sum; summed over levels."""
    total = student[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student, teacher, strict=True):
        fs, ft = fs.float(), ft.float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in HCL_LEVELS:
            if size >= fs.shape[2]:
                continue
            weight /= 2
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            loss = loss + pooled * weight
            weights += weight
        total = total + loss / weights
    return total
