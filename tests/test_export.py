"""ONNX export: round trip, metadata, parity at odd batch sizes, int8, fp16, refusals, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import EXPORT_SIZE, make_checkpoint, one_line_error, write_colour_noise_folder
from typer.testing import CliRunner

from distill.api import export_onnx
from distill.budget import count_macs
from distill.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
)
from distill.cli import app
from distill.errors import UserError
from distill.files import file_sha256
from distill.registry import create_model
from export.checks import ParityError, check_parity, load_check_images
from export.graph import OPSET
from export.metadata import read_metadata
from export.quantize import quantize_int8
from export.runtime import make_session, run_logits
from export.wrappers import Normalized

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18-quarter trained for a few steps on a colour image folder, saved with the data
    record training writes, so export finds its validation and calibration images."""
    from distill.data import DataSettings, load_data

    root = tmp_path_factory.mktemp("export")
    cache = root / "cache"
    folder = write_colour_noise_folder(root / "images", per_class=24, size=EXPORT_SIZE)
    ds = load_data(DataSettings(str(folder), cache_dir=cache, val_size=32, image_size=EXPORT_SIZE))
    torch.manual_seed(0)
    model = create_model("resnet18-quarter", len(ds.classes))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    x = (ds.train.images.float() / 255 - mean) / std
    model.train()
    for step in range(12):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:48]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), ds.train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = make_checkpoint(
        root / "m.pt",
        data=ds.info,
        classes=ds.classes,
        model=model,
        mean=list(ds.mean),
        std=list(ds.std),
    )
    return {"ckpt": ckpt, "cache": cache, "dataset": ds, "root": root}


@pytest.fixture(scope="module")
def exported(trained):
    """The CLI's export, which the library tests below read back."""
    out = trained["root"] / "out" / "m.onnx"
    args = ["export", "onnx", str(trained["ckpt"]), "-o", str(out)]
    result = runner.invoke(app, [*args, "--cache-dir", str(trained["cache"])])
    assert result.exit_code == 0, result.output
    return {"path": out, "output": result.output, "args": args}


