"""`distill pipeline`: teacher -> baseline -> KD student -> prune -> export -> bench -> report.

Every stage writes into one run directory and is recorded in `pipeline.json` with a fingerprint:
a hash of the stage's own settings and of the files it reads. A rerun skips a stage whose outputs
exist under the same fingerprint, redoes one whose settings or inputs changed (and so, through the
changed files, everything downstream), and resumes a training stage that was interrupted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from rich.console import Console

from distill.budget import check_budget, parse_budget
from distill.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from distill.data import DataConfig, Dataset, load_data
from distill.errors import UserError
from distill.recipes import Recipe, resolve_recipe
from distill.registry import create_model, get_entry
from distill.train import RunConfig, last_path

STATE_FILE = "pipeline.json"


@dataclass(frozen=True)
class TrainStage:
    arch: str
    recipe: str
    epochs: int | None = None  # None: the recipe's own
    batch_size: int | None = None
    lr: float | None = None

    def resolved(self) -> Recipe:
        return resolve_recipe(
            self.recipe, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr
        )


@dataclass(frozen=True)
class KDStage:
    method: str = "hinton"
    alpha: float | None = None  # None: the method's published default
    temperature: float | None = None


@dataclass(frozen=True)
class PruneStage:
    budget: str | None = None  # None: no pruning stage
    steps: int = 2
    epochs_per_step: int = 1
    epochs: int = 1  # final KD recovery
    importance: str = "magnitude"


@dataclass(frozen=True)
class PipelineConfig:
    data: str
    teacher: TrainStage
    student: TrainStage
    budget: str = "5M"
    kd: KDStage = KDStage()
    prune: PruneStage = PruneStage()
    int8: bool = True
    bench_batch_sizes: tuple[int, ...] = (1, 32, 256)
    bench_seconds: float = 2.0  # timed seconds per engine and batch size
    val_size: int = 5000
    train_size: int | None = None
    split_seed: int = 0
    seed: int = 0
    device: str = "auto"
    data_root: str = "~/.cache/distill"
    cache_dir: str = "~/.cache/distill"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_config(self) -> DataConfig:
        return DataConfig(
            source=self.data,
            data_root=Path(self.data_root),
            cache_dir=Path(self.cache_dir),
            val_size=self.val_size,
            train_size=self.train_size,
            seed=self.split_seed,
        )


# Presets are plain nested dicts so a TOML file overrides them key by key.
PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo on CIFAR-10 in about 15 minutes on 2 cores. On a CPU a wider teacher costs more
    # per image than the student's whole training step, so the teacher is the student's own
    # architecture trained twice as long ("born-again" distillation, Furlanello et al. 2018).
    "quick": {
        "teacher": {"arch": "resnet18-quarter", "recipe": "quick", "epochs": 8},
        "student": {"arch": "resnet18-quarter", "recipe": "quick", "epochs": 4},
        "kd": {"method": "hinton", "alpha": 0.9, "temperature": 4.0},
        "prune": {"budget": "0.45M", "steps": 1, "epochs_per_step": 0, "epochs": 1},
        "bench_batch_sizes": [1, 32],
    },
    # The GPU run for the real result: a ResNet34 teacher and a 5M student, standard recipe.
    "standard": {
        "teacher": {"arch": "resnet34", "recipe": "standard", "epochs": 200},
        "student": {"arch": "resnet18-5m", "recipe": "standard", "epochs": 200},
        "kd": {"method": "hinton", "alpha": 0.9, "temperature": 4.0},
        "prune": {"budget": "2.5M", "steps": 4, "epochs_per_step": 5, "epochs": 60},
        "bench_batch_sizes": [1, 32, 256],
    },
}


def _merge(base: dict[str, Any], override: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """A dataclass from a dict, with a one-line error for unknown or missing keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(
            f"unknown pipeline setting {where}{unknown[0]}; valid keys here: {', '.join(names)}"
        )
    kwargs = {}
    for key, value in values.items():
        sub = {"teacher": TrainStage, "student": TrainStage, "kd": KDStage, "prune": PruneStage}
        if cls is PipelineConfig and key in sub:
            if not isinstance(value, dict):
                raise UserError(f"pipeline setting {key} must be a table, e.g. [{key}]")
            kwargs[key] = _build(sub[key], value, f"{key}.")
        elif key == "bench_batch_sizes":
            kwargs[key] = tuple(int(b) for b in value)
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"incomplete pipeline settings in {where or 'top level'}: {e}") from None


