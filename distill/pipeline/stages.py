"""The stages of `distill pipeline`, each a thin call of the library function its command makes:
teacher -> baseline (labels only) -> KD student -> prune -> export -> bench -> report."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from distill.budget import check_budget, parse_budget
from distill.checkpoint import load_checkpoint, model_from_checkpoint
from distill.data import Dataset
from distill.device import resolve_device
from distill.errors import UserError
from distill.files import atomic_write_text
from distill.pipeline.config import PipelineSettings
from distill.pipeline.state import Stage
from distill.progress import plural
from distill.resume import last_path
from distill.settings import RunSettings
from distill.typed import to_dict

# Where the data lies and where its decode is cached say nothing about what it is.
PLACE_FIELDS = ("source", "data_root", "cache_dir")


def data_identity(s: PipelineSettings, dataset: Callable[[], Dataset]) -> dict[str, Any]:
    """The training stages' data as their fingerprint sees it: the digest of the decoded
    content (read from the cache, or decoded once) and the split settings, not the paths."""
    fields = {k: v for k, v in to_dict(s.data).items() if k not in PLACE_FIELDS}
    return {**fields, "content": dataset().info["source_id"]}


def build_stages(
    s: PipelineSettings,
    run_dir: Path,
    dataset: Callable[[], Dataset],
    console: Console,
    quiet: bool,
    tracking_parent: str | None = None,
) -> list[Stage]:
    """The stages in order. `tracking_parent`: the pipeline's MLflow run, which each training
    stage's run nests under (settings.mlflow set)."""
    from distill import api

    budget = parse_budget(s.budget)
    teacher, baseline, student, pruned = (
        run_dir / f"{n}.pt" for n in ("teacher", "baseline", "student", "pruned")
    )
    data = data_identity(s, dataset)

    def run_settings(out: Path, resume: bool) -> RunSettings:
        # force: a stage that runs again replaces its own earlier output (atomically, at the end)
        return RunSettings(
            out=out,
            device=s.device,
            seed=s.seed,
            resume=resume,
            force=True,
            quiet=quiet,
            mlflow=s.mlflow,
            mlflow_parent=tracking_parent,
        )

    def verify(path: Path, limit: int | None, what: str) -> None:
        """The stage's artefact, re-read from disk, is within its budget."""
        model = model_from_checkpoint(load_checkpoint(path))
        if limit is not None:
            check_budget(model, limit, what)

    def teacher_stage(resume: bool, mark: dict[str, Any]) -> None:
        api.train_teacher(
            s.teacher.arch,
            dataset(),
            recipe=s.teacher.recipe,
            run=run_settings(teacher, resume),
            console=console,
            provenance=mark,
        )
        verify(teacher, None, "teacher")

    def baseline_stage(resume: bool, mark: dict[str, Any]) -> None:
        api.train_teacher(
            s.student.arch,
            dataset(),
            recipe=s.student.recipe,
            run=run_settings(baseline, resume),
            kind="student",
            console=console,
            provenance=mark,
        )
        verify(baseline, budget, "baseline student")

    def student_stage(resume: bool, mark: dict[str, Any]) -> None:
        api.train_student(
            teacher,
            s.student.arch,
            dataset(),
            budget=budget,
            kd=s.kd,
            recipe=s.student.recipe,
            run=run_settings(student, resume),
            console=console,
            provenance=mark,
        )
        verify(student, budget, "KD student")

    seed = {"seed": s.seed, "device": s.device}
    stages = [
        Stage(
            "teacher",
            [teacher],
            {"data": data, "teacher": to_dict(s.teacher), **seed},
            [],
            teacher_stage,
            last_path(teacher),
            every_rank=True,
        ),
        Stage(
            "baseline",
            [baseline],
            {"data": data, "student": to_dict(s.student), "budget": s.budget, **seed},
            [],
            baseline_stage,
            last_path(baseline),
            every_rank=True,
        ),
        Stage(
            "student",
            [student],
            {"student": to_dict(s.student), "kd": to_dict(s.kd), "budget": s.budget, **seed},
            [teacher],
            student_stage,
            last_path(student),
            every_rank=True,
        ),
    ]
    exported = [student]
    if s.prune.enabled:
        p_budget = parse_budget(s.prune.budget)

        def prune_stage(resume: bool, mark: dict[str, Any]) -> None:
            api.prune(
                student,
                s.prune,
                teacher=teacher,
                data=dataset(),
                kd=s.kd,
                recipe=s.student.recipe,
                run=run_settings(pruned, resume),
                console=console,
                provenance=mark,
            )
            verify(pruned, p_budget, "pruned student")

        stages.append(
            Stage(
                "prune",
                [pruned],
                {"prune": to_dict(s.prune), "kd": to_dict(s.kd), **seed},
                [student, teacher],
                prune_stage,
                last_path(pruned),
                every_rank=True,
            )
        )
        exported.append(pruned)

    stages += [_export_stage(source, s, console) for source in exported]
    onnx_files = [p for stage in stages if stage.name.startswith("export") for p in stage.outputs]
    stages.append(_bench_stage(onnx_files, run_dir, s, console))
    # The report reads every artefact above, so any change to one of them redoes it.
    artefacts = [p for stage in stages for p in stage.outputs]
    stages.append(
        Stage(
            "report",
            [run_dir / "report.md"],
            {"report": 2},
            artefacts,
            lambda _resume, _mark: _report(run_dir, console),
            optional_inputs=True,
        )
    )
    return stages


