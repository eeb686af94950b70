"""`pipeline.json`: each stage's settings fingerprint, status, wall time and the sha256 of every
output as it was when the stage finished.

A stage is skipped only when its fingerprint matches and every output is still byte for byte
what it wrote; a truncated or edited output is made again, and nothing downstream is touched
first (a redone stage replaces its outputs atomically when it finishes). Checkpoints also carry
their stage's fingerprint, so a lost or damaged `pipeline.json` costs no retraining: outputs
whose own record matches are adopted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.console import note
from distill.errors import UserError
from distill.files import atomic_write_text, file_sha256, loads_json

STATE_FILE = "pipeline.json"


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
    run: Callable[[bool, dict[str, Any]], None]  # (resume, provenance to record in checkpoints)
    resumable: Path | None = None  # the .last.pt of a training stage
    optional_inputs: bool = False  # run on whichever inputs exist (the report)
    every_rank: bool = False  # training stages run on every rank; the rest on rank 0 only


@dataclass
class PipelineState:
    path: Path
    config: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path, config: dict[str, Any], read_only: bool = False) -> PipelineState:
        """The record in `run_dir`; a damaged one is kept aside under another name (left as it
        is when `read_only`: a dry run changes nothing) and counts as no record."""
        path = run_dir / STATE_FILE
        if path.is_dir():
            raise UserError(
                f"{path} is a folder, not distill's record; remove it or use a new --out"
            )
        stages: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                stages = {s["name"]: s for s in loads_json(path.read_text())["stages"]}
                if not all(isinstance(s, dict) for s in stages.values()):
                    raise TypeError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                if read_only:
                    return cls(path, config, {})
                stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                kept = path.with_name(f"{STATE_FILE}.damaged-{stamp}")
                path.rename(kept)
                note(
                    f"{path} was damaged (kept as {kept.name}); finished stages are recognised "
                    "from their checkpoints, the rest are made again"
                )
                stages = {}
        return cls(path, config, stages)

    def save(self) -> None:
        body = {"config": self.config, "stages": list(self.stages.values())}
        atomic_write_text(self.path, json.dumps(body, indent=2, default=str))


def outputs_intact(record: dict[str, Any], outputs: list[Path]) -> bool:
    """Every output exists and is byte for byte what the stage wrote."""
    shas = record.get("sha256") or {}
    return all(p.is_file() and shas.get(p.name) == file_sha256(p) for p in outputs)


def adoptable(outputs: list[Path], fp: str) -> bool:
    """Every output is a checkpoint that records this very stage fingerprint."""
    from distill.checkpoint import load_checkpoint

    if not outputs or not all(p.suffix == ".pt" and p.is_file() for p in outputs):
        return False
    try:
        return all(
            (load_checkpoint(p).get("pipeline") or {}).get("fingerprint") == fp for p in outputs
        )
    except UserError:
        return False


def decide(stage: Stage, state: PipelineState) -> tuple[str, str, str]:
    """(action, fingerprint, why): action is skip, resume or run."""
    inputs = [p for p in stage.inputs if p.exists()] if stage.optional_inputs else stage.inputs
    missing = [p.name for p in inputs if not p.is_file()]
    if missing:
        return "run", "", f"its input {missing[0]} is missing"
    fp = fingerprint(stage.settings, inputs)
    record = state.stages.get(stage.name, {})
    same = record.get("fingerprint") == fp
    if same and record.get("status") == "done" and outputs_intact(record, stage.outputs):
        return "skip", fp, "up to date"
    if not (record and record.get("status") == "done") and adoptable(stage.outputs, fp):
        return "skip", fp, "up to date, recognised from its checkpoint"
    if same and record.get("status") == "running" and stage.resumable and stage.resumable.exists():
        return "resume", fp, "resuming the interrupted run"
    if not record:
        return "run", fp, ""
    if not same:
        return "run", fp, "redoing: settings or inputs changed"
    if record.get("status") == "done":
        return "run", fp, "redoing: an output is missing or changed since it was written"
    return "run", fp, "redoing: it did not finish"