def load_config(
    preset: str, data: str | None, config_file: Path | None = None, **overrides: Any
) -> PipelineConfig:
    """The preset, then the TOML file's values, then explicit overrides (CLI flags)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = PRESETS[preset]
    if config_file is not None:
        try:
            values = _merge(values, tomllib.loads(Path(config_file).read_text()))
        except FileNotFoundError:
            raise UserError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{config_file} is not valid TOML: {e}") from None
    values = _merge(values, {k: v for k, v in overrides.items() if v is not None})
    if data is not None:
        values = values | {"data": data}
    if "data" not in values:
        raise UserError("no data given; pass --data (cifar10, cifar100 or a folder)")
    config = _build(PipelineConfig, values, "")
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    """Everything checkable before any work: names, recipes, budgets."""
    budget = parse_budget(config.budget)
    for stage in (config.teacher, config.student):
        try:
            get_entry(stage.arch)
        except KeyError as e:
            raise UserError(e.args[0]) from None
        stage.resolved()
    check_budget(create_model(config.student.arch), budget, f"student {config.student.arch}")
    if config.prune.budget is not None and parse_budget(config.prune.budget) >= budget:
        raise UserError(
            f"prune budget {config.prune.budget} is not below the student budget "
            f"{config.budget}; lower it, or set no [prune] budget to skip pruning"
        )
    from distill.losses import KDConfig

    KDConfig.create(config.kd.method, alpha=config.kd.alpha, temperature=config.kd.temperature)


def fingerprint(settings: Any, inputs: list[Path]) -> str:
    """Hash of a stage's settings and the exact bytes of the files it reads."""
    payload = {"settings": settings, "inputs": {p.name: file_sha256(p) for p in inputs}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Stage:
    name: str
    outputs: list[Path]
    settings: Any
    inputs: list[Path]
    run: Callable[[bool], None]  # called with resume=True/False
    resumable: Path | None = None  # the .last.pt of a training stage
    optional_inputs: bool = False  # run on whichever inputs exist (the report)


@dataclass
class PipelineState:
    path: Path
    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path, config: dict[str, Any]) -> PipelineState:
        path = run_dir / STATE_FILE
        stages: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                stages = {s["name"]: s for s in json.loads(path.read_text())["stages"]}
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{path} is damaged; remove it (stages will be redone) or use a new --out"
                ) from None
        return cls(path, config, stages)

    def save(self) -> None:
        body = {"config": self.config, "stages": list(self.stages.values())}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(body, indent=2, default=str))
        os.replace(tmp, self.path)


