"""A teacher that takes batches of another image size: one trained at 224 pixels teaching a
student at 96, or the reverse. The batch is resized on the device, after augmentation, so the
teacher sees exactly the crop the student sees, and moved from the student's normalisation to
the teacher's own (resizing changes an image set's statistics: upscaling smooths it)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResizedInput(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        size: tuple[int, int],
        data_norm: tuple[Sequence[float], Sequence[float]],
        model_norm: tuple[Sequence[float], Sequence[float]],
    ) -> None:
        super().__init__()
        self.model = model
        self.size = tuple(size)
        (m_d, s_d), (m_m, s_m) = data_norm, model_norm
        view = (1, -1, 1, 1)
        # x_model = (pixel - m_m) / s_m with pixel = x_data * s_d + m_d
        scale = torch.tensor(s_d, dtype=torch.float32) / torch.tensor(s_m, dtype=torch.float32)
        shift = (torch.tensor(m_d) - torch.tensor(m_m)) / torch.tensor(s_m, dtype=torch.float32)
        self.register_buffer("scale", scale.view(view), persistent=False)
        self.register_buffer("shift", shift.float().view(view), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            # Antialiased when shrinking, as PIL resizes the images a model is trained on.
            shrink = x.shape[-1] > self.size[-1]
            x = F.interpolate(x, self.size, mode="bilinear", antialias=shrink)
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def at_size(model: nn.Module, ckpt: dict, data_size: Sequence[int], data_norm) -> nn.Module:
    """The checkpoint's `model` fed batches of `data_size` normalised with `data_norm`
    ((mean, std)); itself when the sizes agree (the normalisation was checked to match)."""
    if list(ckpt["input_size"]) == list(data_size):
        return model
    size = (ckpt["input_size"][1], ckpt["input_size"][2])
    return ResizedInput(model, size, data_norm, (ckpt["mean"], ckpt["std"]))
