"""`distill pipeline` end to end on tiny data: every stage, skip, redo, resume, report."""

import importlib.util
import json
import re
import shutil

import pytest
from conftest import one_line_error
from typer.testing import CliRunner

import distill.api.training as training  # where the stages reach `fit`
from distill.checkpoint import load_checkpoint
from distill.cli import app
from distill.errors import UserError
from distill.pipeline import load_config, run_pipeline

runner = CliRunner()

TINY_TOML = """
[data]
val_size = 20
cache_dir = "{cache}"
[export]
# 20 validation images from a model trained for a step or two: one image is 5 points, so the
# int8 accuracy gate would judge noise (its own tests use real margins).
int8_max_drop = 1.0
[bench]
batch_sizes = [1]
seconds = 0.05
engines = ["onnxruntime"]
[teacher]
arch = "resnet18-quarter"
epochs = {teacher_epochs}
batch_size = 32
[student]
arch = "resnet18-quarter"
epochs = {student_epochs}
batch_size = 32
[prune]
budget = "0.6M"
steps = 1
epochs_per_step = 0
epochs = 1
"""
STAGES = [
    "teacher",
    "baseline",
    "student",
    "prune",
    "export-student",
    "export-pruned",
    "bench",
    "report",
]


def write_toml(path, cache, teacher_epochs=1, student_epochs=1):
    path.write_text(
        TINY_TOML.format(cache=cache, teacher_epochs=teacher_epochs, student_epochs=student_epochs)
    )
    return path


def pipeline_args(data, config, out, quiet=True):
    args = ["pipeline", "--data", str(data), "--config", str(config), "--out", str(out)]
    return args + ["--quiet"] if quiet else args


def stage_records(out):
    return {s["name"]: s for s in json.loads((out / "pipeline.json").read_text())["stages"]}


# The optional MLflow extra: where it is installed the one full run below is tracked too.
TRACKED = all(importlib.util.find_spec(m) for m in ("mlflow", "sqlalchemy"))