def _check_run_dir(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; pass a directory")
    if (
        run_dir.is_dir()
        and any(run_dir.iterdir())
        and not (run_dir / STATE_FILE).exists()
        and not force
    ):
        raise UserError(
            f"{run_dir} is not empty and holds no {STATE_FILE}; choose a new --out "
            "or pass --force to use it anyway"
        )


def run_pipeline(
    config: PipelineConfig,
    run_dir: Path,
    *,
    force: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> Path:
    """Run (or continue) every stage into `run_dir`; return the report's path."""
    console = console or Console(stderr=True)
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = PipelineState.load(run_dir, config.to_dict())
    state.save()
    loaded: dict[str, Dataset] = {}

    def dataset() -> Dataset:
        if "d" not in loaded:
            loaded["d"] = load_data(config.data_config())
        return loaded["d"]

    for stage in build_stages(config, run_dir, dataset, console, show_progress):
        _run_stage(stage, state, console)
    return run_dir / "report.md"


def _run_stage(stage: Stage, state: PipelineState, console: Console) -> None:
    inputs = [p for p in stage.inputs if p.exists()] if stage.optional_inputs else stage.inputs
    fp = fingerprint(stage.settings, inputs)
    record = state.stages.get(stage.name, {})
    same = record.get("fingerprint") == fp
    if same and record.get("status") == "done" and all(p.exists() for p in stage.outputs):
        console.print(f"[dim]{stage.name}: up to date, skipped[/]")
        return
    resume = bool(
        same
        and record.get("status") == "running"
        and stage.resumable is not None
        and stage.resumable.exists()
    )
    if record and not resume:
        why = "settings or inputs changed" if not same else "outputs missing or unfinished"
        console.print(f"[yellow]{stage.name}: redoing ({why})[/]")
    if not resume:  # a stale or partial artefact of this pipeline's own stage
        for p in [*stage.outputs, *([stage.resumable] if stage.resumable else [])]:
            p.unlink(missing_ok=True)
    else:
        console.print(f"[cyan]{stage.name}: resuming the interrupted run[/]")
    console.rule(f"[bold]{stage.name}")
    started = time.perf_counter()
    prior = record.get("seconds", 0.0) if resume else 0.0
    state.stages[stage.name] = {
        "name": stage.name,
        "status": "running",
        "fingerprint": fp,
        "outputs": [p.name for p in stage.outputs],
        "seconds": prior,
    }
    state.save()
    try:
        stage.run(resume)
    finally:
        state.stages[stage.name]["seconds"] = prior + time.perf_counter() - started
        state.save()
    state.stages[stage.name]["status"] = "done"
    state.save()
    console.print(
        f"[green]{stage.name}: done[/] in {state.stages[stage.name]['seconds']:.0f}s "
        f"-> {', '.join(p.name for p in stage.outputs)}"
    )


def build_stages(
    config: PipelineConfig,
    run_dir: Path,
    dataset: Callable[[], Dataset],
    console: Console,
    show_progress: bool,
) -> list[Stage]:
    from distill.losses import KDConfig
    from distill.prune import prune_checkpoint
    from distill.student import train_student
    from distill.teacher import train_teacher

    budget = parse_budget(config.budget)
    teacher, baseline, student = (run_dir / f"{n}.pt" for n in ("teacher", "baseline", "student"))
    pruned = run_dir / "pruned.pt"
    data_settings = {
        k: getattr(config, k) for k in ("data", "val_size", "train_size", "split_seed")
    }
    s_recipe = config.student.resolved()
    kd = KDConfig.create(
        config.kd.method,
        alpha=config.kd.alpha,
        temperature=config.kd.temperature,
        epochs=s_recipe.epochs,
    )

    def run_cfg(kind: str, arch: str, out: Path, resume: bool) -> RunConfig:
        return RunConfig(kind, arch, out, config.device, config.seed, resume, True, show_progress)

    def verify(path: Path, limit: int | None, what: str) -> None:
        """The stage's artefact, re-read from disk, is within its budget."""
        model = model_from_checkpoint(load_checkpoint(path))
        if limit is not None:
            check_budget(model, limit, what)

    def teacher_stage(resume: bool) -> None:
        t = config.teacher
        train_teacher(
            t.arch,
            dataset(),
            t.resolved(),
            run_cfg("teacher", t.arch, teacher, resume),
            console=console,
        )
        verify(teacher, None, "teacher")

    def baseline_stage(resume: bool) -> None:
        s = config.student
        train_teacher(
            s.arch,
            dataset(),
            s_recipe,
            run_cfg("student", s.arch, baseline, resume),
            console=console,
        )
        verify(baseline, budget, "baseline student")

    def student_stage(resume: bool) -> None:
        s = config.student
        train_student(
            s.arch,
            [teacher],
            dataset(),
            s_recipe,
            run_cfg("student", s.arch, student, resume),
            kd,
            budget,
            console=console,
        )
        verify(student, budget, "KD student")

    stages = [
        Stage(
            "teacher",
            [teacher],
            {"data": data_settings, "teacher": config.teacher, "seed": config.seed},
            [],
            teacher_stage,
            last_path(teacher),
        ),
        Stage(
            "baseline",
            [baseline],
            {
                "data": data_settings,
                "student": config.student,
                "budget": config.budget,
                "seed": config.seed,
            },
            [],
            baseline_stage,
            last_path(baseline),
        ),
        Stage(
            "student",
            [student],
            {
                "student": config.student,
                "kd": kd.to_dict(),
                "budget": config.budget,
                "seed": config.seed,
            },
            [teacher],
            student_stage,
            last_path(student),
        ),
    ]
    exported = [student]
    if config.prune.budget is not None:
        p = config.prune
        p_budget = parse_budget(p.budget)
        p_recipe = dataclasses.replace(s_recipe, epochs=p.epochs)

        def prune_stage(resume: bool) -> None:
            prune_checkpoint(
                student,
                p_budget,
                teacher_paths=[teacher],
                data=dataset(),
                recipe=p_recipe,
                run=run_cfg("pruned", config.student.arch, pruned, resume),
                importance=p.importance,
                steps=p.steps,
                epochs_per_step=p.epochs_per_step,
                kd=kd,
                console=console,
            )
            verify(pruned, p_budget, "pruned student")

        stages.append(
            Stage(
                "prune",
                [pruned],
                {"prune": p, "kd": kd.to_dict()},
                [student, teacher],
                prune_stage,
                last_path(pruned),
            )
        )
        exported.append(pruned)

    for source in exported:
        stages.append(_export_stage(source, config, console))
    onnx_files = [
        run_dir / f"{s.stem}{suffix}.onnx"
        for s in exported
        for suffix in ("", ".int8" if config.int8 else None)
        if suffix is not None
    ]
    stages.append(_bench_stage(onnx_files, run_dir, config, console))
    # The report reads every artefact above, so any change to one of them redoes it.
    artefacts = [s for stage in stages for s in stage.outputs]
    stages.append(
        Stage(
            "report",
            [run_dir / "report.md"],
            {"report": 1},
            artefacts,
            lambda _resume: _report(run_dir, console),
            optional_inputs=True,
        )
    )
    return stages


def _export_stage(source: Path, config: PipelineConfig, console: Console) -> Stage:
    from export.onnx import export_onnx

    fp32 = source.with_suffix(".onnx")
    int8 = source.with_name(f"{source.stem}.int8.onnx")
    outputs = [fp32, int8] if config.int8 else [fp32]

    def run(_resume: bool) -> None:
        kw = dict(
            data=config.data,
            data_root=Path(config.data_root).expanduser(),
            cache_dir=Path(config.cache_dir).expanduser(),
            force=True,
            stage=lambda msg: console.print(f"  {msg}"),
        )
        rep = export_onnx(source, fp32, **kw)
        console.print(
            f"  {fp32.name}: parity max |diff| {rep.parity.max_abs_diff:.2e}, "
            f"top-1 agreement {rep.parity.top1_agreement:.2%}"
        )
        if config.int8:
            q = export_onnx(source, int8, int8=True, **kw)
            console.print(
                f"  {int8.name}: val top-1 {q.accuracy:.2%} vs fp32 {q.fp32_accuracy:.2%}"
                f" on {q.eval_images} images; {q.size_bytes / 1e6:.1f} MB vs "
                f"{q.fp32_size_bytes / 1e6:.1f} MB"
            )
        budget = parse_budget(config.budget)
        for path in outputs:  # the deployable artefact is held to the same budget
            from export.onnx import read_metadata

            params = int(read_metadata(path)["params"])
            if params > budget:
                raise UserError(f"{path.name} has {params:,} parameters, over {config.budget}")

    return Stage(f"export-{source.stem}", outputs, {"int8": config.int8}, [source], run)


def _bench_stage(
    onnx_files: list[Path], run_dir: Path, config: PipelineConfig, console: Console
) -> Stage:
    from export.bench import Timing, benchmark

    out = run_dir / "bench.json"
    timing = Timing(min_seconds=config.bench_seconds)

    def run(_resume: bool) -> None:
        records = []
        for path in onnx_files:
            console.print(f"  benchmarking {path.name}")
            checkpoint = run_dir / f"{path.name.split('.')[0]}.pt"
            records.append(
                benchmark(
                    path,
                    config.bench_batch_sizes,
                    "cpu",
                    timing=timing,
                    checkpoint=checkpoint if checkpoint.exists() else None,
                )
            )
        tmp = out.with_name(".bench.json.tmp")
        tmp.write_text(json.dumps(records, indent=2, default=str))
        os.replace(tmp, out)

    return Stage(
        "bench",
        [out],
        {"batch_sizes": config.bench_batch_sizes, "seconds": config.bench_seconds},
        onnx_files,
        run,
    )


def _report(run_dir: Path, console: Console) -> None:
    from distill.report import write_report

    path = write_report(run_dir)
    console.print(f"  report: {path}")


def describe(config: PipelineConfig) -> str:
    """One line per stage, for --dry-run and the log."""
    lines = [
        f"data      {config.data} (val {config.val_size}, train "
        f"{config.train_size or 'all'}, split seed {config.split_seed})",
        f"teacher   {config.teacher.arch}, {config.teacher.resolved().name} "
        f"x{config.teacher.resolved().epochs} epochs",
        f"baseline  {config.student.arch} from labels, x{config.student.resolved().epochs} epochs",
        f"student   {config.student.arch} distilled ({config.kd.method}), budget {config.budget}",
    ]
    if config.prune.budget:
        lines.append(
            f"prune     to {config.prune.budget} in {config.prune.steps} steps "
            f"+ {config.prune.epochs} recovery epochs"
        )
    lines.append(
        f"export    fp32{' + int8' if config.int8 else ''} ONNX; bench batch sizes "
        f"{','.join(map(str, config.bench_batch_sizes))}; report"
    )
    return "\n".join(lines)
