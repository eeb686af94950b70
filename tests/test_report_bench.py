"""Report latency section: every engine, precision and batch size bench measured, CPU and CUDA
apart, and noisy measurements flagged (table, plot, speed-up line) rather than shown as fact."""

import json

import pytest
from matplotlib.figure import Figure
from report_runs import (
    bench_record,
    engine_rows,
    make_run,
    new_bench_record,
    row,
    section,
    table_row,
)

from distill.report import write_report
from distill.report.bench_records import noise_reason, read_bench
from distill.report.latency import draw_latency


def noisy_bench() -> list[dict]:
    student = engine_rows(0.84)
    for r in student:
        if (r["engine"], r["batch_size"]) == ("onnxruntime", 32):
            r["noisy"] = True  # bench's own verdict, with a short tail
        if (r["engine"], r["precision"], r["batch_size"]) == ("pytorch", "fp32", 1):
            del r["noisy"]  # no verdict: the tail decides
            r["p99_ms"] = 3.0 * r["p50_ms"]
    int8 = bench_record("student.int8.onnx", 0.41)  # an older record: no noisy, no loadavg
    int8["results"][0]["p99_ms"] = 3.14 * 0.41
    # A record from before rows carried bench's verdict, taken on a busy machine.
    verdictless = [{k: v for k, v in r.items() if k != "noisy"} for r in engine_rows(7.5, (1, 32))]
    teacher = new_bench_record("teacher.pt", verdictless, load=3.5)
    cuda = [row("onnxruntime", "fp32", 1, 0.05), row("pytorch", "bf16", 1, 0.12)]
    return [
        bench_record("student.onnx", 9.99),  # superseded by the rerun below
        new_bench_record("student.onnx", student),
        int8,
        teacher,
        new_bench_record("pruned.pt", cuda, device="cuda"),
    ]


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    d = make_run(tmp_path_factory.mktemp("noisy") / "run")
    (d / "bench.json").write_text(json.dumps(noisy_bench()))
    return d, write_report(d).read_text()


def test_noise_rules():
    steady = row("onnxruntime", "fp32", 1, 1.0, tail=1.3)
    assert noise_reason(steady, threads=2, load=0.5) is None
    # an older record without a verdict: p99 over 2x p50 is a tail of interruptions
    assert noise_reason({"p50_ms": 1.0, "p99_ms": 3.14}, 2, None) == "noisy: p99 3.1 times p50"
    assert noise_reason({"p50_ms": 1.0, "p99_ms": 1.9}, 2, None) is None
    # bench's own verdict wins over the tail rule, either way
    assert noise_reason(row("pytorch", "fp32", 1, 1.0, tail=3.0), 2, None) is None
    marked = row("pytorch", "fp32", 1, 1.0, tail=1.2, noisy=True)
    assert noise_reason(marked, 2, None) == "noisy: marked noisy by `distill bench`"
    marked["noisy_why"] = "load 2.60 > 2"  # bench's reason, when it gave one, is repeated
    assert noise_reason(marked, 2, 2.6) == "noisy: load 2.60 > 2"
    # bench saw the load before and after each measurement: its "steady" is not overruled by
    # a record's load average, which trails by a minute (a training run that had just ended)
    assert noise_reason(steady, 2, 3.5) is None
    # an older record without verdicts: more runnable processes than timed threads is busy
    older = {"p50_ms": 1.0, "p99_ms": 2.5}
    assert noise_reason(older, 2, 2.6) == "noisy: p99 2.5 times p50 / load 2.6 on 2 threads"


