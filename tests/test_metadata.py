"""Crafted or damaged metadata: every class of fault is refused with one line naming the field,
the same way by read_metadata, predict and bench (none of them trusts the file)."""

import json

import numpy as np
import onnx
import pytest
from conftest import EXPORT_SIZE, make_checkpoint, one_line_error
from PIL import Image
from typer.testing import CliRunner

from distill.api import export_onnx
from distill.cli import app
from distill.errors import UserError
from export.benchmark import benchmark
from export.metadata import read_metadata
from export.predict import predict
from export.timing import Timing

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = Timing(warmup=0, min_runs=1, max_runs=2, min_seconds=0, block_seconds=0, probe_seconds=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    ckpt = make_checkpoint(root / "m.pt", data={}, classes=["cat", "dog", "ship"])
    path = export_onnx(ckpt).path
    image = root / "x.png"
    Image.fromarray(np.zeros((EXPORT_SIZE, EXPORT_SIZE, 3), np.uint8)).save(image)
    return {"onnx": path, "image": image, "root": root}


def crafted(model, tmp_path, **props) -> str:
    """A copy of the good file with metadata values replaced (raw strings, None removes)."""
    proto = onnx.load(str(model["onnx"]))
    values = {p.key: p.value for p in proto.metadata_props}
    for key, text in props.items():
        if text is None:
            values.pop(key, None)
        else:
            values[key] = text
    del proto.metadata_props[:]
    for key, text in values.items():
        proto.metadata_props.add(key=key, value=text)
    path = tmp_path / "crafted.onnx"
    onnx.save(proto, str(path))
    return str(path)


FAULTS = {
    # field: (raw value, words the refusal must contain)
    "classes too short": ("classes", json.dumps(["cat", "dog"]), "names 2 classes"),
    "classes too long": ("classes", json.dumps(["a", "b", "c", "d"]), "graph returns 3"),
    "classes a number": ("classes", "3", "non-empty JSON list"),
    "classes a dict": ("classes", json.dumps({"0": "cat"}), "non-empty JSON list"),
    "classes not JSON": ("classes", "cat", "not JSON"),
    "classes nested past the parser": ("classes", "[" * 100_000 + "]" * 100_000, "not JSON"),
    "classes not strings": ("classes", "[1, 2, 3]", "non-empty strings"),
    "classes repeated": ("classes", json.dumps(["cat", "cat", "dog"]), "repeats"),
    "classes escape code": ("classes", json.dumps(["cat", "\x1b[2Jdog", "x"]), "control character"),
    "input_size not JSON": ("input_size", "abc", "not JSON"),
    "input_size two numbers": ("input_size", "[32, 32]", "[3, height, width]"),
    "input_size huge floats": ("input_size", "[3, 1e5, 1e5]", "integer"),
    "input_size huge ints": ("input_size", "[3, 100000, 100000]", "out of range"),
    "input_size zero": ("input_size", "[3, 0, 0]", "out of range"),
    "input_size other graph": (
        "input_size",
        f"[3, {EXPORT_SIZE + 1}, {EXPORT_SIZE}]",
        "differs from the graph",
    ),
    "input_size grey": ("input_size", f"[1, {EXPORT_SIZE}, {EXPORT_SIZE}]", "3 (RGB) channels"),
    "input_range": ("input_range", "[0,255]", "not one of [0,1]"),
    "precision": ("precision", "int4", "not one of"),
    "val_accuracy": ("val_accuracy", "7", "between 0 and 1"),
    "std": ("std", "[0.2, 0, 0.2]", "positive"),
    "tta": ("tta", '"yes"', "true or false"),
    "data": ("data", "[1]", "JSON object"),
    "macs": ("macs", "-5", "out of range"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_each_fault_is_refused_naming_the_field(model, tmp_path, fault):
    field, raw, words = FAULTS[fault]
    path = crafted(model, tmp_path, **{field: raw})
    with pytest.raises(UserError) as info:
        read_metadata(path)
    message = str(info.value)
    assert f"metadata {field}" in message and words in message, message
    assert "\n" not in message


@pytest.mark.parametrize("fault", ["classes too short", "input_size huge ints", "classes a dict"])
def test_predict_and_bench_refuse_the_same_way(model, tmp_path, fault):
    field, raw, _ = FAULTS[fault]
    path = crafted(model, tmp_path, **{field: raw})
    with pytest.raises(UserError, match=f"metadata {field}"):
        predict(path, [model["image"]])
    with pytest.raises(UserError, match=f"metadata {field}"):
        benchmark(path, [1], threads=1, timing=FAST, accuracy=False)
    one_line_error(runner.invoke(app, ["predict", path, str(model["image"])]), field)


def test_missing_fields_and_a_foreign_graph(model, tmp_path):
    with pytest.raises(UserError, match="lacks distill metadata \\(classes\\)"):
        read_metadata(crafted(model, tmp_path, classes=None))

    proto = onnx.load(str(model["onnx"]))  # a second output: not what distill export writes
    extra = onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1])
    proto.graph.output.append(extra)
    path = tmp_path / "two.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(UserError, match="2 outputs"):
        read_metadata(path)


def test_unknown_keys_pass_and_good_files_read_back(model, tmp_path):
    meta = read_metadata(crafted(model, tmp_path, note="made by hand"))
    assert meta["note"] == "made by hand" and meta["classes"] == ["cat", "dog", "ship"]
    assert meta["input_size"] == [3, EXPORT_SIZE, EXPORT_SIZE] and meta["tta"] is False
