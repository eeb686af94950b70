"""What a run will hold in memory, estimated before anything is allocated, and the bounds on
every number that sizes an allocation.

A crafted checkpoint, a typo in a TOML file or an extra digit on a flag must be one line, not a
machine swapping itself to death or a CUDA out-of-memory traceback after minutes of decoding.
The estimates are lower bounds of what is needed (the real peak is higher), so a refusal is
never wrong; a run that passes may still be tight, and says nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from distill.errors import UserError

if TYPE_CHECKING:  # the bounds above are read by settings.py: `distill --help` loads no torch
    import torch
    from torch import nn

MAX_IMAGE_SIDE = 4096  # pixels; a CIFAR-style classifier at 4096x4096 is already absurd
MAX_BATCH = 1 << 16  # images per step and process
MAX_PARAMS = 10**9  # trainable parameters of a model to build
MAX_CLASSES = 100_000  # outputs of a classifier (ImageNet-21k has 21,841)


def inference_batch(base: int, input_size: tuple[int, ...] | list[int]) -> int:
    """`base` images per inference batch at 32x32 (where every such default was tuned), or as
    many as hold the same pixels at `input_size` ([..., H, W]): a batch's activations stay what
    they are at 32x32, so evaluating a model of large images (own data at its own size) does not
    take the machine. 128 at 32x32 is 2 at 224x224 and 1 from 256x256 up."""
    height, width = input_size[-2:]
    return max(1, min(base, base * 32 * 32 // (height * width)))


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available(device: torch.device | str = "cpu") -> int:
    """Bytes that can still be allocated on `device` (host: MemAvailable, as `free` says)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class TooLarge(UserError):
    """What the memory cannot hold: a property of these sizes on this machine, not a mistake
    every run would repeat (a sweep fails that trial and goes on)."""


# How allocators that are not Python's say they failed: PyTorch's CPU allocator, onnxruntime's
# arena, a C++ library's bad_alloc.
_ALLOCATION_FAILED = ("can't allocate memory", "Failed to allocate memory", "std::bad_alloc")


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: CUDA's OutOfMemoryError, Python's MemoryError
    or another allocator's error (when a limit such as ulimit -v refuses it; the kernel's OOM
    killer leaves no exception to catch)."""
    import torch

    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return any(words in str(e) for words in _ALLOCATION_FAILED)


def require(need: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse, in one line saying how much is needed and how much there is, what cannot fit."""
    import torch

    have = available(device)
    if need > have:
        where = "this GPU" if torch.device(device).type == "cuda" else "this machine"
        raise TooLarge(f"{what} needs at least {gib(need)} but {where} has {gib(have)} free; {fix}")


def activation_bytes(model: nn.Module, input_size: tuple[int, ...], batch: int) -> int:
    """Bytes of the activations one training step keeps for the backward pass (float32, every
    module's output once), measured by a forward on the meta device: nothing is allocated."""
    import copy

    import torch

    total = 0

    def count(_m: nn.Module, _inp, out) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    meta = copy.deepcopy(model).to("meta").eval()  # eval: BatchNorm takes a batch of one
    meta._forward_pre_hooks.clear()  # a caller's hooks on the model are not this pass's
    hooks = [m.register_forward_hook(count) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty((1, *input_size), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total * 4 * batch


def check_training_step(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch: int,
    device: torch.device,
    data_bytes: int = 0,
) -> None:
    """Refuse a step that cannot fit before the first one tries: activations kept for the
    backward pass, and weights, gradients, momentum and an average (4 copies, float32), plus
    `data_bytes` that live beside them (the data set, on a GPU)."""
    params = sum(p.numel() for p in model.parameters())
    require(
        activation_bytes(model, input_size, batch) + 16 * params + data_bytes,
        f"a training step of {batch:,} images at {input_size[1]}x{input_size[2]}",
        "lower --batch-size",
        device,
    )
