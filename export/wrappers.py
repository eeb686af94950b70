"""The module an export traces, also the PyTorch reference every check and benchmark compares
with: [0,1] float32 NCHW RGB in, logits out, normalisation inside, optionally the flip average
(test-time augmentation) inside too."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Normalized(nn.Module):
    """[0,1] float32 NCHW RGB in, float32 logits out: normalisation travels inside the graph."""

    def __init__(
        self,
        model: nn.Module,
        mean: list[float],
        std: list[float],
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype
        # Not "mean"/"std": the exporter names the global-pool op's output "mean", and without its
        # optimizer pass that clashes with an initializer of the same name.
        self.register_buffer(
            "input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (the same arithmetic as training), then cast for a half model.
        x = (x - self.input_mean) / self.input_std
        return self.model(x.to(self.dtype)).float()


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of the logits of the image and of its horizontal mirror
    (what `distill eval --tta` computes). The mirror is taken of the [0,1] input, which equals
    mirroring after normalisation (the normalisation is per channel)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(x.flip(3))) / 2


def reference_module(
    ckpt: dict[str, Any], *, tta: bool = False, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """The checkpoint's model with its normalisation (and the flip average when `tta`), in eval
    mode: what an export of it computes."""
    from distill.checkpoint import model_from_checkpoint

    module: nn.Module = Normalized(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"], dtype)
    if tta:
        module = FlipAverage(module)
    return module.eval()
