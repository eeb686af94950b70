"""`distill report`: a run folder of tiny checkpoints (+ ONNX stubs, bench.json) -> report.md."""

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from distill.checkpoint import file_sha256, new_checkpoint, save_checkpoint
from distill.cli import app
from distill.registry import build_model
from distill.report import budgets, collect_models, write_report
from students.resnet import plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "ship"]
JPEG_DATA = {"source": "../shared/data/cifar10-jpeg", "split_seed": 0, "val_size": 5000}


def history(epochs: int, final_acc: float) -> list[dict]:
    """Plausible curves ending at `final_acc`, best at the last epoch."""
    return [
        {
            "epoch": e,
            "lr": 0.1 * (1 - e / (epochs + 1)),
            "train_loss": 2.0 / e,
            "train_accuracy": final_acc * e / epochs - 0.02,
            "val_loss": 1.8 / e + 0.1,
            "val_accuracy": final_acc * e / epochs,
            "seconds": 10.0,
            "images_per_s": 5000.0,
        }
        for e in range(1, epochs + 1)
    ]


def save(path, kind, arch, val, params, macs, *, data=JPEG_DATA, test=None, **extra):
    # A real (tiny) model: what is under test is the report, not the architecture.
    model = build_model(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=len(CLASSES)))
    metrics = {"val_accuracy": val, "params": params, "macs": macs, "best_epoch": 3}
    metrics |= {"epochs_run": 3, "train_seconds": 95.0, "device": "cpu"}
    if test is not None:
        metrics["test_accuracy"] = test
    ckpt = new_checkpoint(
        kind=kind,
        arch=arch,
        model=model,
        classes=CLASSES,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_size=[3, 32, 32],
        recipe={"name": "quick", "epochs": 3, "batch_size": 256, "lr": 0.2, "schedule": "onecycle"},
        data=data,
        metrics=metrics,
        history=history(3, val),
        **extra,
    )
    save_checkpoint(ckpt, path)
    return path