def test_round_trip_checker_metadata_and_parity(trained, exported):
    path = exported["path"]
    assert sorted(os.listdir(path.parent)) == ["m.onnx"]  # one self-contained file, no temp left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == OPSET
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, EXPORT_SIZE, EXPORT_SIZE]
    raw = {p.key: p.value for p in model.metadata_props}
    assert raw["input_range"] == "[0,1]" and raw["input_layout"] == "NCHW"
    assert json.loads(raw["classes"]) == list(trained["dataset"].classes)

    meta = read_metadata(path)
    ds = trained["dataset"]
    assert meta["classes"] == list(ds.classes)
    assert meta["mean"] == pytest.approx(list(ds.mean)) and meta["std"] == pytest.approx(ds.std)
    assert meta["input_size"] == [3, EXPORT_SIZE, EXPORT_SIZE] and meta["precision"] == "fp32"
    assert meta["arch"] == "resnet18-quarter" and meta["params"] > 100_000
    assert meta["source_sha256"] == file_sha256(trained["ckpt"])
    assert meta["source_val_accuracy"] == pytest.approx(0.75)  # the checkpoint's record
    # val_accuracy is the file's own, measured on the validation split at export.
    logits = run_logits(make_session(path), ds.val.images)
    assert meta["val_accuracy"] == pytest.approx(
        float((logits.argmax(1) == ds.val.labels.numpy()).mean())
    )
    assert meta["val_images"] == len(ds.val) == 32
    model_ = model_from_checkpoint(load_checkpoint(trained["ckpt"]))
    assert meta["macs"] == count_macs(model_, (3, EXPORT_SIZE, EXPORT_SIZE))
    assert meta["tta"] is False
    assert meta["data"] == {
        k: ds.info[k] for k in ("source", "val_size", "split_seed", "train_size")
    }

    out = exported["output"]
    assert "parity vs PyTorch on 32 validation images" in out and "agreement 100.00%" in out


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_matches_pytorch(trained, exported, batch):
    ckpt = load_checkpoint(trained["ckpt"])
    reference = Normalized(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"])
    images = trained["dataset"].val.images[: 2 * batch + 1]  # odd count: a short last batch
    parity = check_parity(exported["path"], reference, images, batch_size=batch)
    assert parity.images == len(images)
    assert parity.max_abs_diff < 1e-4 * max(1, parity.logit_scale)
    assert parity.top1_agreement == 1.0


def test_int8_stays_close_and_is_smaller(trained, exported):
    out = trained["root"] / "out8" / "m.int8.onnx"
    report = export_onnx(trained["ckpt"], out, int8=True, cache_dir=trained["cache"])
    assert report.precision == "int8" and out.is_file()
    assert report.size_bytes < 0.5 * report.fp32_size_bytes
    assert report.fp32_accuracy > 0.9  # the colours were learnt
    assert report.accuracy >= report.fp32_accuracy - 0.05
    assert report.parity.top1_agreement >= 0.9
    meta = read_metadata(out)
    assert meta["precision"] == "int8" and meta["val_accuracy"] == pytest.approx(report.accuracy)
    assert meta["fp32_val_accuracy"] == pytest.approx(report.fp32_accuracy)
    assert meta["int8_scheme"] == report.int8_scheme and "U8S8" in report.int8_scheme
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_calibrates_on_as_many_images_as_the_memory_holds(trained, exported, monkeypatch):
    # onnxruntime keeps every activation of every calibration image: for a model of large
    # images 512 of them would take the machine. Fewer, recorded, down to a floor; below it, a
    # refusal before any calibration.
    import distill.memory
    from export.footprint import all_elements_per_image
    from export.onnx import MIN_CALIBRATION_IMAGES, calibration_images

    graph = exported["path"]
    per_image = 4 * all_elements_per_image(graph)
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2 * 40 * per_image)
    assert calibration_images(graph) == 40
    out = trained["root"] / "out8-few" / "m.int8.onnx"
    export_onnx(trained["ckpt"], out, int8=True, cache_dir=trained["cache"])
    assert read_metadata(out)["calibration_images"] == min(40, len(trained["dataset"].train.labels))
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": per_image)
    with pytest.raises(UserError, match=f"int8 calibration on {MIN_CALIBRATION_IMAGES} images"):
        calibration_images(graph)


def test_quantize_int8_on_plain_tensors(trained, exported, tmp_path):
    ds = trained["dataset"]
    quantize_int8(
        exported["path"],
        tmp_path / "q.onnx",
        ds.train.images[:32],
        batch_size=16,
        reduce_range=True,
    )
    fp32 = run_logits(make_session(exported["path"]), ds.val.images)
    int8 = run_logits(make_session(tmp_path / "q.onnx"), ds.val.images)
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.9


def test_fp16_keeps_float32_io(trained, exported, tmp_path):
    report = export_onnx(
        trained["ckpt"], tmp_path / "h.onnx", fp16=True, cache_dir=trained["cache"]
    )
    model = onnx.load(str(report.path))
    float32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert model.graph.output[0].type.tensor_type.elem_type == float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert report.parity.top1_agreement >= 0.99
    assert report.metadata["precision"] == "fp16"
    assert report.size_bytes < 0.6 * os.path.getsize(exported["path"])


def test_without_data_random_images_stand_in_and_int8_refuses(tmp_path):
    ckpt = make_checkpoint(tmp_path / "r.pt", data={}, classes="abc")
    images = load_check_images(load_checkpoint(ckpt))
    assert not images.real and "RANDOM" in images.description and images.train_images is None
    with pytest.raises(UserError, match="int8 calibration needs"):
        export_onnx(ckpt, int8=True)
    with pytest.raises(UserError, match="does not exist"):  # a --data the user names must load
        export_onnx(ckpt, data=str(tmp_path / "nowhere"))
    assert sorted(os.listdir(tmp_path)) == ["r.pt"]


