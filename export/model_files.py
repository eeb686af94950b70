"""A model's files: how the exports of a checkpoint are named (m.pt -> m.onnx, m.int8.onnx,
m.fp16.onnx beside it), and the files `distill bench` times for one model: the file given (an
export, or a checkpoint exported to a temporary file first), its siblings of other precisions
when they come from the same checkpoint, and that checkpoint when it is still beside them
unchanged (the PyTorch baseline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import UserError


def onnx_name(stem: str, precision: str) -> str:
    """m -> m.onnx (fp32), m.int8.onnx, m.fp16.onnx: the one naming rule for a model's exports."""
    return stem + (".onnx" if precision == "fp32" else f".{precision}.onnx")


def default_output(ckpt_path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Beside the checkpoint, same stem: m.pt -> m.onnx, m.int8.onnx, m.fp16.onnx."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(onnx_name(ckpt_path.stem, precision))


@dataclass(frozen=True)
class ModelFiles:
    """The exported files of one model, by precision, and the checkpoint they came from."""

    by_precision: dict[str, Path]
    meta: dict[str, Any]  # the metadata of the file benchmarked (or of the checkpoint's export)
    ckpt: dict[str, Any] | None
    ckpt_path: Path | None
    notes: list[str]


def _stem(path: Path) -> str:
    """m.onnx, m.int8.onnx, m.fp16.onnx -> m"""
    name = path.name.removesuffix(".onnx")
    for precision in ("int8", "fp16"):
        name = name.removesuffix(f".{precision}")
    return name


def _siblings(
    path: Path, sha: str | None, tta: bool, notes: list[str], *, skip_fp32: bool = False
) -> dict[str, Path]:
    """X.onnx, X.int8.onnx and X.fp16.onnx beside `path` (other than `path` itself), when
    exported from the same checkpoint (sha256) with the same TTA setting; others are skipped
    with a note."""
    from export.metadata import read_metadata

    found: dict[str, Path] = {}
    stem = _stem(path)
    for precision in ("fp32", "int8", "fp16"):
        candidate = path.with_name(onnx_name(stem, precision))
        if candidate == path or not candidate.is_file() or (skip_fp32 and precision == "fp32"):
            continue
        try:
            meta = read_metadata(candidate)
        except UserError as e:
            notes.append(f"skipped {candidate.name}: {e}")
            continue
        same = sha is not None and meta.get("source_sha256") == sha
        if not same or bool(meta.get("tta")) != tta or meta.get("precision") != precision:
            notes.append(
                f"skipped {candidate.name}: not a {precision} export of the same checkpoint"
                + (" with the same TTA setting" if same else "")
            )
            continue
        found[precision] = candidate
    return found


def find_checkpoint(onnx_path: Path, meta: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The checkpoint the file was exported from, if it still sits beside it unchanged."""
    from distill.files import file_sha256

    name = meta.get("source")
    candidate = onnx_path.with_name(name) if name else None
    if candidate is None or not candidate.is_file():
        return None, (
            f"no PyTorch baseline: the source checkpoint {name or '?'} is not beside "
            f"{onnx_path.name}; pass the .pt (or --checkpoint) to compare"
        )
    if file_sha256(candidate) != meta.get("source_sha256"):
        return None, (
            f"no PyTorch baseline: {candidate} changed since the export (sha256 differs); "
            "pass the .pt to compare"
        )
    return candidate, None


def resolve_files(
    path: Path, checkpoint: str | os.PathLike | None, int8: str | os.PathLike | None, tmp: Path
) -> ModelFiles:
    """What to time for `path` (an .onnx, or a .pt exported to `tmp` first): its files by
    precision, their metadata and the checkpoint behind them, with a note for each file skipped."""
    from distill.budget import count_macs
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.files import file_sha256
    from export.graph import export_graph
    from export.metadata import read_metadata
    from export.wrappers import reference_module

    notes: list[str] = []
    if path.suffix == ".pt":
        ckpt_path: Path | None = path
        ckpt = load_checkpoint(path)
        onnx_path = tmp / "model.onnx"
        export_graph(reference_module(ckpt), ckpt["input_size"], onnx_path)
        sha = file_sha256(path)
        model = model_from_checkpoint(ckpt)
        meta = {
            key: ckpt[key] for key in ("classes", "input_size", "arch", "data") if key in ckpt
        } | {
            "precision": "fp32",
            "source_sha256": sha,
            "tta": False,
            "macs": count_macs(model, tuple(ckpt["input_size"])),
        }
        # A temporary fp32 export; X.int8.onnx / X.fp16.onnx beside the .pt join it.
        files = {"fp32": onnx_path}
        files |= _siblings(path.with_suffix(".onnx"), sha, False, notes, skip_fp32=True)
    elif path.suffix == ".onnx":
        meta = read_metadata(path)
        files = {meta.get("precision", "fp32"): path}
        files |= _siblings(path, meta.get("source_sha256"), bool(meta.get("tta")), notes)
        if checkpoint:
            ckpt_path = Path(checkpoint)
        else:
            ckpt_path, why = find_checkpoint(path, meta)
            if why:
                notes.append(why)
        ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    else:
        raise UserError(f"{path} is neither .onnx nor .pt; pass an exported model or checkpoint")
    if int8 is not None:
        given = read_metadata(int8)
        if given.get("precision") != "int8":
            raise UserError(
                f"--int8 {int8} is a {given.get('precision', 'fp32')} file; pass an int8 export"
            )
        if given.get("source_sha256") != meta.get("source_sha256"):
            notes.append(f"{Path(int8).name} was exported from another checkpoint than {path.name}")
        files["int8"] = Path(int8)
    if "macs" not in meta and ckpt is not None:
        factor = 2 if meta.get("tta") else 1
        meta["macs"] = count_macs(model_from_checkpoint(ckpt), tuple(ckpt["input_size"])) * factor
    return ModelFiles(files, meta, ckpt, ckpt_path, notes)