def _export_stage(source: Path, s: PipelineSettings, console: Console) -> Stage:
    from distill.api import export_onnx
    from export.metadata import read_metadata
    from export.model_files import default_output

    e = s.export
    # fp32 always (the reference every engine can run), plus the int8 or fp16 sibling asked for.
    extra = "int8" if e.int8 else "fp16" if e.fp16 else None
    fp32 = default_output(source)
    outputs = [fp32] + ([default_output(source, extra)] if extra else [])

    def run(_resume: bool, _mark: dict[str, Any]) -> None:
        kw = dict(
            data=s.data.source,
            data_root=s.data.data_root,
            cache_dir=s.data.cache_dir,
            force=True,
            stage=lambda msg: console.print(f"  {msg}"),
        )
        # The fp32 file is neither precision; its sibling gets the settings as they are.
        rep = export_onnx(source, fp32, replace(e, int8=False, fp16=False), **kw)
        console.print(
            f"  {fp32.name}: parity max |diff| {rep.parity.max_abs_diff:.2e}, "
            f"top-1 agreement {rep.parity.top1_agreement:.2%}"
        )
        if extra is not None:
            q = export_onnx(source, outputs[1], e, **kw)
            line = (
                f"  {outputs[1].name}: {q.size_bytes / 1e6:.1f} MB vs {rep.size_bytes / 1e6:.1f} MB"
            )
            if q.accuracy is not None and q.fp32_accuracy is not None:
                line += f"; val top-1 {q.accuracy:.2%} vs fp32 {q.fp32_accuracy:.2%}"
                line += f" on {q.eval_images} images"
            console.print(line)
        budget = parse_budget(s.budget)
        for path in outputs:  # the deployable artefact is held to the same budget
            params = int(read_metadata(path)["params"])
            if params > budget:
                raise UserError(f"{path.name} has {params:,} parameters, over {s.budget}")

    return Stage(f"export-{source.stem}", outputs, to_dict(s.export), [source], run)


def _bench_stage(
    onnx_files: list[Path], run_dir: Path, s: PipelineSettings, console: Console
) -> Stage:
    from distill.api import bench
    from export.model_files import default_output

    out = run_dir / "bench.json"
    # Each fp32 file brings its int8 or fp16 sibling along (bench times every precision).
    checkpoint_of = {p: run_dir / f"{p.name.split('.')[0]}.pt" for p in onnx_files}
    timed = [p for p in onnx_files if p == default_output(checkpoint_of[p])]

    def run(_resume: bool, _mark: dict[str, Any]) -> None:
        # On the CPU always (students are deployed there), and on the pipeline's GPU too.
        devices = ["cpu"]
        if s.device != "cpu" and resolve_device(s.device).type == "cuda":
            devices.append("cuda")
        records = []
        for path in timed:
            checkpoint = checkpoint_of[path]
            for device in devices:
                console.print(f"  benchmarking {path.name} on {device}")
                records.append(
                    bench(
                        path,
                        replace(s.bench, device=device),
                        checkpoint=checkpoint if checkpoint.exists() else None,
                        data_root=s.data.data_root,
                        cache_dir=s.data.cache_dir,
                    )
                )
        atomic_write_text(out, json.dumps(records, indent=2, default=str))

    return Stage("bench", [out], to_dict(s.bench) | {"device": s.device}, onnx_files, run)


def _report(run_dir: Path, console: Console) -> None:
    from distill.report import write_report

    path = write_report(run_dir)
    console.print(f"  report: {path}")


def describe(s: PipelineSettings) -> str:
    """One line per stage, for --dry-run and the log."""
    t, st = s.teacher, s.student
    lines = [
        f"data      {s.data.source} (val {s.data.val_size}, train "
        f"{s.data.train_size or 'all'}, split seed {s.data.split_seed})",
        f"teacher   {t.arch}, {t.recipe.name} recipe, {plural(t.recipe.epochs, 'epoch')}, "
        f"label smoothing {t.recipe.label_smoothing:g}",
        f"baseline  {st.arch} from labels, {st.recipe.name} recipe, "
        f"{plural(st.recipe.epochs, 'epoch')}",
        f"student   {st.arch} distilled ({s.kd.method}), budget {s.budget}",
    ]
    if s.prune.enabled:
        p = s.prune
        lines.append(
            f"prune     to {p.budget} in {plural(p.steps, 'step')} + "
            f"{plural(p.epochs or st.recipe.epochs, 'recovery epoch')}"
        )
    lines.append(
        f"export    fp32{' + int8' if s.export.int8 else ' + fp16' if s.export.fp16 else ''}"
        f"{' with TTA' if s.export.tta else ''} ONNX; bench batch sizes "
        f"{','.join(map(str, s.bench.batch_sizes))}; report"
    )
    if s.mlflow is not None:
        lines.append(f"tracking  every training stage in MLflow at {s.mlflow}")
    return "\n".join(lines)
