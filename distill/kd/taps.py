"""Feature taps: forward hooks on the named points of a registry model, so a distillation method
reads a model's insides without a change to the model code (torchdistill's forward hooks by
module path; mdistiller instead edits every model to return its features).

Points of a `CifarResNet` with n stages:
- `stem`: the stem's output;
- `stage1`..`stageN`: each stage's output (after the block's final ReLU where it has one; a
  pre-activation net's stages end without one, and its last is tapped after the closing BN-ReLU,
  which is what its classifier sees);
- `preact1`..`preactN`: each stage's output before its last block's final ReLU (residual branch
  plus shortcut), which keeps the negative values a ReLU would drop; for pre-activation blocks it
  is the stage output itself;
- `pool`: the pooled embedding, the classifier's input.

Hooks are found from the modules alone (stem, stages, blocks, fc), so a pruned model, whose
channel plan changed, is tapped the same way, and the tapped tensors have its new widths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from students.resnet import Bottleneck, CifarResNet, PreActBlock


def points(model: nn.Module) -> list[str]:
    """Every point of `model` that can be tapped, in forward order."""
    n = len(_net(model).stages)
    return (
        ["stem"]
        + [f"stage{i}" for i in range(1, n + 1)]
        + [f"preact{i}" for i in range(1, n + 1)]
        + ["pool"]
    )


def _net(model: nn.Module) -> CifarResNet:
    net = getattr(model, "module", model)  # under DistributedDataParallel
    net = getattr(net, "_orig_mod", net)  # under torch.compile
    if not isinstance(net, CifarResNet):
        raise TypeError(f"feature taps need a registry model, got {type(net).__name__}")
    return net


class FeatureTaps:
    """Hooks on `model` that keep the tensors at `names` from its latest forward pass.

    `taps.features` maps each name to its tensor (with autograd history: a method's loss
    backpropagates into the student through them). While `recording` is False the hooks keep
    nothing (a validation or export pass of the same modules). `remove()` takes every hook off.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        net = _net(model)
        unknown = sorted(set(names) - set(points(net)))
        if unknown:
            raise ValueError(f"unknown tap points {unknown}; choose from {points(net)}")
        self.names = tuple(names)
        self.recording = True
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []
        n = len(net.stages)
        for name in self.names:
            if name == "stem":
                self._keep(net.stem, name)
            elif name == "pool":
                self._handles.append(
                    net.fc.register_forward_pre_hook(
                        lambda m, args, name=name: self._store(name, args[0])
                    )
                )
            elif name.startswith("stage"):
                i = int(name[5:]) - 1
                last_preact = i == n - 1 and not isinstance(net.final, nn.Identity)
                self._keep(net.final if last_preact else net.stages[i], name)
            else:
                self._tap_preact(net.stages[int(name[6:]) - 1][-1], name)

    def _store(self, name: str, value: torch.Tensor) -> None:
        if self.recording:
            self.features[name] = value

    def _keep(self, module: nn.Module, name: str) -> None:
        self._handles.append(
            module.register_forward_hook(lambda m, args, out, name=name: self._store(name, out))
        )

    def _tap_preact(self, block: nn.Module, name: str) -> None:
        if isinstance(block, PreActBlock):  # no ReLU at the end: its output is the sum
            self._keep(block, name)
            return
        branch_end = block.conv3 if isinstance(block, Bottleneck) else block.se
        parts: dict[str, torch.Tensor] = {}

        def branch(m, args, out):
            parts["branch"] = out

        def skip(m, args, out):
            # The shortcut runs after the branch in every block's forward.
            self._store(name, parts.pop("branch") + out)

        self._handles.append(branch_end.register_forward_hook(branch))
        self._handles.append(block.shortcut.register_forward_hook(skip))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.features.clear()

    def take(self) -> dict[str, torch.Tensor]:
        """The features of the latest forward pass, forgotten here (no tensor outlives a step)."""
        out, self.features = self.features, {}
        return out


@contextmanager
def tapped(model: nn.Module, names: Sequence[str]) -> Iterator[FeatureTaps]:
    taps = FeatureTaps(model, names)
    try:
        yield taps
    finally:
        taps.remove()


@torch.no_grad()
def feature_shapes(
    model: nn.Module, names: Sequence[str], input_size: Sequence[int]
) -> dict[str, tuple[int, ...]]:
    """The shape [C, H, W] (or [C] for `pool`) of each point on one input of `input_size`, from
    a dummy forward pass in eval mode (no BN statistics move)."""
    net = _net(model)
    was_training = net.training
    net.eval()
    param = next(net.parameters())
    x = torch.zeros(2, *input_size, device=param.device, dtype=param.dtype)
    try:
        with tapped(net, names) as taps:
            net(x)
            return {k: tuple(v.shape[1:]) for k, v in taps.features.items()}
    finally:
        net.train(was_training)