def test_every_engine_precision_and_batch_size_is_in_the_table(noisy_run):
    _, report = noisy_run
    latency = section(report, "Latency vs batch size")
    cpu, cuda = latency.split("**CUDA**")
    head = next(li for li in cpu.splitlines() if li.startswith("| file |"))
    assert head.split(" | ")[3:] == [
        "val top-1",
        "batch 1: p50 ms (images/s)",
        "batch 32: p50 ms (images/s)",
        "batch 256: p50 ms (images/s) |",
    ]
    lines = [r[:3] for r in (li.strip("|").split("|") for li in cpu.splitlines()) if len(r) > 3]
    lines = [[c.strip() for c in r] for r in lines if "student.onnx" in r[0]]
    assert lines == [
        ["`student.onnx`", "pytorch", "fp32"],
        ["`student.onnx`", "pytorch", "bf16"],
        ["`student.onnx`", "onnxruntime", "fp32"],
        ["`student.onnx`", "openvino", "default"],
    ]
    openvino = next(li for li in cpu.splitlines() if "| openvino |" in li)
    assert "| 84.90% |" in openvino  # the accuracy bench measured through that engine
    assert "| 0.67 (1,488/s) |" in openvino  # p50 0.84 x 0.8 ms at batch 1
    assert "pruned.pt" not in cpu and "`pruned.pt` | pytorch | bf16 |" in cuda  # never mixed
    assert "9.99" not in report  # a rerun replaces the earlier record of the same file


def test_noisy_measurements_are_flagged_with_their_reason(noisy_run):
    _, report = noisy_run
    # models table: the ORT batch-1 column
    assert table_row(report, "teacher.pt")[7] == "7.50 ⚠"
    assert table_row(report, "student.int8.onnx")[7] == "0.41 ⚠"
    assert table_row(report, "student.onnx")[7] == "0.84"
    assert "- ⚠ `student.int8.onnx` ORT p50: noisy: p99 3.1 times p50." in report
    # latency table: flagged cells, one reason line each
    cpu = section(report, "Latency vs batch size").split("**CUDA**")[0]
    ort = next(li for li in cpu.splitlines() if li.startswith("| `student.onnx` | onnxruntime"))
    assert ort.split("|")[5:7] == [" 0.84 (1,190/s) ", " 13.44 (2,381/s) ⚠ "]
    assert "- ⚠ `student.onnx` onnxruntime fp32, batch 32: noisy: marked noisy by " in cpu
    # a busy machine flags the whole record: said once for the file, every cell flagged
    assert "- ⚠ `teacher.pt`, every measurement: noisy: load 3.5 on 2 threads." in cpu
    teacher = [li for li in cpu.splitlines() if li.startswith("| `teacher.pt` |")]
    assert len(teacher) == 4 and all(li.count("⚠") == 2 for li in teacher)  # batches 1, 32
    # the ORT-vs-PyTorch ratio divides a noisy PyTorch p50: it carries the same flag
    flagged = "`student.onnx` 3.0x ⚠ (noisy: p99 3.0 times p50)"
    assert flagged in report.split("## Latency")[0]
    assert "- `student.onnx`: batch 1 3.0x ⚠ (noisy: p99 3.0 times p50)" in cpu


def test_latency_plot_keeps_devices_apart_and_draws_noisy_points_hollow():
    records = read_bench(noisy_bench())
    fig = Figure()
    assert draw_latency(fig, records, "cpu")
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "student.onnx · openvino default" in labels
    assert "student.onnx · pytorch bf16" in labels
    assert not any("pruned.pt" in label for label in labels)
    lat_ax, tput_ax = fig.axes
    assert lat_ax.get_xscale() == "log" and lat_ax.get_yscale() == "log"
    assert [t.get_text() for t in lat_ax.get_xticklabels()] == ["1", "32", "256"]
    noisy = sum(r.noise is not None for rec in records if rec.device == "cpu" for r in rec.results)
    assert noisy == 11  # 8 teacher (load), ORT b32, PyTorch b1, int8 ORT b1
    hollow = [
        (x, y)
        for ax in (lat_ax, tput_ax)
        for line in ax.get_lines()
        if line.get_markerfacecolor() == "white"
        for x, y in line.get_xydata()
    ]
    assert len(hollow) == 2 * noisy  # each noisy measurement on both panels
    assert "hollow markers: noisy" in fig._suptitle.get_text()

    cuda = Figure()
    assert draw_latency(cuda, records, "cuda")
    labels = [t.get_text() for t in cuda.legends[0].get_texts()]
    assert labels == ["pruned.pt · onnxruntime fp32", "pruned.pt · pytorch bf16"]
    assert not draw_latency(Figure(), [r for r in records if r.device == "cpu"], "cuda")
