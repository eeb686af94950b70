"""`distill bench`: every engine side by side in one record, with accuracy, GFLOP/s, load and noise
flags, the summary, and the output rule for its JSON. Numbers are not asserted (the lead measures
on a quiet machine); a few short runs keep this fast. OpenVINO rows appear where it is installed.
"""

import itertools
import json
import shutil
import time

import pytest
import torch
from conftest import EXPORT_SIZE, make_checkpoint, one_line_error, write_colour_noise_folder
from typer.testing import CliRunner

import export.engines as engines
from distill.api import export_onnx
from distill.cli import app
from distill.errors import UserError
from export.benchmark import benchmark
from export.engines import openvino_available, parse_engines
from export.machine import has_native_bf16
from export.record import check_bench_output, result_row, summarize, write_bench_record
from export.timing import Timing, measure

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = Timing(
    warmup=1, min_runs=3, max_runs=20, min_seconds=0.0, block_seconds=0.0, probe_seconds=0.0
)
ROW_KEYS = {
    "engine",
    "precision",
    "batch_size",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "images_per_s",
    "runs",
    "noisy",
    "val_accuracy",
    "gflops",
}


def cpu_engines(int8: bool = False, pytorch: bool = True) -> set[tuple[str, str]]:
    """The (engine, precision) rows a CPU bench of this machine has."""
    rows = {("onnxruntime", "fp32")} | ({("onnxruntime", "int8")} if int8 else set())
    if pytorch:
        rows |= {("pytorch", "fp32")} | ({("pytorch", "bf16")} if has_native_bf16() else set())
    if openvino_available():
        rows |= {("openvino", "default")} | ({("openvino", "int8")} if int8 else set())
        rows |= {("openvino", "fp32")} if has_native_bf16() else set()  # else the default is f32
    return rows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random-init model without data on hand: no accuracy, no int8."""
    root = tmp_path_factory.mktemp("bench")
    ckpt = make_checkpoint(root / "m.pt", data={}, classes="abcd")
    return {"ckpt": ckpt, "onnx": export_onnx(ckpt).path}


@pytest.fixture(scope="module")
def with_data(tmp_path_factory):
    """A model whose data is on hand, exported in fp32 and int8 side by side."""
    from distill.data import DataSettings, load_data

    root = tmp_path_factory.mktemp("bench-data")
    cache = root / "cache"
    folder = write_colour_noise_folder(root / "images", per_class=12, size=EXPORT_SIZE)
    ds = load_data(DataSettings(str(folder), cache_dir=cache, val_size=16, image_size=EXPORT_SIZE))
    ckpt = make_checkpoint(
        root / "m.pt", data=ds.info, classes=ds.classes, mean=list(ds.mean), std=list(ds.std)
    )
    fp32 = export_onnx(ckpt, cache_dir=cache).path
    # Untrained, so int8 may lose anything: the drop limit is not what is tested here.
    int8 = export_onnx(ckpt, int8=True, cache_dir=cache, int8_max_drop=1.0).path
    return {"ckpt": ckpt, "onnx": fp32, "int8": int8, "cache": cache, "root": root}


def check_record(record, batch_sizes, engines):
    rows = {(r["engine"], r["precision"], r["batch_size"]) for r in record["results"]}
    assert rows == {(e, p, b) for e, p in engines for b in batch_sizes}
    for r in record["results"]:
        assert set(r) >= ROW_KEYS
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["images_per_s"] > 0 and r["runs"] >= FAST.min_runs
        assert r["p99_over_p50"] >= 1 and isinstance(r["noisy"], bool)
        assert r["gflops"] > 0  # MACs from the metadata (or the checkpoint) x images/s
    env = record["environment"]
    assert env["provider"] == "CPUExecutionProvider" and env["threads"] == 1
    assert env["cpu"] and {"onnxruntime", "torch", "onnx"} <= set(env["versions"])
    assert env["peak_gflops"]["fp32"] > 0 and env["onnxruntime_session"]["allow_spinning"] == "0"
    assert record["timing"]["onnxruntime_spinning"].startswith("off")
    assert {"model", "environment", "results", "speedup", "summary", "note"} <= set(record)
    assert {"path", "arch", "precision", "input_size", "onnx_bytes", "checkpoint"} <= set(
        record["model"]
    )
    if ("pytorch", "fp32") in engines:
        assert set(record["speedup"]) == {str(b) for b in batch_sizes}
        assert all(v > 0 for v in record["speedup"].values())
    json.dumps(record)  # JSON-ready as returned


def test_checkpoint_is_exported_and_compared_with_pytorch(model):
    record = benchmark(model["ckpt"], [1, 3], threads=1, timing=FAST)
    check_record(record, [1, 3], cpu_engines())
    assert record["model"]["precision"] == "fp32" and record["model"]["macs"] > 0
    assert "accuracy not measured" in record["note"]
    assert all(r["val_accuracy"] is None for r in record["results"])
    assert record["summary"]["basis"].startswith("accuracy not measured")


def test_onnx_finds_its_checkpoint_beside_it_or_says_why_not(model, tmp_path):
    beside = benchmark(model["onnx"], [2], threads=1, timing=FAST, engines="pytorch,ort")
    check_record(beside, [2], cpu_engines() - {("openvino", p) for p in ("default", "fp32")})
    assert beside["model"]["checkpoint"] == str(model["ckpt"])

    moved = shutil.copy(model["onnx"], tmp_path / "moved.onnx")
    alone = benchmark(moved, [2], threads=1, timing=FAST, engines="onnxruntime")
    check_record(alone, [2], {("onnxruntime", "fp32")})
    assert "no PyTorch baseline" in alone["note"] and alone["speedup"] == {}
    explicit = benchmark(
        moved, [2], threads=1, checkpoint=model["ckpt"], timing=FAST, engines="pytorch,ort"
    )
    assert {r["engine"] for r in explicit["results"]} == {"pytorch", "onnxruntime"}


def test_int8_sibling_accuracy_and_summary(with_data):
    record = benchmark(
        with_data["onnx"], [1, 2], threads=1, timing=FAST, cache_dir=with_data["cache"]
    )
    check_record(record, [1, 2], cpu_engines(int8=True))
    assert record["model"]["files"]["int8"] == str(with_data["int8"])
    assert record["accuracy"]["images"] == 16
    by = {(r["engine"], r["precision"]): r["val_accuracy"] for r in record["results"]}
    assert all(0 <= v <= 1 for v in by.values())
    assert by["onnxruntime", "fp32"] == by["pytorch", "fp32"]  # the same arithmetic, checked
    summary = record["summary"]
    assert summary["reference_accuracy"] == by["pytorch", "fp32"]
    for bs, best in summary["by_batch_size"].items():
        assert best["val_accuracy"] >= summary["reference_accuracy"] - 0.005
        rows = [r for r in record["results"] if str(r["batch_size"]) == bs]
        fast = [r for r in rows if r["val_accuracy"] >= summary["reference_accuracy"] - 0.005]
        assert best["p50_ms"] == min(r["p50_ms"] for r in fast)

    # The int8 file benchmarked itself finds its fp32 sibling too.
    from_int8 = benchmark(
        with_data["int8"], [1], threads=1, timing=FAST, engines="ort", accuracy=False
    )
    assert {r["precision"] for r in from_int8["results"]} == {"fp32", "int8"}
    assert from_int8["model"]["precision"] == "int8"


def test_a_sibling_from_another_checkpoint_is_skipped(with_data, tmp_path):
    shutil.copy(with_data["onnx"], tmp_path / "m.onnx")
    other = make_checkpoint(tmp_path / "other.pt", data={}, classes="abcd")
    shutil.copy(export_onnx(other).path, tmp_path / "m.int8.onnx")  # an fp32 file, wrong source
    record = benchmark(
        tmp_path / "m.onnx", [1], threads=1, timing=FAST, engines="ort", accuracy=False
    )
    assert {r["precision"] for r in record["results"]} == {"fp32"}
    assert "skipped m.int8.onnx" in record["note"]


def test_openvino_rows_label_their_real_precision(with_data):
    pytest.importorskip("openvino")
    record = benchmark(
        with_data["onnx"], [1], threads=1, timing=FAST, engines="openvino", accuracy=False
    )
    rows = {r["precision"]: r for r in record["results"]}
    assert rows["default"]["arithmetic"] == ("bf16" if has_native_bf16() else "fp32")
    assert rows["int8"]["arithmetic"] == "int8" and rows["int8"]["peak_gflops"] is None
    assert "openvino" in record["environment"]["versions"]
    details = [e["detail"] for e in record["environment"]["engines"]]
    assert any("INFERENCE_PRECISION_HINT f32" in d for d in details) or not has_native_bf16()


def test_noisy_rows_are_marked(monkeypatch):
    from export.engines import Engine

    e = Engine("onnxruntime", "fp32", "fp32", "cpu", "", lambda x: x, lambda x: lambda: None)
    steady = [0.001] * 99 + [0.0011]
    meta, peaks = {"macs": 1_000_000}, {"fp32": 100.0}
    row = result_row(e, 1, steady, 0.5, 0.6, 2, {}, meta, peaks)
    assert not row["noisy"] and row["noisy_why"] is None
    assert row["gflops"] == pytest.approx(2 * 1e6 * row["images_per_s"] / 1e9, abs=0.01)
    tail = result_row(e, 1, [0.001] * 95 + [0.005] * 5, 0.5, 0.6, 2, {}, meta, peaks)
    assert tail["noisy"] and "p99/p50" in tail["noisy_why"]
    busy = result_row(e, 1, steady, 1.0, 3.5, 2, {}, meta, peaks)
    assert busy["noisy"] and "load 3.50 > 2" in busy["noisy_why"]
    held = result_row(e, 1, steady, 3.4, 3.4, 2, {}, meta, peaks)  # another job all along
    assert held["noisy"]
    # Falling from a training run that had just ended: the past, not contention now.
    fading = result_row(e, 1, steady, 2.6, 2.2, 2, {}, meta, peaks)
    assert not fading["noisy"]


def test_summary_picks_the_fastest_within_half_a_point():
    def row(engine, precision, p50, acc, bs=1):
        arith = "int8" if precision == "int8" else "fp32"
        return {
            "engine": engine,
            "precision": precision,
            "arithmetic": arith,
            "batch_size": bs,
            "p50_ms": p50,
            "images_per_s": bs / p50 * 1e3,
            "val_accuracy": acc,
            "noisy": False,
        }

    rows = [
        row("pytorch", "fp32", 10.0, 0.900),
        row("onnxruntime", "fp32", 4.0, 0.900),
        row("onnxruntime", "int8", 1.0, 0.890),  # fastest, but 1 point down
        row("openvino", "int8", 2.0, 0.896),  # 0.4 points down: within
    ]
    best = summarize(rows)["by_batch_size"]["1"]
    assert (best["engine"], best["precision"]) == ("openvino", "int8")
    assert best["speedup_vs_pytorch_fp32"] == pytest.approx(5.0)
    no_acc = summarize([{**r, "val_accuracy": None} for r in rows])
    assert no_acc["by_batch_size"]["1"]["engine"] == "onnxruntime"  # the fastest fp32 row
    assert no_acc["basis"].startswith("accuracy not measured")


def test_engine_names(monkeypatch):
    assert parse_engines("ort, pytorch") == ["onnxruntime", "pytorch"]
    with pytest.raises(UserError, match="unknown engine 'tensorrt'"):
        parse_engines("tensorrt")
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert "openvino" not in parse_engines(None)
    with pytest.raises(UserError, match=r"distill\[openvino\]"):
        parse_engines("openvino")


def test_bench_record_follows_the_output_rule(tmp_path):
    record = {"model": {}, "results": []}
    with pytest.raises(UserError, match="should end in .json"):
        check_bench_output(tmp_path / "b.txt")
    out = write_bench_record(record, tmp_path / "sub" / "b.json")
    assert json.loads(out.read_text()) == record
    with pytest.raises(UserError, match="already exists"):
        check_bench_output(out)
    with pytest.raises(UserError, match="already exists"):
        write_bench_record({"other": 1}, out)
    assert json.loads(out.read_text()) == record
    write_bench_record({"other": 1}, out, force=True)
    assert json.loads(out.read_text()) == {"other": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.json"]  # no temp left


def test_measure_warms_up_then_alternates_blocks():
    calls = []

    def runner(name, seconds=0.0):
        def run():
            calls.append(name)
            time.sleep(seconds)

        return run

    # Runs longer than a block: no wake-up run, one timed run per block.
    timing = Timing(warmup=2, min_runs=3, min_seconds=0.0, block_seconds=0.0)
    times = measure({"a": runner("a"), "b": runner("b")}, timing)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3]

    # Short runs: each block opens with an untimed wake-up run, then runs for block_seconds.
    calls.clear()
    timing = Timing(warmup=1, min_runs=3, min_seconds=0.0, block_seconds=0.01)
    times = measure({"a": runner("a", 0.002), "b": runner("b", 0.002)}, timing)
    blocks = [len(list(g)) for _, g in itertools.groupby(calls)][2:]  # after the warm-ups
    assert len(blocks) % 2 == 0 and min(blocks) >= 3
    assert len(times["a"]) + len(times["b"]) == sum(blocks) - len(blocks)

    # max_runs caps every engine exactly, however long min_seconds asks for.
    timing = Timing(warmup=1, min_runs=3, max_runs=5, min_seconds=60.0, block_seconds=0.001)
    times = measure({"a": runner("a"), "b": runner("b", 0.001)}, timing)
    assert [len(t) for t in times.values()] == [5, 5]


def test_cli_prints_table_and_writes_json(model, tmp_path):
    out = tmp_path / "b.json"
    args = ["bench", str(model["onnx"]), "--batch-sizes", "1,2", "--threads", "1"]
    result = runner.invoke(app, [*args, "--seconds", "0.05", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "x PyTorch eager fp32" in result.output
    assert "spinning off" in result.output
    assert "…" not in result.output  # not a terminal: the table's cells are not cut to 80 columns
    record = json.loads(out.read_text())
    assert {r["batch_size"] for r in record["results"]} == {1, 2}


@pytest.mark.parametrize(
    "extra",
    [
        ["--batch-sizes", "0,x"],
        ["--device", "tpu"],
        pytest.param(
            ["--device", "cuda"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(model, extra):
    one_line_error(runner.invoke(app, ["bench", str(model["onnx"]), *extra]))


def test_a_batch_the_engines_cannot_hold_together_is_refused_before_any_runs(
    with_data, monkeypatch
):
    import distill.memory
    import export.benchmark

    line = one_line_error(
        runner.invoke(app, ["bench", str(with_data["onnx"]), "--batch-sizes", "1,400000"]),
        "--batch-sizes",
    )
    assert "65,536" in line
    timed = []
    monkeypatch.setattr(export.benchmark, "measure", lambda *a, **k: timed.append(a))
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2**28)
    # Every engine's buffers side by side (the int8 sibling's too), and the input once.
    with pytest.raises(UserError, match=r"timing [3-9] engines at batch 65,536 needs at least"):
        benchmark(with_data["onnx"], [1, 65_536], timing=FAST, accuracy=False)
    assert not timed
    # The estimate is a lower bound: an engine's allocator may still fail, which is one line.
    monkeypatch.undo()

    def arena_full(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for buffer")

    monkeypatch.setattr(export.benchmark, "measure", arena_full)
    with pytest.raises(UserError, match="timing at batch 1 ran out of memory .*--batch-sizes"):
        benchmark(with_data["onnx"], [1], timing=FAST, accuracy=False)


def test_the_memory_a_graph_holds_is_counted_by_liveness(tmp_path):
    # conv -> relu -> conv -> add(relu's output, conv's): 32 elements per tensor per image.
    # While the second conv runs, the relu's output (needed by the add) and the conv's output
    # are live: 64. The relu and the add may write over an input that dies there; the first
    # conv reads the caller's input, which is not counted.
    import onnx
    from onnx import TensorProto, helper

    from export.footprint import live_elements_per_image

    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [2, 1, 3, 3], [0.1] * 18)
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [2, 2, 3, 3], [0.1] * 36)
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], **pad),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["b"], **pad),
        helper.make_node("Add", ["r", "b"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 1, 1])], [w1, w2],
    )  # fmt: skip
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert live_elements_per_image(path) == 64
    # The add reading the first conv's output instead keeps it live across relu and conv: 96.
    nodes[3] = helper.make_node("Add", ["a", "b"], ["c"])
    graph.ClearField("node")
    graph.node.extend(nodes)
    onnx.save(helper.make_model(graph), str(path))
    assert live_elements_per_image(path) == 96


def test_cli_rejects_a_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    one_line_error(runner.invoke(app, ["bench", str(junk)]), "notes.txt")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compares_like_with_like(with_data):
    record = benchmark(with_data["onnx"], [1], "auto", timing=FAST, accuracy=False)
    if record["environment"]["device"] != "cuda":
        pytest.skip(f"onnxruntime cannot use the GPU here: {record['note']}")
    pairs = {(r["engine"], r["precision"]) for r in record["results"]}
    assert ("pytorch", "fp32") in pairs and ("onnxruntime", "fp32") in pairs
    assert ("onnxruntime", "int8") not in pairs and "speedup" in record


def no_onnxruntime_on_cuda(monkeypatch) -> None:
    """A GPU for PyTorch and the CPU onnxruntime (the default install), simulated on a CPU: the
    PyTorch rows run on the CPU but are asked for on CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a simulated GPU")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 2**30, 80 * 2**30))
    monkeypatch.setattr(
        "export.runtime.ort.get_available_providers", lambda: ["CPUExecutionProvider"]
    )
    cpu_engine = engines.pytorch_engine
    monkeypatch.setattr(
        "export.benchmark.pytorch_engine", lambda m, p, device: cpu_engine(m, p, device="cpu")
    )
    monkeypatch.setattr("export.benchmark.peak_gflops", lambda *a: {"fp32": 1.0, "fp16": 1.0})


