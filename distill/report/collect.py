"""Discovery: every distill model in a folder, found by content, not by file name.

A checkpoint's `kind` and its `teachers` list say whether it is a teacher, a label-only
baseline, a KD student or a pruned model; an ONNX file's `source_sha256` metadata ties it to the
checkpoint in the folder it was exported from. bench.json and pipeline.json are read here too, so
that everything after this module works on one `Collection`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_line
from distill.files import loads_json
from distill.report.bench_records import batch1_latency, read_bench
from distill.report.records import ROLES, Collection, Model, as_float, as_int, checkpoint_role
from distill.report.text import code


def _counted(ckpt: dict[str, Any]) -> tuple[int, int | None]:
    """Parameters counted in the weights and MACs from the channel plan (which the weights were
    checked against on load), not what the record says: a record can be edited, weights are
    what runs."""
    from distill.sizing import plan_cost
    from students.resnet import ResNetConfig

    stats = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.endswith(stats))
    try:
        macs = plan_cost(ResNetConfig.from_dict(ckpt["model_config"]), tuple(ckpt["input_size"]))[1]
    except (KeyError, TypeError, ValueError):
        macs = None
    return params, macs


def _read_checkpoint(path: Path) -> Model:
    from distill.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    params, macs = _counted(ckpt)
    ckpt.pop("state_dict", None)  # weights are not shown; do not hold them in memory
    m = ckpt.get("metrics") or {}
    return Model(
        path=path,
        role=checkpoint_role(ckpt),
        arch=str(ckpt.get("arch", "?")),
        params=params,
        macs=macs,
        val_accuracy=as_float(m.get("val_accuracy")),
        test_accuracy=as_float(m.get("test_accuracy")),
        size_bytes=path.stat().st_size,
        teacher_agreement=as_float(m.get("teacher_agreement")),
        ckpt=ckpt,
    )


def _read_onnx(path: Path, by_sha: dict[str, Model]) -> tuple[Model, str | None]:
    """The ONNX file as a Model, and a warning when it was exported from a checkpoint that has
    since been replaced (same name here, different sha256)."""
    from export.metadata import read_metadata

    meta = read_metadata(path)
    src = by_sha.get(str(meta.get("source_sha256", "")))
    stale = None
    named = str(meta.get("source") or "")
    if src is None and named and (path.parent / named).is_file():
        stale = (
            f"{code(path.name)} was exported from an earlier {code(named)} (its sha256 differs "
            "from the file here): its numbers describe the old model; re-export it"
        )
    return Model(
        path=path,
        role=src.role if src else "onnx",
        arch=str(meta.get("arch") or (src.arch if src else "?")),
        params=as_int(meta.get("params")) or (src.params if src else None),
        # MACs do not change with export; int8 changes the arithmetic, not the count.
        macs=src.macs if src else None,
        val_accuracy=as_float(meta.get("val_accuracy")),
        test_accuracy=None,  # measured on the checkpoint, not on the exported file
        size_bytes=path.stat().st_size,
        precision=str(meta.get("precision") or "fp32"),
        source=src.name if src else None,
        accuracy_measured_on=str(meta["val_accuracy_measured_on"])
        if meta.get("val_accuracy_measured_on")
        else None,
    ), stale


def sha256_index(models: Iterable[Model]) -> dict[str, Model]:
    from distill.files import file_sha256

    return {file_sha256(m.path): m for m in models}


def _sort_key(m: Model, order: dict[str, int]) -> tuple:
    # ONNX files sort right after the checkpoint they came from; orphans go last.
    anchor = order.get(m.source or m.name, len(order))
    return (anchor, m.is_onnx, m.precision != "fp32", m.name)


def collect_models(run_dir: Path) -> Collection:
    """Every distill checkpoint (*.pt, not *.last.pt resume state) and ONNX export in run_dir."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass the folder a distill run wrote")
    problems: list[str] = []
    ckpts: list[Model] = []
    unreadable: list[tuple[str, str]] = []
    for path in sorted(run_dir.glob("*.pt")):
        if path.name.endswith(".last.pt"):
            continue  # resumable training state, not a finished model
        try:
            ckpts.append(_read_checkpoint(path))
        except UserError as e:
            unreadable.append((path.name, str(e)))
            problems.append(f"Skipped {code(path.name)}: {e}")
    onnx_paths = sorted(run_dir.glob("*.onnx"))
    by_sha = sha256_index(ckpts) if onnx_paths else {}
    onnx_models: list[Model] = []
    for path in onnx_paths:
        try:
            model, stale = _read_onnx(path, by_sha)
        except UserError as e:  # a broken export should not hide the rest of the report
            problems.append(f"Skipped {code(path.name)}: {e}")
            continue
        onnx_models.append(model)
        problems += [stale] if stale else []
    if not ckpts and not onnx_models:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise UserError(
            f"no distill models in {run_dir}{why}; pass a folder holding .pt checkpoints or "
            ".onnx exports written by distill"
        )
    role_rank = list(ROLES)
    ckpts.sort(key=lambda m: (role_rank.index(m.role), m.name))
    order = {m.name: i for i, m in enumerate(ckpts)}
    models = sorted([*ckpts, *onnx_models], key=lambda m: _sort_key(m, order))

    bench_file = run_dir / "bench.json"
    bench_file = bench_file if bench_file.is_file() else None
    records = ()
    if bench_file is not None:
        try:
            records = read_bench(loads_json(bench_file.read_text()))
        except ValueError as e:
            why = first_line(e, 80)
            problems.append(f"`bench.json` is not valid JSON ({why}); latency not shown")
        # A record of a file not here (renamed, or measured elsewhere) describes no model on
        # this page.
        here = {m.name for m in models}
        problems += [
            f"`bench.json` times {code(name)}, which is not in this folder: not shown."
            for name in dict.fromkeys(r.file for r in records if r.file not in here)
        ]
        records = tuple(r for r in records if r.file in here)
        column = batch1_latency(records)
        models = [_with_bench(m, column.get(m.name)) for m in models]
    pipeline = None
    pipeline_file = run_dir / "pipeline.json"
    if pipeline_file.is_file():
        try:
            pipeline = loads_json(pipeline_file.read_text())
        except ValueError:
            problems.append("`pipeline.json` is not valid JSON")
        if not isinstance(pipeline, dict):
            pipeline = None
    return Collection(
        run_dir, tuple(models), tuple(problems), bench_file, pipeline, records, tuple(unreadable)
    )


def _with_bench(m: Model, row: dict[str, Any] | None) -> Model:
    return replace(m, latency_ms=row["p50_ms"], bench=row) if row else m
