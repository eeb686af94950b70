"""The one parametrized CIFAR ResNet every registered architecture is built from.

A model is fully described by a `ResNetConfig` channel plan: stem width, each stage's residual
width and each block's inner widths. Registered names are thin factories over `plan()`; a pruned
model is just another plan read back from its modules with `channel_plan()`, so every model is
rebuilt from plain config values and a state dict (no pickled modules).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

BLOCK_TYPES = ("basic", "bottleneck", "preact", "se")
STEMS = ("cifar", "imagenet")
BOTTLENECK_EXPANSION = 4
SE_REDUCTION = 16


@dataclass(frozen=True)
class ResNetConfig:
    """Channel plan of a CIFAR ResNet.

    `widths[i]` is stage i's residual width (a bottleneck's output, i.e. planes x 4).
    `inner[i][j]` holds block j of stage i's inner widths: (mid,) for basic and preact blocks,
    (mid1, mid2) for bottlenecks, (mid, se_hidden) for squeeze-excitation blocks.
    """

    block: str
    stem_width: int
    widths: tuple[int, ...]
    inner: tuple[tuple[tuple[int, ...], ...], ...]
    num_classes: int = 10
    downsample: str = "conv"  # "conv": strided 1x1 conv; "maxpool": MaxPool(2) then 1x1 conv
    dropout: float = 0.0
    in_channels: int = 3
    # (stage, block) of stride-1 blocks whose in and out widths are equal yet which keep a 1x1
    # projection shortcut: pruning can shrink both sides of a projection to the same width, and
    # the shapes alone would then rebuild an identity.
    projections: tuple[tuple[int, int], ...] = ()
    # "cifar": 3x3 stride-1 conv (SPEC 2); "imagenet": 7x7 stride-2 conv then 3x3 stride-2
    # max-pool, a quarter of the side before the first stage (distill/stems.py says when).
    stem: str = "cifar"

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block!r}; expected one of {BLOCK_TYPES}")
        if self.downsample not in ("conv", "maxpool"):
            raise ValueError(f"unknown downsample {self.downsample!r}; expected conv or maxpool")
        if len(self.widths) != len(self.inner):
            raise ValueError("widths and inner must have one entry per stage")

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.inner)

    def to_dict(self) -> dict:
        """Plain lists and scalars: it round-trips through `torch.load(weights_only=True)`."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["inner"] = [[list(b) for b in stage] for stage in self.inner]
        d["projections"] = [list(p) for p in self.projections]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        d = dict(d)
        d["widths"] = tuple(int(w) for w in d["widths"])
        d["inner"] = tuple(tuple(tuple(int(c) for c in b) for b in stage) for stage in d["inner"])
        d["projections"] = tuple((int(i), int(j)) for i, j in d.get("projections", ()))
        return cls(**d)