def test_cuda_without_onnxruntimes_provider_keeps_the_pytorch_rows(model, monkeypatch):
    no_onnxruntime_on_cuda(monkeypatch)
    record = benchmark(model["onnx"], [1], "cuda", timing=FAST, accuracy=False)
    assert {(r["engine"], r["precision"]) for r in record["results"]} == {
        ("pytorch", "fp32"),
        ("pytorch", "fp16"),
    }
    assert "onnxruntime is left out on CUDA" in record["note"], record["note"]
    assert "no CUDA provider" in record["note"]
    with pytest.raises(UserError, match="onnxruntime is left out on CUDA"):  # nothing left to run
        benchmark(model["onnx"], [1], "cuda", engines="onnxruntime", timing=FAST)


def test_the_pipelines_bench_stage_on_cuda_keeps_the_pytorch_rows(model, monkeypatch):
    from rich.console import Console

    from distill.pipeline import load_config
    from distill.pipeline.stages import _bench_stage

    no_onnxruntime_on_cuda(monkeypatch)
    settings = load_config(
        "quick",
        None,
        {
            "device": "cuda",
            "data": {"source": "cifar10"},
            "bench": {"batch_sizes": [1], "accuracy": False},
        },
    )
    run_dir = model["onnx"].parent
    monkeypatch.setattr("export.timing.Timing", lambda **kw: FAST)
    _bench_stage([model["onnx"]], run_dir, settings, Console(quiet=True)).run(False, {})
    cpu, cuda = json.loads((run_dir / "bench.json").read_text())
    assert cpu["environment"]["device"] == "cpu" and cuda["environment"]["device"] == "cuda"
    assert {r["engine"] for r in cuda["results"]} == {"pytorch"}
