"""A model that takes batches of another image size: a teacher trained at 224 pixels teaching a
student at 96, or the reverse. The batch is resized on the device, after augmentation, so the
teacher sees exactly the crop the student sees."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResizedInput(nn.Module):
    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            # Antialiased when shrinking, as PIL resizes the images a model is trained on.
            shrink = x.shape[-1] > self.size[-1]
            x = F.interpolate(x, self.size, mode="bilinear", antialias=shrink)
        return self.model(x)


def at_size(model: nn.Module, model_size: list[int], data_size: list[int]) -> nn.Module:
    """`model` (which takes [C, H, W] `model_size`) fed batches of `data_size`."""
    if list(model_size) == list(data_size):
        return model
    return ResizedInput(model, (model_size[1], model_size[2]))
