"""`distill report`: a run folder of tiny checkpoints (+ ONNX stubs, bench.json) -> report.md."""

import json
import shutil

import pytest
from conftest import one_line_error
from report_runs import (
    PNG_SIGNATURE,
    STUDENT,
    TEACHER,
    engine_rows,
    linked_pngs,
    make_run,
    new_bench_record,
    row,
    save,
    section,
    table_row,
    tiny_counts,
)
from typer.testing import CliRunner

from distill.cli import app
from distill.report import budgets, collect_models, write_report
from distill.report.provenance import kd_settings
from distill.report.tradeoff import latency_points


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = make_run(tmp_path_factory.mktemp("run") / "run")
    return d, write_report(d)


def test_table_rows_hold_the_checkpoint_numbers(full_run):
    _, path = full_run
    report = path.read_text()
    head = next(li for li in report.splitlines() if li.startswith("| model |"))
    assert "test top-1" not in head  # no test split in this data: no empty column
    # Params and MACs are counted in the weights and the plan, not believed from the record
    # (which says 21.28M for the teacher): every file here holds the same tiny network.
    params, macs = tiny_counts()
    assert table_row(report, "teacher.pt")[:6] == [
        "`teacher.pt`", "teacher", TEACHER, params, macs, "93.10%"
    ]  # fmt: skip
    assert table_row(report, "baseline.pt")[1] == "baseline student (labels only)"
    assert table_row(report, "baseline.pt")[5] == "83.80%"
    assert table_row(report, "student.pt")[1:6] == [
        "KD student", STUDENT, params, macs, "85.10%"
    ]  # fmt: skip
    assert table_row(report, "pruned.pt")[3:6] == [params, macs, "84.20%"]


def test_onnx_rows_link_to_their_source_and_carry_bench_latency(full_run):
    _, path = full_run
    report = path.read_text()
    fp32, int8 = table_row(report, "student.onnx"), table_row(report, "student.int8.onnx")
    assert fp32[1] == "KD student, ONNX fp32" and int8[1] == "KD student, ONNX int8"
    assert fp32[4] == tiny_counts()[1]  # MACs come from the source checkpoint found by sha256
    assert int8[5] == "84.75%"  # the int8 file's own measured accuracy
    assert fp32[7] == "0.84" and int8[7] == "0.41"  # ORT CPU p50 at batch 1, not batch 32
    assert table_row(report, "teacher.pt")[7] == "7.50"  # bench times a .pt through ORT too
    assert table_row(report, "pruned.pt")[7] == "—"  # CUDA numbers stay out of the CPU column
    assert "(Test CPU, 2 threads)" in report and "`student.int8.onnx` 3.0x" in report
    # exports sort right after their checkpoint
    order = [li.split("`")[1] for li in report.splitlines() if li.startswith("| `")]
    assert order.index("student.onnx") == order.index("student.pt") + 1


