"""`distill pipeline`: teacher -> baseline -> KD student -> prune -> export -> bench -> report,
in one run directory, resumable stage by stage.

- `config`: PipelineSettings from a preset, a TOML file and flags, validated before any work;
- `state`: pipeline.json, fingerprints, and which stages are up to date;
- `stages`: the stages, each a call of the library function its own command makes.

With `mlflow` set the pipeline is one MLflow run (distill/tracking.py), each training stage a
run nested under it.

Under torchrun the training stages run on every rank; rank 0 alone decides which stages to skip
or resume (and tells the others), runs the other stages and writes every file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from distill import distributed, launch
from distill.console import make_console, styled
from distill.data import Dataset, load_data
from distill.data.sources import check_outside_data
from distill.device import resolve_device
from distill.errors import UserError
from distill.files import check_folder, file_sha256, output_lock
from distill.pipeline.config import PipelineSettings, load_config, to_toml
from distill.pipeline.stages import build_stages, describe
from distill.pipeline.state import STATE_FILE, PipelineState, Stage, decide
from distill.timing import phase
from distill.tracking import Tracker

__all__ = ["PipelineSettings", "describe", "load_config", "plan", "run_pipeline", "to_toml"]


def _check_run_dir(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; pass a directory")
    check_folder(run_dir, f"--out {run_dir}")
    if not run_dir.is_dir() or force:
        return
    ours = (run_dir / STATE_FILE).exists() or any(run_dir.glob(f"{STATE_FILE}.damaged-*"))
    if not ours and any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        raise UserError(
            f"{run_dir} is not empty and holds no {STATE_FILE}; choose a new --out "
            "or pass --force to use it anyway"
        )


def run_pipeline(
    settings: PipelineSettings,
    run_dir: Path,
    *,
    force: bool = False,
    console: Console | None = None,
    quiet: bool = False,
) -> Path:
    """Run (or continue) every stage into `run_dir`; return the report's path."""
    console = console or make_console(quiet, stderr=True)
    run_dir = Path(run_dir)
    distributed.init(resolve_device(settings.device).type)

    def check() -> Tracker | None:
        if not distributed.is_main():
            return None
        _check_run_dir(run_dir, force)
        check_outside_data(run_dir, settings.data)
        return _tracking_run(settings, run_dir)

    tracker = distributed.agree(check)  # rank 0's, when tracked
    try:
        console.print(describe(settings))
        if distributed.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        distributed.check_shared(run_dir)
        with output_lock(run_dir / "pipeline", enabled=distributed.is_main()):
            state = (
                PipelineState.load(run_dir, settings.to_dict()) if distributed.is_main() else None
            )
            dataset = _data_once(settings)

            parent = tracker.run_id if tracker is not None else None
            stages = build_stages(settings, run_dir, dataset, console, quiet, parent)
            _run_stages(stages, state, console)
    except BaseException:
        if tracker is not None:
            tracker.abandon()
        raise
    if distributed.is_main():
        _results(run_dir, console)
    if tracker is not None:
        tracker.finish(p for p in (run_dir / "bench.json", run_dir / "report.md") if p.is_file())
    return run_dir / "report.md"