def se_hidden(width: int) -> int:
    """Squeeze-excitation hidden width of a `width`-channel block: the usual 1/16 reduction."""
    return max(width // SE_REDUCTION, 1)


def plan(
    block: str,
    blocks: tuple[int, ...],
    planes: tuple[int, ...],
    *,
    stem_width: int = 64,
    num_classes: int = 10,
    downsample: str = "conv",
    dropout: float = 0.0,
) -> ResNetConfig:
    """Default channel plan from the published description: block counts and stage planes."""
    widths, inner = [], []
    for n, p in zip(blocks, planes, strict=True):
        if block == "bottleneck":
            widths.append(p * BOTTLENECK_EXPANSION)
            inner.append(tuple((p, p) for _ in range(n)))
        elif block == "se":
            widths.append(p)
            inner.append(tuple((p, se_hidden(p)) for _ in range(n)))
        else:
            widths.append(p)
            inner.append(tuple((p,) for _ in range(n)))
    return ResNetConfig(
        block=block,
        stem_width=stem_width,
        widths=tuple(widths),
        inner=tuple(inner),
        num_classes=num_classes,
        downsample=downsample,
        dropout=dropout,
    )


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


def shortcut(
    c_in: int, c_out: int, stride: int, downsample: str, norm: bool = True, project: bool = False
) -> nn.Module:
    """Identity when the shape holds (unless `project`), else a 1x1 projection (+ BN unless
    pre-activated)."""
    if stride == 1 and c_in == c_out and not project:
        return nn.Identity()
    layers: list[nn.Module] = []
    if stride != 1 and downsample == "maxpool":
        # Pool first so every pixel contributes, instead of the strided conv dropping 3 of 4.
        layers.append(nn.MaxPool2d(stride))
        stride = 1
    layers.append(nn.Conv2d(c_in, c_out, 1, stride, bias=False))
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-(dropout)-conv3x3-BN-(SE) + shortcut, ReLU."""

    def __init__(
        self,
        c_in: int,
        inner: tuple[int, ...],
        c_out: int,
        stride: int,
        downsample: str,
        dropout: float = 0.0,
        project: bool = False,
    ) -> None:
        super().__init__()
        mid = inner[0]
        self.conv1 = conv_bn(c_in, mid, 3, stride)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv_bn(mid, c_out, 3)
        self.se = SqueezeExcite(c_out, inner[1]) if len(inner) > 1 else nn.Identity()
        self.shortcut = shortcut(c_in, c_out, stride, downsample, project=project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop(torch.relu(self.conv1(x)))
        out = self.se(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand; BN after each; + shortcut, ReLU."""

    def __init__(
        self,
        c_in: int,
        inner: tuple[int, ...],
        c_out: int,
        stride: int,
        downsample: str,
        project: bool = False,
    ) -> None:
        super().__init__()
        mid1, mid2 = inner
        self.conv1 = conv_bn(c_in, mid1, 1)
        self.conv2 = conv_bn(mid1, mid2, 3, stride)
        self.conv3 = conv_bn(mid2, c_out, 1)
        self.shortcut = shortcut(c_in, c_out, stride, downsample, project=project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        out = torch.relu(self.conv2(out))
        return torch.relu(self.conv3(out) + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut taken from the pre-activated input."""

    def __init__(
        self,
        c_in: int,
        inner: tuple[int, ...],
        c_out: int,
        stride: int,
        downsample: str,
        project: bool = False,
    ) -> None:
        super().__init__()
        mid = inner[0]
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c_out, 3, 1, 1, bias=False)
        self.shortcut = shortcut(c_in, c_out, stride, downsample, norm=False, project=project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


def make_stem(config: ResNetConfig) -> nn.Sequential:
    """The CIFAR stem (3x3, stride 1, no pooling) or the ImageNet one (7x7 stride 2, then a
    3x3 stride-2 max-pool). A pre-activation net's stem is the bare conv: its first block
    applies the BN-ReLU."""
    c_in, c_out = config.in_channels, config.stem_width
    kernel, stride = (7, 2) if config.stem == "imagenet" else (3, 1)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
    layers: list[nn.Module] = [conv]
    if config.block != "preact":
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if config.stem == "imagenet":
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """Stem (CIFAR: 3x3 stride 1, no max-pool), residual stages, global average pool, linear
    head."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        preact = config.block == "preact"
        self.stem = make_stem(config)
        c_in = config.stem_width
        stages = []
        for i, (c_out, stage_inner) in enumerate(zip(config.widths, config.inner, strict=True)):
            blocks = []
            for j, inner in enumerate(stage_inner):
                stride = 2 if (i > 0 and j == 0) else 1
                project = (i, j) in config.projections
                blocks.append(self._block(c_in, inner, c_out, stride, project))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        # Pre-activation nets end with the BN-ReLU their last block did not apply.
        self.final = (
            nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)) if preact else nn.Identity()
        )
        self.fc = nn.Linear(c_in, config.num_classes)

    def _block(
        self, c_in: int, inner: tuple[int, ...], c_out: int, stride: int, project: bool
    ) -> nn.Module:
        cfg = self.config
        if cfg.block == "bottleneck":
            return Bottleneck(c_in, inner, c_out, stride, cfg.downsample, project)
        if cfg.block == "preact":
            return PreActBlock(c_in, inner, c_out, stride, cfg.downsample, project)
        return BasicBlock(c_in, inner, c_out, stride, cfg.downsample, cfg.dropout, project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))

    def channel_plan(self) -> ResNetConfig:
        """Read the plan back from the modules' actual shapes (after structured pruning)."""
        cfg = self.config
        widths, inner, projections = [], [], []
        c_in = self.stem[0].out_channels
        for i, stage in enumerate(self.stages):
            stage_inner = []
            for j, block in enumerate(stage):
                if isinstance(block, Bottleneck):
                    stage_inner.append((block.conv1[0].out_channels, block.conv2[0].out_channels))
                    out = block.conv3[0].out_channels
                elif isinstance(block, PreActBlock):
                    stage_inner.append((block.conv1.out_channels,))
                    out = block.conv2.out_channels
                else:
                    mids = (block.conv1[0].out_channels,)
                    if isinstance(block.se, SqueezeExcite):
                        mids += (block.se.fc1.out_channels,)
                    stage_inner.append(mids)
                    out = block.conv2[0].out_channels
                stride = 2 if (i > 0 and j == 0) else 1
                if stride == 1 and c_in == out and not isinstance(block.shortcut, nn.Identity):
                    projections.append((i, j))
                c_in = out
            widths.append(out)
            inner.append(tuple(stage_inner))
        return ResNetConfig(
            block=cfg.block,
            stem_width=self.stem[0].out_channels,
            widths=tuple(widths),
            inner=tuple(inner),
            num_classes=self.fc.out_features,
            downsample=cfg.downsample,
            dropout=cfg.dropout,
            in_channels=cfg.in_channels,
            projections=tuple(projections),
            stem=cfg.stem,
        )