def test_a_disagreeing_graph_is_never_written(trained, exported, tmp_path, monkeypatch):
    import export.onnx as mod

    def broken(module, input_size, path):  # the right graph with one weight off
        model = onnx.load(str(exported["path"]))
        weight = max(model.graph.initializer, key=lambda t: t.dims[0] if t.dims else 0)
        values = onnx.numpy_helper.to_array(weight) * 1.5
        weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(mod, "export_graph", broken)
    with pytest.raises(ParityError, match="disagrees"):
        export_onnx(trained["ckpt"], tmp_path / "bad.onnx", cache_dir=trained["cache"])
    assert os.listdir(tmp_path) == []  # neither the output nor a temp file


def test_cli_refuses_overwrite_and_non_checkpoints(trained, exported, tmp_path):
    out = exported["path"]
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    one_line_error(runner.invoke(app, exported["args"]), "already exists", "--force")
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before

    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    one_line_error(runner.invoke(app, ["export", "onnx", str(junk)]), "junk.pt")
    assert not (tmp_path / "junk.onnx").exists()

    both = runner.invoke(app, ["export", "onnx", str(trained["ckpt"]), "--int8", "--fp16"])
    one_line_error(both, "one of them")


def test_python_dash_m_export_is_the_same_app():
    env = {**os.environ, "COLUMNS": "120"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "export", "onnx", "--help"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "python -m export onnx" in result.stdout and "--int8" in result.stdout


def test_eval_of_an_onnx_file_decodes_images_at_the_models_own_size(trained, exported, tmp_path):
    """Images twice the model's side: the graph's height and width are fixed, so decoding them
    at their own size (also the data's default, 32) would fail in onnxruntime."""
    folder = write_colour_noise_folder(tmp_path / "big", per_class=12, size=2 * EXPORT_SIZE, seed=1)
    data = ["--data", str(folder), "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["eval", str(exported["path"]), *data, "--json"])
    assert result.exit_code == 0, result.output
    assert (
        f"centre-cropped to {EXPORT_SIZE}x{EXPORT_SIZE}" in result.stderr
    )  # the decode says it too
    said = json.loads(result.stdout)
    assert said["input_size"] == [3, EXPORT_SIZE, EXPORT_SIZE] and said["count"] == 32
    assert said["accuracy"] > 0.5  # the colours are still learned ones at the model's size
    table = runner.invoke(app, ["eval", str(exported["path"]), *data])
    assert f"32 images at {EXPORT_SIZE}x{EXPORT_SIZE}" in table.output, table.output


def test_metadata_rebuilds_the_same_validation_split(trained, exported):
    meta = read_metadata(exported["path"])
    images = load_check_images(meta, cache_dir=trained["cache"])  # no --data: the file knows
    assert images.real and torch.equal(images.val_images, trained["dataset"].val.images)


def test_tta_bakes_the_flip_average_into_the_graph(trained, exported, tmp_path):
    report = export_onnx(trained["ckpt"], tmp_path / "t.onnx", tta=True, cache_dir=trained["cache"])
    assert report.tta and report.metadata["tta"] is True
    assert report.metadata["macs"] == 2 * read_metadata(exported["path"])["macs"]
    assert report.parity.top1_agreement == 1.0  # against FlipAverage(Normalized(model))
    images = trained["dataset"].val.images[:5]
    plain = make_session(exported["path"])
    want = (run_logits(plain, images) + run_logits(plain, images.flip(3))) / 2
    got = run_logits(make_session(report.path), images)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())


def test_int8_that_loses_too_much_is_refused_unless_allowed(
    trained, exported, tmp_path, monkeypatch
):
    """A quantiser whose graph answers class 0 for everything: accuracy falls to 1/4."""
    import export.onnx as mod

    seen = {}

    def constant(fp32_path, out_path, calibration, *, batch_size=64, reduce_range=None):
        seen["reduce_range"] = reduce_range
        model = onnx.load(str(fp32_path))
        for init in model.graph.initializer:
            values = onnx.numpy_helper.to_array(init)
            if values.ndim == 2:  # the classifier's weight: zero it, answers become the bias
                init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(values), init.name))
            elif values.ndim == 1 and values.shape[0] == 4:
                init.CopyFrom(
                    onnx.numpy_helper.from_array(np.array([1, 0, 0, 0], values.dtype), init.name)
                )
        onnx.save(model, str(out_path))

    monkeypatch.setattr(mod, "quantize_int8", constant)
    out = tmp_path / "q" / "m.int8.onnx"
    kw = dict(int8=True, cache_dir=trained["cache"], reduce_range=True)
    with pytest.raises(ParityError, match="loses too much accuracy.*--int8-max-drop"):
        export_onnx(trained["ckpt"], out, **kw)
    assert not out.exists() and os.listdir(out.parent) == []
    report = export_onnx(trained["ckpt"], out, int8_max_drop=1.0, **kw)
    assert report.accuracy == pytest.approx(0.25) and report.fp32_accuracy > 0.9
    assert seen["reduce_range"] is True and "reduce_range" in report.metadata["int8_scheme"]

    bad = runner.invoke(app, ["export", "onnx", str(trained["ckpt"]), "--int8-max-drop", "5"])
    one_line_error(bad, "--int8-max-drop must be between 0 and 1")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_sweeps_temps_of_dead_exports(trained, tmp_path, monkeypatch):
    import tempfile

    system_tmp = tmp_path / "systmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    pid = dead_pid()
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    stale_file = out.parent / f".m.int8.onnx.{pid}.0123abcd.tmp"
    stale_file.write_bytes(b"half a model")
    stale_dir = system_tmp / f"distill-int8-{pid}-xyz"
    (stale_dir / "ort.quant.abc").mkdir(parents=True)
    mine = out.parent / f".other.onnx.{os.getpid()}.0123abcd.tmp"  # a live process's: kept
    mine.write_bytes(b"in use")
    export_onnx(trained["ckpt"], out, cache_dir=trained["cache"])
    assert sorted(os.listdir(out.parent)) == sorted(["m.onnx", mine.name])
    assert os.listdir(system_tmp) == []


