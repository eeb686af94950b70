"""int8 quantisation of an exported fp32 graph: onnxruntime static QDQ, per-channel int8 weights,
uint8 activations calibrated on training images, the weight range chosen for this CPU.

The whole int8 export (check the fp32 graph, quantise, refuse an accuracy loss) is in onnx.py;
this is the step `bench/onnx_speed.py` also runs on its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from distill.memory import inference_batch
from export.graph import INPUT_NAME
from export.runtime import as_float_batch


class _CalibrationReader(CalibrationDataReader):
    """Feeds calibration batches to onnxruntime's calibrator: one input dict per `get_next()`,
    then None."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.batches = iter(images.split(inference_batch(batch_size, images.shape)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        return {INPUT_NAME: as_float_batch(batch)}


def int8_scheme(reduce_range: bool) -> str:
    """One line for the export output and the metadata: which int8 arithmetic, and why."""
    if reduce_range:
        return (
            "U8S8 with reduce_range (7-bit weights): this CPU has no VNNI, and full-range "
            "uint8 x int8 products can saturate its int16 pair sums"
        )
    return "U8S8, full range (this CPU has VNNI, or is not x86)"


@contextlib.contextmanager
def _temps_inside(folder: Path) -> Iterator[None]:
    """Point `tempfile` at `folder` for the block: onnxruntime's quantiser makes its own temp
    folders (ort.quant.*, pre.quant.*) without our pid in their names; inside our temp folder
    they are removed with it and swept with it if we are killed."""
    old = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = old


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: torch.Tensor,
    *,
    batch_size: int = 64,
    reduce_range: bool | None = None,
) -> None:
    """Static QDQ quantisation: int8 per-channel weights, uint8 activations whose ranges come
    from `calibration` (uint8 [N,3,H,W] training images, never validation ones).

    U8 activations x S8 weights is the pair the x86 kernels run fastest. `reduce_range` (7-bit
    weights) avoids saturation on x86 CPUs without VNNI; None decides for this CPU
    (export.machine.int8_reduce_range).
    """
    from distill.files import temp_dir
    from export.machine import int8_reduce_range

    if reduce_range is None:
        reduce_range = int8_reduce_range()
    reader = _CalibrationReader(calibration, batch_size)
    with temp_dir("int8") as tmp, _temps_inside(tmp):
        # Shape inference + graph clean-up first, as onnxruntime recommends before quantising.
        pre = tmp / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        quantize_static(
            str(pre),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