@pytest.fixture(scope="module")
def finished_run(tiny_image_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = write_toml(root / "p.toml", root / "cache")
    out = root / "run"
    tracking = ["--mlflow", f"sqlite:///{root / 'runs.db'}"] if TRACKED else []
    result = runner.invoke(app, [*pipeline_args(tiny_image_folder, config, out), *tracking])
    assert result.exit_code == 0, result.output
    return root, config, out, result.output


def test_every_stage_runs_and_is_verified(finished_run):
    _, _, out, output = finished_run
    records = stage_records(out)
    assert list(records) == STAGES
    assert all(r["status"] == "done" for r in records.values())
    for name in ("teacher", "baseline", "student", "pruned"):
        assert (out / f"{name}.pt").exists()
    for name in ("student", "student.int8", "pruned", "pruned.int8"):
        assert (out / f"{name}.onnx").exists()
    pruned = load_checkpoint(out / "pruned.pt")
    assert pruned["kind"] == "pruned" and pruned["metrics"]["params"] <= 600_000
    student = load_checkpoint(out / "student.pt")
    assert student["teachers"][0]["sha256"] and not load_checkpoint(out / "baseline.pt")["teachers"]
    bench = json.loads((out / "bench.json").read_text())
    # One record per exported model; each times its int8 sibling beside the fp32 file.
    assert [r["model"]["path"].rsplit("/", 1)[-1] for r in bench] == ["student.onnx", "pruned.onnx"]
    for r in bench:
        precisions = {(row["engine"], row["precision"]) for row in r["results"]}
        assert {("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= precisions
    assert "pipeline finished" in output and "report.md" in output


@pytest.mark.skipif(not TRACKED, reason="the mlflow extra is not installed")
def test_every_training_stage_is_an_mlflow_run_nested_under_the_pipeline(finished_run):
    from mlflow.tracking import MlflowClient

    root, _, out, _ = finished_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'runs.db'}")
    runs = client.search_runs([client.get_experiment_by_name("distill").experiment_id])
    (pipeline,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert pipeline.info.run_name == "run" and pipeline.info.status == "FINISHED"
    assert pipeline.data.params["kind"] == "pipeline"
    assert pipeline.data.params["student.recipe.epochs"] == "1"
    assert {a.path for a in client.list_artifacts(pipeline.info.run_id)} == {
        "bench.json", "report.md"
    }  # fmt: skip
    stages = {r.data.tags["distill.stage"]: r for r in runs if r is not pipeline}
    assert sorted(stages) == ["baseline", "prune", "student", "teacher"]
    for stage, run in stages.items():
        assert run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
        assert run.info.status == "FINISHED"
        name = "pruned" if stage == "prune" else stage
        assert run.info.run_name == name
        assert load_checkpoint(out / f"{name}.pt")["tracking"]["run_id"] == run.info.run_id
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
        assert f"{name}.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert stages["student"].data.params["kd.method"] == "hinton"
    for name in ("student", "pruned"):  # the export stages add to the run of what they export
        run_id = stages["prune" if name == "pruned" else name].info.run_id
        onnx = {a.path for a in client.list_artifacts(run_id, "onnx")}
        assert {f"onnx/{name}.onnx", f"onnx/{name}.int8.onnx"} <= onnx


def test_report_holds_table_and_plots(finished_run):
    _, _, out, _ = finished_run
    report = (out / "report.md").read_text()
    assert "| " in report and "resnet18-quarter" in report
    # The tiny models may gain or lose from the teacher; the report must say which, in numbers.
    assert re.search(r"KD student: \*\*[+-]\d+\.\d points\*\*.*label-only baseline \(", report)
    plots = [
        line.split("(")[1].split(")")[0] for line in report.splitlines() if line.startswith("![")
    ]
    assert plots, report
    for rel in plots:
        assert (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_every_stage(finished_run, tiny_image_folder):
    _, config, out, _ = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}
    result = runner.invoke(app, pipeline_args(tiny_image_folder, config, out, quiet=False))
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date, skipped") == len(STAGES)
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}


def test_changing_student_epochs_redoes_students_and_what_follows(finished_run, tiny_image_folder):
    root, _, out, _ = finished_run
    copy = root / "changed"
    shutil.copytree(out, copy)
    config = write_toml(root / "p2.toml", root / "cache", student_epochs=2)
    teacher_before = (copy / "teacher.pt").read_bytes()

    def dry_run() -> dict[str, str]:
        listing = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
        args = [*pipeline_args(tiny_image_folder, config, copy, quiet=False), "--dry-run"]
        planned = runner.invoke(app, args)
        assert planned.exit_code == 0, planned.output
        assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == listing  # wrote nothing
        rows = [line.split(maxsplit=1) for line in planned.output.splitlines()[-len(STAGES) :]]
        return {name: rest for name, rest in rows}

    # A dry run says what the run will do, before it does it.
    predicted = dry_run()
    assert predicted["teacher"].startswith("kept"), predicted
    assert all(predicted[stage].startswith("runs") for stage in STAGES[1:]), predicted
    result = runner.invoke(app, pipeline_args(tiny_image_folder, config, copy, quiet=False))
    assert result.exit_code == 0, result.output
    assert "teacher: up to date, skipped" in result.output
    for stage in STAGES[1:]:
        assert f"{stage}: redoing" in result.output, stage
    assert all(rest.startswith("kept") for rest in dry_run().values())
    rules = [line for line in result.output.splitlines() if line.startswith("─")]
    assert rules and all(len(line) <= 80 for line in rules)  # a divider in a log stays short
    assert (copy / "teacher.pt").read_bytes() == teacher_before
    assert len(load_checkpoint(copy / "student.pt")["history"]) == 2


def test_an_interrupted_stage_resumes(tiny_image_folder, tmp_path, monkeypatch):
    config = load_config(
        "quick",
        write_toml(tmp_path / "p.toml", tmp_path / "cache", teacher_epochs=2),
        # Only the training stages matter to a resume: no pruning, no int8 export.
        {"data": {"source": str(tiny_image_folder)}, "prune": {"enabled": False},
         "export": {"int8": False}},
    )  # fmt: skip
    real_fit = training.fit
    calls = []

    def interrupted_once(*args, **kwargs):
        calls.append(kwargs)
        if len(calls) == 1:
            kwargs["stop_after_steps"] = 5  # Ctrl-C in the teacher's second epoch
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", interrupted_once)
    from distill.resume import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        run_pipeline(config, tmp_path / "run", quiet=True)
    assert stage_records(tmp_path / "run")["teacher"]["status"] == "running"
    assert (tmp_path / "run" / "teacher.last.pt").exists()

    monkeypatch.setattr(training, "fit", real_fit)
    resumed = []
    monkeypatch.setattr(
        training, "fit", lambda *a, **k: resumed.append(a[3].resume) or real_fit(*a, **k)
    )
    run_pipeline(config, tmp_path / "run", quiet=True)
    assert resumed[0] is True  # the teacher continued instead of starting over
    assert len(load_checkpoint(tmp_path / "run" / "teacher.pt")["history"]) == 2
    assert all(r["status"] == "done" for r in stage_records(tmp_path / "run").values())


@pytest.mark.parametrize(
    "toml,message",
    [
        ("[teacher]\narch = 'resnet9000'\n", "unknown architecture"),
        ("[student]\narch = 'resnet34'\n", "over the budget"),
        ("[prune]\nbudget = '6M'\n", "not below the student budget"),
        ("colour = 'blue'\n", "unknown pipeline setting colour"),
        ("[kd]\nmethod = 'magic'\n", "kd.method (bad.toml) must be one of hinton, dkd"),
        ("teacher = [", "not valid TOML"),
    ],
)
def test_bad_settings_exit_2_before_any_work(tiny_image_folder, tmp_path, toml, message):
    (tmp_path / "bad.toml").write_text(toml)
    result = runner.invoke(
        app, pipeline_args(tiny_image_folder, tmp_path / "bad.toml", tmp_path / "run")
    )
    one_line_error(result, message)
    assert not (tmp_path / "run").exists()


def test_refuses_a_foreign_non_empty_directory(tiny_image_folder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        data = {"data": {"source": str(tiny_image_folder)}}
        run_pipeline(load_config("quick", None, data), tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_unknown_preset_and_missing_data():
    with pytest.raises(UserError, match="unknown preset"):
        load_config("fastest")
    with pytest.raises(UserError, match="--data"):
        load_config("quick")


def rerun_copy(finished_run, tiny_image_folder, name, change):
    """Copy the finished run, `change(copy)`, rerun the same command on it."""
    root, config, out, _ = finished_run
    copy = root / name
    shutil.copytree(out, copy)
    change(copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.glob("*.pt")}
    result = runner.invoke(app, pipeline_args(tiny_image_folder, config, copy, quiet=False))
    return copy, before, result


def test_a_truncated_output_is_redone_and_nothing_downstream_trusted(
    finished_run, tiny_image_folder
):
    def truncate(copy):
        data = (copy / "teacher.pt").read_bytes()
        (copy / "teacher.pt").write_bytes(data[: len(data) // 2])

    copy, _, result = rerun_copy(finished_run, tiny_image_folder, "truncated", truncate)
    assert result.exit_code == 0, result.output
    assert "teacher: redoing: an output is missing or changed" in result.output
    assert load_checkpoint(copy / "teacher.pt")["kind"] == "teacher"  # whole again
    for stage in ("student", "prune", "report"):  # the new teacher's file changed their inputs
        assert f"{stage}: redoing" in result.output, stage
    assert all(r["status"] == "done" for r in stage_records(copy).values())


def test_a_damaged_record_costs_no_retraining(finished_run, tiny_image_folder):
    def damage(copy):
        (copy / "pipeline.json").write_text('{"stages": [')

    copy, before, result = rerun_copy(finished_run, tiny_image_folder, "damaged", damage)
    assert result.exit_code == 0, result.output
    assert "was damaged" in result.output
    for stage in ("teacher", "baseline", "student", "prune"):
        assert f"{stage}: up to date, recognised from its checkpoint" in result.output
    assert before == {p.name: p.stat().st_mtime_ns for p in copy.glob("*.pt")}
    assert any(p.name.startswith("pipeline.json.damaged-") for p in copy.iterdir())
    assert set(stage_records(copy)) == set(STAGES)


def test_a_folder_named_like_the_record_is_one_line(finished_run, tiny_image_folder):
    def folder(copy):
        (copy / "pipeline.json").unlink()
        (copy / "pipeline.json").mkdir()

    _, _, result = rerun_copy(finished_run, tiny_image_folder, "folder", folder)
    # Not quiet: the plan is printed before the record is read, then the one error line.
    assert result.exit_code == 2 and "pipeline.json is a folder" in result.output
    assert "Traceback" not in result.output


def test_the_export_stage_honours_every_export_setting(finished_run, tiny_image_folder, tmp_path):
    from rich.console import Console

    from distill.pipeline.stages import _export_stage
    from export.metadata import read_metadata

    _, config_path, out, _ = finished_run
    shutil.copy(out / "student.pt", tmp_path / "student.pt")
    config = load_config(
        "quick",
        config_path,
        {
            "data": {"source": str(tiny_image_folder)},
            "export": {"int8": False, "fp16": True, "tta": True},
        },
    )
    stage = _export_stage(tmp_path / "student.pt", config, Console(quiet=True))
    assert [p.name for p in stage.outputs] == ["student.onnx", "student.fp16.onnx"]
    stage.run(False, {})
    for path in stage.outputs:
        assert read_metadata(path)["tta"] is True, path.name


def _teacher_decision(config, data, out):
    """What a rerun would do with the teacher stage, without running it."""
    from distill.data import load_data
    from distill.pipeline.stages import build_stages
    from distill.pipeline.state import PipelineState, decide

    settings = load_config("quick", config, {"data": {"source": str(data)}})
    stages = build_stages(settings, out, lambda: load_data(settings.data), None, True)
    return decide(stages[0], PipelineState.load(out, settings.to_dict()))[0]


def test_the_data_is_known_by_its_content_not_its_place(finished_run, tiny_image_folder, tmp_path):
    root, _, out, _ = finished_run
    moved = tmp_path / "moved-data"
    shutil.copytree(tiny_image_folder, moved)
    # Another folder and another cache: the same images, so nothing is trained again.
    config = write_toml(tmp_path / "p.toml", tmp_path / "other-cache")
    copy = root / "moved"
    shutil.copytree(out, copy)
    result = runner.invoke(app, pipeline_args(moved, config, copy, quiet=False))
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date, skipped") == len(STAGES), result.output
    assert _teacher_decision(config, moved, copy) == "skip"

    # An image added, then removed: the same bytes again are the same data.
    extra = moved / "train" / "red" / "extra.png"
    shutil.copy(moved / "train" / "blue" / "000.png", extra)
    assert _teacher_decision(config, moved, copy) == "run"
    extra.unlink()
    assert _teacher_decision(config, moved, copy) == "skip"

    # Images moved between classes, then a class lost: other data at the same path.
    for name in ("000.png", "001.png"):
        (moved / "train" / "blue" / name).rename(moved / "train" / "green" / f"b{name}")
    assert _teacher_decision(config, moved, copy) == "run"
    shutil.rmtree(moved / "train" / "yellow")
    shutil.rmtree(moved / "test" / "yellow")
    assert _teacher_decision(config, moved, copy) == "run"