CHILD = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as the CLI does: an exception
import torch
torch.set_num_threads(1)
from distill.api import export_onnx
export_onnx(sys.argv[1], sys.argv[2], int8=True, cache_dir=sys.argv[3])
"""


def test_sigterm_mid_int8_export_leaves_no_temp(trained, tmp_path):
    import signal
    import time

    system_tmp, out = tmp_path / "systmp", tmp_path / "out" / "m.int8.onnx"
    system_tmp.mkdir()
    out.parent.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TMPDIR": str(system_tmp), "PYTHONPATH": str(root)}
    args = [sys.executable, "-c", CHILD, str(trained["ckpt"]), str(out), str(trained["cache"])]
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not any(p.name.startswith("distill-int8-") for p in system_tmp.iterdir()):
        assert child.poll() is None, child.stderr.read()
        assert time.monotonic() < deadline, "the export never reached quantisation"
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)  # mid-quantisation: temp files in both places
    assert child.wait(timeout=60) == 143
    assert os.listdir(out.parent) == []
    # Persistent caches of onnxruntime (.ses, a session id) and torch are not temp files.
    left = [n for n in os.listdir(system_tmp) if n != ".ses" and not n.startswith("torchinductor")]
    assert left == []


def test_the_same_weights_are_exported_once_per_process(tmp_path, monkeypatch):
    import export.graph as graph

    calls = []
    real = graph._export
    monkeypatch.setattr(graph, "_export", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(graph, "_RECENT", type(graph._RECENT)())

    class Small(torch.nn.Module):  # what is tested is when the exporter runs, not its output
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4)

        def forward(self, x):  # `x`: the name the graph's dynamic batch axis is declared on
            return self.fc(self.conv(x).mean((2, 3)))

    model = Small().eval()
    graph.export_graph(model, [3, EXPORT_SIZE, EXPORT_SIZE], tmp_path / "a.onnx")
    graph.export_graph(model, [3, EXPORT_SIZE, EXPORT_SIZE], tmp_path / "b.onnx")
    assert len(calls) == 1
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with torch.no_grad():  # one weight changed, or another input size: a new graph
        model.fc.bias[0] += 1
    graph.export_graph(model, [3, EXPORT_SIZE, EXPORT_SIZE], tmp_path / "c.onnx")
    graph.export_graph(model, [3, 2 * EXPORT_SIZE, 2 * EXPORT_SIZE], tmp_path / "d.onnx")
    assert len(calls) == 3