def save_onnx(path, source, val, params):
    """A valid one-node ONNX file carrying the metadata distill's export writes."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph)
    meta = {
        "classes": json.dumps(CLASSES),
        "mean": "[0.5, 0.5, 0.5]",
        "std": "[0.25, 0.25, 0.25]",
        "arch": "resnet18-quarter",
        "params": str(params),
        "source_sha256": file_sha256(source),
        "val_accuracy": str(val),
        "input_size": "[3, 32, 32]",
        "input_layout": "NCHW",
        "input_range": "[0,1]",
        "precision": "int8" if ".int8." in str(path) else "fp32",
        "source": source.name,
    }
    helper.set_model_props(model, meta)
    onnx.save(model, path)


def bench_record(model: str, p50_ms: float, device: str = "cpu") -> dict:
    """The shape `distill bench --json` writes (export/bench.py `benchmark`)."""
    rows = [
        {"engine": "onnxruntime", "batch_size": 1, "p50_ms": p50_ms, "p90_ms": 1.2 * p50_ms},
        {"engine": "pytorch", "batch_size": 1, "p50_ms": 3 * p50_ms, "p90_ms": 4 * p50_ms},
        {"engine": "onnxruntime", "batch_size": 32, "p50_ms": 9 * p50_ms, "p90_ms": 10 * p50_ms},
    ]
    return {
        "model": {"path": f"/runs/x/{model}", "precision": "fp32", "arch": "resnet18-quarter"},
        "environment": {"device": device, "threads": 2, "cpu": "Test CPU"},
        "results": rows,
        "speedup": {"1": 3.0, "32": 2.0},
    }


def make_run(d, *, kd_acc=0.851, base_acc=0.838, names=None, test=None, exports=True):
    """teacher, baseline, KD student, pruned (+ fp32/int8 ONNX of the student and bench.json)."""
    n = {"teacher": "teacher", "baseline": "baseline", "student": "student", "pruned": "pruned"}
    n |= names or {}
    d.mkdir(parents=True, exist_ok=True)
    teacher = save(
        d / f"{n['teacher']}.pt", "teacher", "resnet34", 0.931, 21_282_122, 1_160_000_000
    )
    t_rec = {"path": str(teacher), "sha256": file_sha256(teacher), "arch": "resnet34"}
    t_rec["val_accuracy"] = 0.931
    kd = {"method": "hinton", "alpha": 0.9, "temperature": 4.0}
    save(d / f"{n['baseline']}.pt", "student", "resnet18-quarter", base_acc, 697_546, 35_500_000,
         test=test and test[0])  # fmt: skip
    student = save(d / f"{n['student']}.pt", "student", "resnet18-quarter", kd_acc, 697_546,
                   35_500_000, test=test and test[1], teachers=[t_rec], kd=kd)  # fmt: skip
    pruning = {"source": {"path": str(student), "sha256": file_sha256(student)}}
    pruning |= {"budget": 400_000, "importance": "magnitude", "steps": 3}
    pruning |= {"params_before": 697_546, "params_after": 398_000}
    pruning |= {"macs_before": 35_500_000, "macs_after": 20_100_000}
    pruning |= {"val_accuracy_before": kd_acc, "val_accuracy_pruned": 0.61}
    pruning |= {"val_accuracy_after": 0.842}
    save(d / f"{n['pruned']}.pt", "pruned", "resnet18-quarter", 0.842, 398_000, 20_100_000,
         teachers=[t_rec], kd=kd, pruning=pruning)  # fmt: skip
    if exports:
        save_onnx(d / "student.onnx", student, kd_acc, 697_546)
        save_onnx(d / "student.int8.onnx", student, 0.8475, 697_546)
        bench = [bench_record("student.onnx", 0.84), bench_record("student.int8.onnx", 0.41)]
        bench += [bench_record("teacher.pt", 7.5), bench_record("pruned.pt", 0.05, "cuda")]
        (d / "bench.json").write_text(json.dumps(bench))
        stages = [
            {"name": "teacher", "status": "done", "seconds": 412.0, "outputs": ["teacher.pt"]},
            {"name": "student", "status": "done", "seconds": 95.5, "outputs": ["student.pt"]},
        ]
        config = {"preset": "quick", "student": {"budget": "5M"}, "prune_budget": 400_000}
        (d / "pipeline.json").write_text(json.dumps({"config": config, "stages": stages}))
    return d


def table_row(report: str, name: str) -> list[str]:
    line = next(li for li in report.splitlines() if li.startswith(f"| `{name}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def linked_pngs(report_path):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_path.read_text())
    return [report_path.parent / link for link in links]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = make_run(tmp_path_factory.mktemp("run") / "run")
    return d, write_report(d)


def test_table_rows_hold_the_checkpoint_numbers(full_run):
    _, path = full_run
    report = path.read_text()
    head = next(li for li in report.splitlines() if li.startswith("| model |"))
    assert "test top-1" not in head  # no test split in this data: no empty column
    assert table_row(report, "teacher.pt")[:6] == [
        "`teacher.pt`", "teacher", "resnet34", "21.28M", "1.16G", "93.10%"
    ]  # fmt: skip
    assert table_row(report, "baseline.pt")[1] == "baseline student (labels only)"
    assert table_row(report, "baseline.pt")[5] == "83.80%"
    assert table_row(report, "student.pt")[1:6] == [
        "KD student", "resnet18-quarter", "697.55k", "35.50M", "85.10%"
    ]  # fmt: skip
    assert table_row(report, "pruned.pt")[3:6] == ["398.00k", "20.10M", "84.20%"]


def test_onnx_rows_link_to_their_source_and_carry_bench_latency(full_run):
    _, path = full_run
    report = path.read_text()
    fp32, int8 = table_row(report, "student.onnx"), table_row(report, "student.int8.onnx")
    assert fp32[1] == "KD student, ONNX fp32" and int8[1] == "KD student, ONNX int8"
    assert fp32[4] == "35.50M"  # MACs come from the source checkpoint found by sha256
    assert int8[5] == "84.75%"  # the int8 file's own measured accuracy
    assert fp32[6] == "0.84" and int8[6] == "0.41"  # ORT CPU p50 at batch 1, not batch 32
    assert table_row(report, "teacher.pt")[6] == "7.50"  # bench times a .pt through ORT too
    assert table_row(report, "pruned.pt")[6] == "—"  # CUDA numbers stay out of the CPU column
    assert "(Test CPU, 2 threads)" in report and "`student.int8.onnx` 3.0x" in report
    # exports sort right after their checkpoint
    order = [li.split("`")[1] for li in report.splitlines() if li.startswith("| `")]
    assert order.index("student.onnx") == order.index("student.pt") + 1


def test_kd_gain_line_and_provenance(full_run):
    _, path = full_run
    report = path.read_text()
    assert "KD student: **+1.3 points** over the label-only baseline (85.1% vs 83.8%" in report
    assert "Pruned `pruned.pt` from `student.pt`: 697.55k → 398.00k params (-43%)" in report
    assert "85.1% → 84.2% val top-1 (-0.9 points; 61.0% right after pruning" in report
    assert "Pruning: budget 400k, importance magnitude, steps 3" in report
    assert "validation split (5,000 images, seed 0) held out of the training images" in report
    assert "JPEG-decoded" in report
    assert "| teacher | done | 6.9 min |" in report and "recipe **quick**" in report
    assert "= `teacher.pt` here" in report  # teacher sha256 matched
    assert "torch " in report  # versions


def test_budget_lines_come_from_pipeline_config_and_pruning_record(full_run):
    d, _ = full_run
    assert budgets(collect_models(d)) == {"student budget": 5_000_000, "prune budget": 400_000}


def test_every_linked_plot_is_a_png(full_run):
    d, path = full_run
    pngs = linked_pngs(path)
    names = {p.name for p in pngs}
    assert {"accuracy_vs_params.png", "accuracy_vs_latency.png", "curves_student.png"} <= names
    assert len(pngs) == 6  # two trade-off plots + curves for four checkpoints
    for p in pngs:
        assert p.parent == d / "plots"
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5_000


def test_negative_gain_test_split_and_discovery_by_content(tmp_path):
    # Names tell nothing: roles must come from kind and the teachers list. Extra files must not
    # confuse it: a resume state file, a stray non-distill .pt.
    names = {"teacher": "t", "baseline": "a", "student": "b", "pruned": "c"}
    d = make_run(tmp_path, kd_acc=0.80, base_acc=0.807, names=names, test=(0.79, 0.795))
    shutil.copy(d / "b.pt", d / "b.last.pt")
    (d / "plots").mkdir()
    (d / "plots" / "curves_gone.png").write_bytes(PNG_SIGNATURE)  # a model no longer here
    (d / "junk.pt").write_bytes(b"not a checkpoint")
    # b.pt retrained after its export: the ONNX files now describe an older model.
    save(d / "b.pt", "student", "resnet18-quarter", 0.80, 697_546, 35_500_000, test=0.795,
         teachers=[{"path": str(d / "t.pt"), "arch": "resnet34"}])  # fmt: skip
    report = write_report(d).read_text()
    assert "**-0.7 points**, negative" in report and "(80.0% vs 80.7% val top-1)" in report
    assert "test: +0.5 points (79.5% vs 79.0%)" in report
    assert table_row(report, "b.pt")[1] == "KD student"
    assert table_row(report, "a.pt")[1].startswith("baseline")
    assert table_row(report, "a.pt")[6] == "79.00%"  # test column present
    assert "b.last.pt" not in report
    assert "Skipped `junk.pt`: " in report
    assert "`student.onnx` was exported from an earlier `b.pt`" in report
    assert table_row(report, "student.onnx")[1] == "ONNX fp32"  # no longer tied to b.pt
    assert not (d / "plots" / "curves_gone.png").exists()


def test_cli_writes_report_and_rejects_bad_dirs(tmp_path):
    runner = CliRunner()
    d = tmp_path / "only"
    d.mkdir()
    save(d / "m.pt", "teacher", "resnet18", 0.9, 11_173_962, 556_000_000)
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 0, result.output
    assert str(d / "report.md") in result.output.replace("\n", "")
    # Nothing exported, benchmarked or piped: it says so, and draws no latency plot.
    report = (d / "report.md").read_text()
    assert "No ONNX exports here" in report and "No `bench.json`" in report
    assert "No `pipeline.json`" in report and "KD student" not in report
    assert not (d / "plots" / "accuracy_vs_latency.png").exists()

    for bad in (tmp_path / "missing", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
        result = runner.invoke(app, ["report", str(bad)])
        assert result.exit_code == 2
        assert result.output.startswith("error:") and result.output.count("\n") == 1
    assert "Example" in runner.invoke(app, ["report", "--help"]).output
