"""The metadata an exported file carries (SPEC 7), written once and checked by every reader.

Values are strings in the ONNX file (metadata_props); structured ones are JSON. A file can be
crafted or damaged, so nothing read back is trusted: `read_metadata` checks every field it knows
against its type, its range and the graph's real input and output shapes, and refuses a bad one
with one line naming the field. Predict, bench, eval and the report all read through it, so a
field that would crash one of them (a class list of the wrong length, an input size of "abc" or
of 100000x100000) is refused the same way everywhere.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from distill.errors import UserError, control_characters
from distill.files import loads_json, not_a_file
from distill.memory import MAX_CLASSES

PRECISIONS = ("fp32", "fp16", "int8")
REQUIRED = ("classes", "input_size", "input_range")
INPUT_RANGE = "[0,1]"
# The largest side an input may have. The graph's own sizes win where it has them; this bounds
# a graph with symbolic height/width, whose metadata would otherwise size every input buffer
# (a [3,1e5,1e5] batch is 120 GB).
MAX_SIDE = 4096

# Metadata values stored as JSON (the rest are plain strings). `input_range` reads "[0,1]" by
# spec and stays a string.
JSON_KEYS = frozenset(
    {
        "classes",
        "mean",
        "std",
        "input_size",
        "params",
        "macs",
        "val_accuracy",
        "val_images",
        "source_val_accuracy",
        "fp32_val_accuracy",
        "opset",
        "calibration_images",
        "tta",
        "data",
    }
)


def write_metadata(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Set metadata_props (strings; JSON for structured values) and run the full checker."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in values.items():
        text = json.dumps(value) if key in JSON_KEYS else str(value)
        model.metadata_props.add(key=key, value=text)
    model.doc_string = f"distill export of {values.get('arch', '?')}; inputs [0,1] NCHW RGB"
    onnx.save(model, str(path))
    # full_check adds strict shape inference on top of the structural checks.
    onnx.checker.check_model(str(path), full_check=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checked distill metadata of an exported file; anything wrong is a UserError."""
    path = Path(path)
    if why := not_a_file(path):
        raise UserError(f"{path} {why}; pass an .onnx file written by distill export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf decode errors
        raise UserError(
            f"{path} is not an ONNX file; pass an .onnx file written by distill export"
        ) from None
    return validate_metadata(path, {p.key: p.value for p in model.metadata_props}, model.graph)


# ---------------------------------------------------------------------------------------------
# Checks


class _Bad(ValueError):
    """One field's problem, phrased to follow "metadata <field> "."""


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """A graph input's or output's dimensions; None where symbolic (the batch axis)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def validate_metadata(path: Path, props: dict[str, str], graph: onnx.GraphProto) -> dict[str, Any]:
    """Decode and check every known field of `props` against the graph; return the values.

    The graph must take one float32 [N, 3, H, W] input and return float32 [N, classes] logits
    (what distill export writes); `classes` must name every output, `input_size` must be the
    input's [3, H, W]. Unknown keys pass through as strings (other tools may add their own).
    """

    def refuse(what: str) -> UserError:
        return UserError(
            f"{path}: {what}; re-export it with `distill export onnx MODEL.pt` "
            "(this file was not written by distill export, or was changed since)"
        )

    missing = [k for k in REQUIRED if k not in props]
    if missing:
        raise UserError(
            f"{path} lacks distill metadata ({', '.join(missing)}); export it with "
            "`distill export onnx MODEL.pt`"
        )
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise refuse(f"the graph has {len(inputs)} inputs and {len(graph.output)} outputs, not 1+1")
    float32 = onnx.TensorProto.FLOAT
    in_dims, out_dims = _dims(inputs[0]), _dims(graph.output[0])
    if inputs[0].type.tensor_type.elem_type != float32 or len(in_dims) != 4:
        raise refuse(f"the graph's input is not float32 [N,C,H,W] (it has {len(in_dims)} dims)")
    if graph.output[0].type.tensor_type.elem_type != float32 or len(out_dims) != 2:
        raise refuse(f"the graph's output is not float32 [N,classes] (it has {len(out_dims)} dims)")

    meta: dict[str, Any] = {}
    for key, text in props.items():
        check = _CHECKS.get(key)
        if check is None:
            meta[key] = text
            continue
        try:
            value = loads_json(text) if key in JSON_KEYS else text
        except ValueError:
            raise refuse(f"metadata {key} is not JSON ({text[:40]!r})") from None
        try:
            meta[key] = check(value)
        except _Bad as e:
            raise refuse(f"metadata {key} {e}") from None

    try:
        _against_graph(meta, in_dims, out_dims)
    except _Bad as e:
        raise refuse(str(e)) from None
    return meta


def _against_graph(meta: dict[str, Any], in_dims: list, out_dims: list) -> None:
    size, classes = meta["input_size"], meta["classes"]
    graph_size = in_dims[1:]
    if any(g is not None and g != s for g, s in zip(graph_size, size, strict=True)):
        shown = ["?" if g is None else g for g in graph_size]
        raise _Bad(f"metadata input_size {size} differs from the graph's input {shown}")
    if out_dims[1] is not None and out_dims[1] != len(classes):
        raise _Bad(
            f"metadata classes names {len(classes)} classes, the graph returns {out_dims[1]}"
        )


def _int(value: Any, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"should be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        raise _Bad(f"{value} is out of range ({low}..{high if high is not None else ''})")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"should be a finite number, not {value!r}")
    return float(value)


def _classes(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _Bad("should be a non-empty JSON list of class names")
    if len(value) > MAX_CLASSES or not all(isinstance(c, str) and c for c in value):
        raise _Bad("should list class names as non-empty strings")
    named = next((c for c in value if control_characters(c)), None)
    if named is not None:
        raise _Bad(f"names class {named!r}, which holds a control character")
    if len(set(value)) != len(value):
        raise _Bad("repeats a class name, so a prediction's name would be ambiguous")
    return value


def _input_size(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) != 3:
        raise _Bad(f"should be [3, height, width], not {value!r}")
    channels, height, width = (_int(v, 1, MAX_SIDE) for v in value)
    if channels != 3:
        raise _Bad(f"should have 3 (RGB) channels, not {channels}")
    return [channels, height, width]


def _triple(value: Any) -> list[float]:
    if not isinstance(value, list) or len(value) != 3:
        raise _Bad("should be a list of 3 numbers (one per RGB channel)")
    return [_number(v) for v in value]


def _std(value: Any) -> list[float]:
    out = _triple(value)
    if min(out) <= 0:
        raise _Bad("should be positive")
    return out


def _fraction(value: Any) -> float | None:
    if value is None:
        return None
    out = _number(value)
    if not 0 <= out <= 1:
        raise _Bad(f"{out} is not an accuracy between 0 and 1")
    return out


def _one_of(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise _Bad(f"is {value!r}, not one of {', '.join(allowed)}")
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"should be true or false, not {value!r}")
    return value


def _data(value: Any) -> dict[str, Any]:
    """The checkpoint's data record: enough to rebuild the same validation split."""
    if not isinstance(value, dict):
        raise _Bad("should be a JSON object {source, val_size, split_seed, train_size}")
    out = dict(value)
    if "source" in out and not (isinstance(out["source"], str) and out["source"]):
        raise _Bad("source should be a non-empty string")
    for key in ("val_size", "split_seed", "train_size"):
        if out.get(key) is not None:
            _int(out[key])
    return out


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "classes": _classes,
    "input_size": _input_size,
    "input_range": _one_of(INPUT_RANGE),
    "input_layout": _one_of("NCHW"),
    "mean": _triple,
    "std": _std,
    "precision": _one_of(*PRECISIONS),
    "params": lambda v: _int(v, 1),
    "macs": lambda v: _int(v, 1),
    "opset": lambda v: _int(v, 1),
    "calibration_images": _int,
    "val_images": _int,
    "val_accuracy": _fraction,
    "source_val_accuracy": _fraction,
    "fp32_val_accuracy": _fraction,
    "tta": _flag,
    "data": _data,
}