def test_the_latency_plot_draws_the_int8_file_timed_beside_its_fp32_export(tmp_path):
    # As the pipeline's bench stage writes it: one record per fp32 file, whose rows time its
    # int8 sibling too; no record of the int8 file itself.
    d = make_run(tmp_path / "run")
    int8 = row("onnxruntime", "int8", 1, 0.4, acc=0.8475)
    (d / "bench.json").write_text(
        json.dumps([new_bench_record("student.onnx", [*engine_rows(0.84), int8])])
    )
    points = {m.name: (m.precision, m.latency_ms) for m in latency_points(collect_models(d).models)}
    assert points == {"student.onnx": ("fp32", 0.84), "student.int8.onnx": ("int8", 0.4)}


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
    assert names == {
        "accuracy_vs_params.png",
        "accuracy_vs_latency.png",
        "per_class_accuracy.png",
        "kd_gain_per_class.png",
        *[f"confusion_{m}.png" for m in ("teacher", "baseline", "student")],
        "pruning_pruned.png",
        "latency_vs_batch_cpu.png",
        "latency_vs_batch_cuda.png",
        *[f"curves_{m}.png" for m in ("teacher", "baseline", "student", "pruned")],
    }
    assert len(pngs) == len(names) == 14
    assert {p.name for p in (d / "plots").iterdir()} == names  # nothing unlinked left behind
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
    # plots of models no longer here (and of a CUDA record this run does not have)
    stale = ["curves_gone.png", "confusion_gone.png", "pruning_gone.png"]
    stale += ["latency_vs_batch_cuda.png"]
    for gone in stale:
        (d / "plots" / gone).write_bytes(PNG_SIGNATURE)
    (d / "plots" / "mine.png").write_bytes(PNG_SIGNATURE)  # not a name the report writes
    (d / "junk.pt").write_bytes(b"not a checkpoint")
    # b.pt retrained after its export: the ONNX files now describe an older model.
    save(d / "b.pt", "student", STUDENT, 0.80, 697_546, 35_500_000, test=0.795,
         teachers=[{"path": str(d / "t.pt"), "arch": TEACHER}])  # fmt: skip
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
    assert not [gone for gone in stale if (d / "plots" / gone).exists()]
    assert "`bench.json` times `pruned.pt`, which is not in this folder: not shown." in report
    assert (d / "plots" / "mine.png").exists()


def test_cli_writes_report_and_rejects_bad_dirs(tmp_path):
    runner = CliRunner()
    d = tmp_path / "only"
    d.mkdir()
    save(d / "m.pt", "teacher", TEACHER, 0.9, 11_173_962, 556_000_000)
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
        one_line_error(runner.invoke(app, ["report", str(bad)]), bad.name)
    assert "Example" in runner.invoke(app, ["report", "--help"]).output


def test_report_stage_is_not_shown_running_in_its_own_table(full_run):
    _, path = full_run
    report = path.read_text()
    stage = next(li for li in report.splitlines() if li.startswith("| report |"))
    assert stage == "| report | this report | — | `report.md` |"
    assert "running" not in section(report, "Provenance")
    assert "| **total** | | **8.5 min** | |" in report  # 412 + 95.5 s, not the report's 3 s


def test_settings_list_only_what_applies():
    hinton = {"method": "hinton", "alpha": 0.9, "temperature": 4.0, "beta": 8.0}
    dkd = hinton | {"method": "dkd", "alpha": 1.0}
    assert kd_settings(hinton) == {"method": "hinton", "alpha": 0.9, "temperature": 4.0}
    assert kd_settings(dkd) == dkd  # beta is DKD's non-target weight: shown for DKD


def test_hinton_students_show_no_beta(full_run):
    _, path = full_run
    recipes = section(path.read_text(), "Provenance").split("**Recipes**")[1]
    student = next(li for li in recipes.splitlines() if li.startswith("- `student.pt`"))
    assert "KD: method hinton, alpha 0.9, temperature 4.0, warmup_epochs 0.0" in student
    assert "beta" not in recipes
    # the recipe summary itself is unchanged
    assert "recipe **quick**: epochs 3, batch_size 256, lr 0.2, schedule onecycle" in student


def test_teacher_agreement_and_onnx_accuracy_measured_on_the_file(full_run):
    _, path = full_run
    report = path.read_text()
    head = next(li for li in report.splitlines() if li.startswith("| model |"))
    assert [c.strip() for c in head.strip("|").split("|")][6] == "top-1 = teacher's"
    assert table_row(report, "student.pt")[6] == "91.2%"
    assert table_row(report, "pruned.pt")[6] == "88.4%"
    assert table_row(report, "teacher.pt")[6] == "—"
    # the fp32 file's own accuracy (85.05%), not its checkpoint's (85.10%), labelled
    fp32 = table_row(report, "student.onnx")
    assert fp32[5] == "85.05% (measured on this file, 5,000 val images)"
    assert table_row(report, "student.int8.onnx")[5] == "84.75%"  # no label: just the number
