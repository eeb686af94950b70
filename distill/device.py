"""Where a run computes and in what precision: device choice, mixed precision by capability,
seeding and the backend switches that make fixed-shape training fast."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from distill import distributed
from distill.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda -> a torch.device; under torchrun each rank gets cuda:LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.local_rank() if distributed.launched() else 0)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 / AMX: oneDNN runs bf16 convolutions natively (about 1.3x fp32 on a 2-core
    Zen 4 for resnet18-quarter training); elsewhere bf16 on CPU is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of a run (None: float32 throughout) and whether gradients need a scaler
    (fp16's narrow range underflows small gradients; bf16 has float32's range and needs none).
    Weights, optimizer state and losses stay float32 in every case."""

    dtype: torch.dtype | None
    scaler: bool = False

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def choose_precision(device: torch.device, amp: bool) -> Precision:
    """bf16 autocast on GPUs that run bf16 fast (Ampere and later) and on CPUs with native bf16;
    fp16 with a gradient scaler on older GPUs (V100, T4); float32 otherwise."""
    if not amp:
        return Precision(None)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision(torch.bfloat16)
        return Precision(torch.float16, scaler=True)
    return Precision(torch.bfloat16 if cpu_has_native_bf16() else None)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.dtype)


def configure_for_training(device: torch.device) -> None:
    """cuDNN picks the fastest convolution algorithm once per shape: training shapes are fixed,
    so the search pays for itself in the first steps. TF32 matmuls/convs on Ampere and later
    (float32 results with 10-bit mantissa products) only matter where autocast is off."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 arithmetic for the block on CUDA: TF32 off (10-bit products would change logits
    in the third digit) and cuDNN's deterministic kernels without the per-shape search, so an
    accuracy recorded during training equals `distill eval` of the same weights. Training's
    switches (`configure_for_training`) are restored after it. A no-op on the CPU."""
    backends = torch.backends
    saved = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.deterministic,
        backends.cudnn.benchmark,
    )
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
    backends.cudnn.deterministic, backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (
            backends.cuda.matmul.allow_tf32,
            backends.cudnn.allow_tf32,
            backends.cudnn.deterministic,
            backends.cudnn.benchmark,
        ) = saved


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
