"""`distill bench`: a sane record from a checkpoint or an exported file. Numbers are not asserted
(bench/onnx_speed.py measures them); a few short runs keep this fast."""

import itertools
import json
import shutil
import time

import pytest
import torch
from test_export import make_checkpoint, one_thread  # noqa: F401 (autouse fixture)
from typer.testing import CliRunner

from distill.cli import app
from export.bench import Timing, benchmark, measure
from export.onnx import export_onnx

runner = CliRunner()
FAST = Timing(warmup=1, min_runs=3, max_runs=20, min_seconds=0.0, block_seconds=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    ckpt = make_checkpoint(root / "m.pt", data={}, classes="abcd")
    return {"ckpt": ckpt, "onnx": export_onnx(ckpt).path}


def check_record(record, batch_sizes, engines):
    rows = {(r["engine"], r["batch_size"]): r for r in record["results"]}
    assert set(rows) == {(e, b) for e in engines for b in batch_sizes}
    for r in rows.values():
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["images_per_s"] > 0 and r["runs"] >= FAST.min_runs
    env = record["environment"]
    assert env["provider"] == "CPUExecutionProvider" and env["threads"] == 1
    assert env["cpu"] and {"onnxruntime", "torch", "onnx"} <= set(env["versions"])
    if "pytorch" in engines:
        assert set(record["speedup"]) == {str(b) for b in batch_sizes}
        assert all(v > 0 for v in record["speedup"].values())
    json.dumps(record)  # JSON-ready as returned


def test_checkpoint_is_exported_and_compared_with_pytorch(model):
    record = benchmark(model["ckpt"], [1, 3], threads=1, timing=FAST)
    check_record(record, [1, 3], ("onnxruntime", "pytorch"))
    assert record["model"]["precision"] == "fp32" and record["note"] is None


def test_onnx_finds_its_checkpoint_beside_it_or_says_why_not(model, tmp_path):
    beside = benchmark(model["onnx"], [2], threads=1, timing=FAST)
    check_record(beside, [2], ("onnxruntime", "pytorch"))
    assert beside["model"]["checkpoint"] == str(model["ckpt"])

    moved = shutil.copy(model["onnx"], tmp_path / "moved.onnx")
    alone = benchmark(moved, [2], threads=1, timing=FAST)
    check_record(alone, [2], ("onnxruntime",))
    assert "no PyTorch baseline" in alone["note"] and alone["speedup"] == {}
    explicit = benchmark(moved, [2], threads=1, checkpoint=model["ckpt"], timing=FAST)
    check_record(explicit, [2], ("onnxruntime", "pytorch"))


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
    assert "onnxruntime" in result.output and "x PyTorch eager" in result.output
    record = json.loads(out.read_text())
    assert [r["batch_size"] for r in record["results"]] == [1, 1, 2, 2]


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
    result = runner.invoke(app, ["bench", str(model["onnx"]), *extra])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_rejects_a_file_that_is_not_a_model(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    result = runner.invoke(app, ["bench", str(junk)])
    assert result.exit_code == 2 and "notes.txt" in result.output
