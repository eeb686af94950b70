"""Budget fitting: `FAMILY@BUDGET` names, a family's channel plan widened or narrowed to a budget.

`resnet18@5M` is resnet18's shape (block type, block counts, stem and stage widths relative to
each other, downsampling, dropout) with its widths set so that the trainable parameters come as
close under 5,000,000 as widths in multiples of 8 allow. `resnet18@5M,600MMAC` also keeps the
multiply-accumulates of one 32x32 forward within 600M (the "MAC" suffix is optional).

The fit, in two steps:

1. Scale: every width (the stem and each stage's planes; a bottleneck stage's residual width is
   4 x planes) is multiplied by one factor, rounded to a multiple of 8 (at least 8), and the
   largest factor whose plan fits is found by binary search. The factor moves in steps of
   1/4096 in integer arithmetic, so the same name gives the same plan on every machine.
2. Fill: single widths of the plan are raised by 8, each at most once, while the plan still
   fits, in this order: the last stage first, and within a stage its residual width, then each
   block's inner widths (last block first); a stem of its own comes last. The last stages are
   the widest, so their steps are the coarsest; single blocks' inner widths are the fine steps
   that land the plan within ~1% under the budget. Raising each width at most once keeps every
   width within 8 of the family's, scaled and rounded.

A stem as wide as stage 1 (resnet18: 64 and 64) moves with stage 1, so the first block keeps
its identity shortcut; a narrower stem (resnet18x2: 64 under 128) is a width of its own.

The head is priced for the class count being built, so a 100-class fit may be a step narrower
than a 10-class one; either way the checkpoint records the resolved plan.

Plans are priced arithmetically, not by building modules: fitting resnet34 prices ~35 plans,
at ~10 us each here against ~7 ms for a meta-device build (and a forward for MACs).
`plan_cost` must agree exactly with `distill.budget.count_params` and `count_macs`;
tests/test_fit.py checks that for every family.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from distill.budget import parse_budget
from distill.errors import UserError
from distill.memory import MAX_PARAMS
from students.resnet import BOTTLENECK_EXPANSION, ResNetConfig, plan, se_hidden

SEPARATOR = "@"
WIDTH_STEP = 8
FACTOR_STEPS = 4096  # the scale factor is k / 4096: finer than any width's rounding step of 8
FIT_INPUT = (3, 32, 32)  # a MAC ceiling is for one image at CIFAR size, like `distill models`
_MAC_SUFFIX = re.compile(r"\s*macs?\s*$", re.IGNORECASE)
EXAMPLE = "write FAMILY@BUDGET like resnet18@5M, or resnet18@5M,600MMAC to cap MACs too"


@dataclass(frozen=True)
class FitSpec:
    """A parsed `FAMILY@BUDGET` or `FAMILY@BUDGET,CEILINGMAC` name."""

    name: str  # as the user wrote it: checkpoints record it
    family: str
    budget: int  # trainable parameters
    mac_ceiling: int | None = None  # MACs of one FIT_INPUT forward


def is_fitted(name: str) -> bool:
    return SEPARATOR in name


def parse_fit_name(name: str) -> FitSpec:
    """'resnet18@5M' or 'resnet18@5M,600MMAC' -> FitSpec; a UserError says what to write."""
    family, _, rest = name.partition(SEPARATOR)
    budget_text, comma, mac_text = rest.partition(",")
    try:
        budget = parse_budget(budget_text)
    except UserError:
        raise UserError(
            f"{name!r}: budget {budget_text!r} is not a positive count; {EXAMPLE}"
        ) from None
    if budget > MAX_PARAMS:
        raise UserError(
            f"{name!r}: a budget of {budget:,} parameters is more than the {MAX_PARAMS:,} a "
            f"model may have; {EXAMPLE}"
        )
    mac_ceiling = None
    if comma:
        try:
            mac_ceiling = parse_budget(_MAC_SUFFIX.sub("", mac_text))
        except UserError:
            raise UserError(
                f"{name!r}: MAC ceiling {mac_text!r} is not a positive count; {EXAMPLE}"
            ) from None
    return FitSpec(name, family.strip(), budget, mac_ceiling)


def plan_cost(config: ResNetConfig, input_size: tuple[int, ...] = FIT_INPUT) -> tuple[int, int]:
    """(trainable parameters, MACs of one forward) of the CifarResNet `config` describes.

    Mirrors students/resnet.py layer by layer: convs have no bias, every BN has weight and bias,
    SE convs and the linear head have biases; MACs count conv and linear layers like
    `count_macs` (output elements x kernel x input channels)."""
    params = macs = 0

    def conv(c_in: int, c_out: int, kernel: int, hw: int, bn: bool = True) -> None:
        nonlocal params, macs
        params += kernel * kernel * c_in * c_out + (2 * c_out if bn else 0)
        macs += hw * kernel * kernel * c_in * c_out

    preact = config.block == "preact"
    h, w = input_size[1], input_size[2]
    if config.stem == "imagenet":  # 7x7 stride 2 then a 3x3 stride-2 max-pool (no MACs counted)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        conv(config.in_channels, config.stem_width, 7, h * w, bn=not preact)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    else:
        conv(config.in_channels, config.stem_width, 3, h * w, bn=not preact)
    c_in = config.stem_width
    for i, (c_out, stage) in enumerate(zip(config.widths, config.inner, strict=True)):
        for j, inner in enumerate(stage):
            stride = 2 if (i > 0 and j == 0) else 1
            hw_in = h * w
            if stride == 2:  # 3x3 pad 1 and 1x1 pad 0 convs at stride 2 both give ceil(h / 2)
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            hw = h * w
            if config.block == "bottleneck":
                mid1, mid2 = inner
                conv(c_in, mid1, 1, hw_in)
                conv(mid1, mid2, 3, hw)
                conv(mid2, c_out, 1, hw)
            elif preact:
                params += 2 * c_in + 2 * inner[0]  # bn1, bn2
                conv(c_in, inner[0], 3, hw, bn=False)
                conv(inner[0], c_out, 3, hw, bn=False)
            else:
                conv(c_in, inner[0], 3, hw)
                conv(inner[0], c_out, 3, hw)
                if len(inner) > 1:  # squeeze-excitation: two biased 1x1 convs on the pooled map
                    params += 2 * c_out * inner[1] + inner[1] + c_out
                    macs += 2 * c_out * inner[1]
            if stride != 1 or c_in != c_out or (i, j) in config.projections:
                conv(c_in, c_out, 1, hw, bn=not preact)
            c_in = c_out
    if preact:
        params += 2 * c_in  # the final BN
    params += c_in * config.num_classes + config.num_classes
    macs += c_in * config.num_classes
    return params, macs


@dataclass(frozen=True)
class _Shape:
    """A family's plan as free widths: each stage's planes, then the stem unless tied."""

    family: ResNetConfig
    planes: tuple[int, ...]
    stem_tied: bool  # the stem equals stage 1's residual width and moves with it

    @classmethod
    def of(cls, family: ResNetConfig) -> _Shape:
        expansion = BOTTLENECK_EXPANSION if family.block == "bottleneck" else 1
        planes = tuple(w // expansion for w in family.widths)
        return cls(family, planes, family.stem_width == family.widths[0])

    @property
    def free(self) -> tuple[int, ...]:
        return self.planes if self.stem_tied else (*self.planes, self.family.stem_width)

    def build(self, free: tuple[int, ...]) -> ResNetConfig:
        f, n = self.family, len(self.planes)
        planes = free[:n]
        if self.stem_tied:
            stem = planes[0] * (BOTTLENECK_EXPANSION if f.block == "bottleneck" else 1)
        else:
            stem = free[n]
        config = plan(
            f.block,
            f.blocks,
            planes,
            stem_width=stem,
            num_classes=f.num_classes,
            downsample=f.downsample,
            dropout=f.dropout,
        )
        return replace(config, in_channels=f.in_channels)


def _scaled(widths: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Each width x k / FACTOR_STEPS, rounded half up to a multiple of WIDTH_STEP, at least one
    step; integer arithmetic only."""
    unit = WIDTH_STEP * FACTOR_STEPS
    return tuple(max(1, (2 * w * k + unit) // (2 * unit)) * WIDTH_STEP for w in widths)


@functools.lru_cache(maxsize=256)
def fit_plan(spec: FitSpec, family: ResNetConfig) -> ResNetConfig:
    """The widest plan of `family`'s shape within `spec`'s budget (and MAC ceiling)."""
    shape = _Shape.of(family)

    def cost(free: tuple[int, ...]) -> tuple[int, int]:
        return plan_cost(shape.build(free))

    def fits(c: tuple[int, int]) -> bool:
        return c[0] <= spec.budget and (spec.mac_ceiling is None or c[1] <= spec.mac_ceiling)

    smallest = _scaled(shape.free, 0)  # every width at one step
    low_params, low_macs = cost(smallest)
    if low_params > spec.budget:
        raise UserError(
            f"{spec.name!r}: the smallest {spec.family} plan (every width {WIDTH_STEP}) has "
            f"{low_params:,} parameters; give a budget of at least {low_params:,}"
        )
    if not fits((low_params, low_macs)):
        raise UserError(
            f"{spec.name!r}: the smallest {spec.family} plan (every width {WIDTH_STEP}) needs "
            f"{low_macs:,} MACs; give a MAC ceiling of at least {low_macs:,}"
        )
    # Step 1. Costs never fall as k grows, so bracket the largest fitting k and bisect.
    lo, hi = 0, FACTOR_STEPS
    while fits(cost(_scaled(shape.free, hi))):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(cost(_scaled(shape.free, mid))) else (lo, mid)
    config = shape.build(_scaled(shape.free, lo))
    params = plan_cost(config)[0]
    # Step 2. A raise must add parameters: a free stem grown to stage 1's width would turn the
    # first block's projection into an identity.
    for at in _fill_order(config, shape.stem_tied):
        trial = _raised(config, at, shape.stem_tied)
        c = plan_cost(trial)
        if fits(c) and c[0] > params:
            config, params = trial, c[0]
    return config


def _fill_order(config: ResNetConfig, stem_tied: bool) -> list[tuple[int, ...]]:
    """Single widths in the order the fill raises them: (i,) is stage i's residual width,
    (i, j, k) inner width k of its block j, () the stem. An SE block's hidden width is not
    raised: it follows its residual width by plan()'s rule."""
    order: list[tuple[int, ...]] = []
    for i in reversed(range(len(config.widths))):
        order.append((i,))
        for j in reversed(range(len(config.inner[i]))):
            mids = 1 if config.block in ("basic", "preact", "se") else len(config.inner[i][j])
            order += [(i, j, k) for k in reversed(range(mids))]
    return order if stem_tied else [*order, ()]


def _raised(config: ResNetConfig, at: tuple[int, ...], stem_tied: bool) -> ResNetConfig:
    """`config` with the single width `at` (see `_fill_order`) raised by WIDTH_STEP."""
    if not at:
        return replace(config, stem_width=config.stem_width + WIDTH_STEP)
    if len(at) == 3:
        i, j, k = at
        inner = [[list(b) for b in stage] for stage in config.inner]
        inner[i][j][k] += WIDTH_STEP
        return replace(config, inner=tuple(tuple(tuple(b) for b in s) for s in inner))
    (i,) = at
    widths = list(config.widths)
    widths[i] += WIDTH_STEP
    stage = config.inner[i]
    if config.block == "se":
        stage = tuple((b[0], se_hidden(widths[i])) for b in stage)
    stem = config.stem_width + WIDTH_STEP if (i == 0 and stem_tied) else config.stem_width
    return replace(
        config,
        stem_width=stem,
        widths=tuple(widths),
        inner=(*config.inner[:i], stage, *config.inner[i + 1 :]),
    )