def plan(
    settings: PipelineSettings, run_dir: Path, *, force: bool = False
) -> list[tuple[str, str, str]]:
    """What `run_pipeline(settings, run_dir)` would do now, stage by stage, without doing it
    (nothing is written; the data is decoded into its cache when it is not there yet, since
    whether it changed decides what is redone): (stage, action, why), action skip, resume or
    run. A stage whose input an earlier stage would make again runs too."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, force)
    check_outside_data(run_dir, settings.data)
    state = PipelineState.load(run_dir, settings.to_dict(), read_only=True)
    dataset = _data_once(settings)

    remade: set[Path] = set()
    rows = []
    for stage in build_stages(settings, run_dir, dataset, make_console(quiet=True), True):
        changed = [p.name for p in stage.inputs if p in remade]
        if changed:
            action, why = "run", f"its input {changed[0]} will be made again"
        else:
            action, _, why = decide(stage, state)
        if action != "skip":
            remade.update(stage.outputs)
        rows.append((stage.name, action, why))
    return rows


def _data_once(settings: PipelineSettings) -> Callable[[], Dataset]:
    """The data set, loaded by the first stage that asks (none may: every stage up to date)."""
    return functools.cache(lambda: load_data(settings.data))


def _tracking_run(settings: PipelineSettings, run_dir: Path) -> Tracker | None:
    """The pipeline's own MLflow run, named after its folder, its settings as params; None when
    not tracked. Made before any stage: a store that cannot be reached stops the run here."""
    if settings.mlflow is None:
        return None
    params = {"kind": "pipeline"} | settings.to_dict()
    return Tracker(settings.mlflow, run_dir.resolve().name, params)


def _release_other_ranks() -> bool:
    """After the last stage that needs every rank: the other ranks leave (the rank-0-only stages,
    export, bench and report, take minutes, and ranks waiting for them at a barrier would trip
    NCCL's watchdog), and rank 0 takes the machine's cores (torchrun gave each rank one thread:
    the report's CPU latencies would be wrong by a large factor). Returns whether this rank
    goes on."""
    if not distributed.active():
        return True
    distributed.barrier()
    distributed.shutdown()
    if not distributed.is_main():
        return False
    import torch

    torch.set_num_threads(launch.physical_cores())
    return True


def _results(run_dir: Path, console: Console) -> None:
    """The run's last lines: every model in one table, then the file to ship."""
    from distill.compare import compare, rows_table
    from distill.report.collect import collect_models
    from distill.ship import ship_line

    console.print(rows_table(compare([run_dir]), "results, best val top-1 first"))
    line = ship_line(collect_models(run_dir).models)
    if line:
        console.print(line, style="bold green")


def _run_stages(stages: Iterable[Stage], state: PipelineState | None, console: Console) -> None:
    stages = list(stages)
    last_shared = max((i for i, s in enumerate(stages) if s.every_rank), default=-1)
    for i, stage in enumerate(stages):
        if i == last_shared + 1 and not _release_other_ranks():
            return
        # Rank 0 decides; every rank acts on the same decision.
        action, fp, why = distributed.broadcast(decide(stage, state) if state is not None else None)
        if action == "skip":
            console.print(f"{stage.name}: {why}, skipped", style="dim")
            if state is not None and state.stages.get(stage.name, {}).get("fingerprint") != fp:
                _record(state, stage, fp, "done", 0.0)
            continue
        resume = action == "resume"
        if why:
            console.print(f"{stage.name}: {why}", style="yellow")
        # The terminal's width, or 80 in a log: tables there may be wider, a divider need not be.
        width = console.width if console.is_terminal else 80
        console.print(Rule(styled(stage.name, "bold")), width=width)
        prior = state.stages.get(stage.name, {}).get("seconds", 0.0) if resume and state else 0.0
        if state is not None:
            _record(state, stage, fp, "running", prior)
        started = time.perf_counter()
        try:
            if stage.every_rank or distributed.is_main():
                with phase(f"stage {stage.name}"):
                    stage.run(resume, {"stage": stage.name, "fingerprint": fp})
        finally:
            seconds = prior + time.perf_counter() - started
            if state is not None:
                state.stages[stage.name]["seconds"] = seconds
                state.save()
        distributed.barrier()
        if state is not None:
            _record(state, stage, fp, "done", seconds)
        console.print(
            styled(f"{stage.name}: done", "green"),
            f"in {seconds:.0f}s -> {', '.join(p.name for p in stage.outputs)}",
        )


def _record(state: PipelineState, stage: Stage, fp: str, status: str, seconds: float) -> None:
    state.stages[stage.name] = {
        "name": stage.name,
        "status": status,
        "fingerprint": fp,
        "outputs": [p.name for p in stage.outputs],
        "sha256": {p.name: file_sha256(p) for p in stage.outputs if p.is_file()}
        if status == "done"
        else {},
        "seconds": seconds,
    }
    state.save()
