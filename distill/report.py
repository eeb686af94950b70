"""`distill report DIR`: one Markdown page with PNG plots for every distill model in a folder.

Models are found by content, not by file name: a checkpoint's `kind` and its `teachers` list say
whether it is a teacher, a label-only baseline, a KD student or a pruned model; an ONNX file's
`source_sha256` metadata ties it to the checkpoint in the folder it was exported from. Anything
missing (no ONNX, no bench.json, no pipeline.json) is said in the report, never a crash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill.budget import format_count, parse_budget
from distill.errors import UserError

PLOTS = "plots"
# Display order and names of the roles a model can play; ONNX files sort after their source.
ROLES = {
    "teacher": "teacher",
    "baseline": "baseline student (labels only)",
    "kd": "KD student",
    "pruned": "pruned",
    "onnx": "ONNX export",
}
COLORS = {
    "teacher": "#1f77b4",
    "baseline": "#7f7f7f",
    "kd": "#d62728",
    "pruned": "#2ca02c",
    "onnx": "#9467bd",
}


@dataclass(frozen=True)
class Model:
    """One model file in the folder, with what the report shows about it."""

    path: Path
    role: str  # a key of ROLES; for an ONNX file, its source's role when the source is in DIR
    arch: str
    params: int | None
    macs: int | None
    val_accuracy: float | None  # [0, 1]; for an int8 file, its own measured accuracy
    test_accuracy: float | None
    size_bytes: int
    precision: str = ""  # "" for checkpoints; fp32 | fp16 | int8 for ONNX files
    source: str | None = None  # file name of the checkpoint an ONNX file came from
    latency_ms: float | None = None  # onnxruntime CPU p50 at batch 1, from bench.json
    bench: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # The checkpoint without its weights (provenance: recipe, data, teachers, kd, pruning).
    ckpt: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_onnx(self) -> bool:
        return self.path.suffix == ".onnx"

    @property
    def kind_label(self) -> str:
        if not self.is_onnx:
            return ROLES[self.role]
        tag = f"ONNX {self.precision}"
        return f"{ROLES[self.role]}, {tag}" if self.source else tag


@dataclass(frozen=True)
class Collection:
    """Everything found in a run folder."""

    run_dir: Path
    models: tuple[Model, ...]
    # Files that looked like models but could not be read, exports gone stale: one line each
    problems: tuple[str, ...]
    bench_file: Path | None
    pipeline: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------
# Discovery


def checkpoint_role(ckpt: dict[str, Any]) -> str:
    """teacher | baseline | kd | pruned, from the checkpoint's content alone."""
    kind = ckpt.get("kind")
    if kind == "teacher":
        return "teacher"
    if kind == "pruned":
        return "pruned"
    return "kd" if ckpt.get("teachers") else "baseline"


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _read_checkpoint(path: Path) -> Model:
    from distill.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    ckpt.pop("state_dict", None)  # weights are not shown; do not hold them in memory
    m = ckpt.get("metrics") or {}
    return Model(
        path=path,
        role=checkpoint_role(ckpt),
        arch=str(ckpt.get("arch", "?")),
        params=_as_int(m.get("params")),
        macs=_as_int(m.get("macs")),
        val_accuracy=_as_float(m.get("val_accuracy")),
        test_accuracy=_as_float(m.get("test_accuracy")),
        size_bytes=path.stat().st_size,
        ckpt=ckpt,
    )


def _read_onnx(path: Path, by_sha: dict[str, Model]) -> tuple[Model, str | None]:
    """The ONNX file as a Model, and a warning when it was exported from a checkpoint that has
    since been replaced (same name here, different sha256)."""
    from export.onnx import read_metadata

    meta = read_metadata(path)
    src = by_sha.get(str(meta.get("source_sha256", "")))
    stale = None
    named = str(meta.get("source") or "")
    if src is None and named and (path.parent / named).is_file():
        stale = (
            f"`{path.name}` was exported from an earlier `{named}` (its sha256 differs from the "
            "file here): its numbers describe the old model; re-export it"
        )
    return Model(
        path=path,
        role=src.role if src else "onnx",
        arch=str(meta.get("arch") or (src.arch if src else "?")),
        params=_as_int(meta.get("params")) or (src.params if src else None),
        # MACs do not change with export; int8 changes the arithmetic, not the count.
        macs=src.macs if src else None,
        val_accuracy=_as_float(meta.get("val_accuracy")),
        test_accuracy=None,  # measured on the checkpoint, not on the exported file
        size_bytes=path.stat().st_size,
        precision=str(meta.get("precision") or "fp32"),
        source=src.name if src else None,
    ), stale


def _sha256_index(models: Iterable[Model]) -> dict[str, Model]:
    from distill.checkpoint import file_sha256

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
    for path in sorted(run_dir.glob("*.pt")):
        if path.name.endswith(".last.pt"):
            continue  # resumable training state, not a finished model
        try:
            ckpts.append(_read_checkpoint(path))
        except UserError as e:
            problems.append(f"Skipped `{path.name}`: {e}")
    onnx_paths = sorted(run_dir.glob("*.onnx"))
    by_sha = _sha256_index(ckpts) if onnx_paths else {}
    onnx_models: list[Model] = []
    for path in onnx_paths:
        try:
            model, stale = _read_onnx(path, by_sha)
        except UserError as e:  # a broken export should not hide the rest of the report
            problems.append(f"Skipped `{path.name}`: {e}")
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
    if bench_file is not None:
        try:
            bench = bench_rows(json.loads(bench_file.read_text()))
        except ValueError as e:
            problems.append(f"`bench.json` is not valid JSON ({e}); latency not shown")
            bench = {}
        models = [_with_bench(m, bench.get(m.name)) for m in models]
    pipeline = None
    pipeline_file = run_dir / "pipeline.json"
    if pipeline_file.is_file():
        try:
            pipeline = json.loads(pipeline_file.read_text())
        except ValueError as e:
            problems.append(f"`pipeline.json` is not valid JSON ({e})")
    return Collection(run_dir, tuple(models), tuple(problems), bench_file, pipeline)


def _with_bench(m: Model, row: dict[str, Any] | None) -> Model:
    return replace(m, latency_ms=row["p50_ms"], bench=row) if row else m


# ---------------------------------------------------------------------------------------------
# Benchmarks


def bench_rows(bench: Any) -> dict[str, dict[str, Any]]:
    """File name -> {p50_ms, speedup, cpu, threads}: onnxruntime on CPU at batch 1, from the
    records `distill bench --json` writes (export/bench.py `benchmark`). A `.pt` record counts
    too: bench times a checkpoint through a temporary ONNX export of it."""
    records = bench if isinstance(bench, list) else [bench]
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        if not isinstance(rec, dict):
            continue
        model, env = rec.get("model") or {}, rec.get("environment") or {}
        if env.get("device") != "cpu" or not model.get("path"):
            continue  # CUDA numbers are not comparable with the CPU column
        for row in rec.get("results") or []:
            p50 = _as_float(row.get("p50_ms"))
            if row.get("engine") == "onnxruntime" and row.get("batch_size") == 1 and p50:
                out[Path(str(model["path"])).name] = {
                    "p50_ms": p50,
                    "speedup": _as_float((rec.get("speedup") or {}).get("1")),
                    "cpu": env.get("cpu"),
                    "threads": env.get("threads"),
                }
    return out


# ---------------------------------------------------------------------------------------------
# Budgets, KD gain, data note


def budgets(col: Collection) -> dict[str, int]:
    """Parameter budgets recorded anywhere in the run: label -> count."""
    found: dict[str, int] = {}

    def add(label: str, value: Any) -> None:
        if value in (None, "", 0):
            return
        # A value that is no parameter count (a flag named "*budget*") draws no line.
        with contextlib.suppress(UserError, TypeError, ValueError):
            found[label] = parse_budget(value if isinstance(value, (int, str)) else int(value))

    def walk(d: dict[str, Any], prefix: str) -> None:
        # Any key naming a budget, at any depth of the resolved config: {"budget": "5M"},
        # {"prune_budget": ...} or {"prune": {"budget": ...}} all count.
        for k, v in d.items():
            label = f"{prefix} {k}".strip().replace("_", " ")
            if isinstance(v, dict):
                walk(v, label)
            elif "budget" in k.lower():
                add(label, v)

    walk((col.pipeline or {}).get("config") or {}, "")
    for m in col.models:
        if m.role == "pruned" and not m.is_onnx:
            add("prune budget", (m.ckpt.get("pruning") or {}).get("budget"))
    # One line per distinct value: the same budget under two names is drawn once.
    distinct: dict[str, int] = {}
    for label, value in found.items():
        if value not in distinct.values():
            distinct[label] = value
    return distinct


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f}"


def kd_gain_lines(models: Sequence[Model]) -> list[str]:
    """One line per KD student checkpoint, against the label-only baseline of the same arch."""
    ckpts = [m for m in models if not m.is_onnx and m.val_accuracy is not None]
    baselines = [m for m in ckpts if m.role == "baseline"]
    kds = [m for m in ckpts if m.role == "kd"]
    lines = []
    for kd in kds:
        same = [b for b in baselines if b.arch == kd.arch]
        if not same:
            lines.append(
                f"KD student `{kd.name}`: no label-only baseline of {kd.arch} in this folder, "
                "so the gain from distillation is not measured."
            )
            continue
        base = same[0]
        gain = round(100 * (kd.val_accuracy - base.val_accuracy), 1)
        acc = f"({kd.val_accuracy:.1%} vs {base.val_accuracy:.1%} val top-1)"
        who = "KD student" if len(kds) == 1 else f"KD student `{kd.name}`"
        if gain > 0:
            line = f"{who}: **+{gain:.1f} points** over the label-only baseline {acc}"
        elif gain < 0:
            line = (
                f"{who}: **{gain:.1f} points**, negative: distillation did worse than the "
                f"label-only baseline {acc}"
            )
        else:
            line = f"{who}: **+0.0 points**, no gain over the label-only baseline {acc}"
        if kd.test_accuracy is not None and base.test_accuracy is not None:
            line += (
                f"; test: {_points(kd.test_accuracy, base.test_accuracy)} points "
                f"({kd.test_accuracy:.1%} vs {base.test_accuracy:.1%})"
            )
        lines.append(line + ".")
    return lines


def pruning_lines(models: Sequence[Model]) -> list[str]:
    """Per pruned checkpoint: size, MACs and accuracy before -> after, from its pruning record."""
    lines = []
    for m in models:
        rec = m.ckpt.get("pruning") if not m.is_onnx else None
        if m.role != "pruned" or not isinstance(rec, dict):
            continue
        parts = []
        for what, unit in (("params", "params"), ("macs", "MACs")):
            before, after = _as_int(rec.get(f"{what}_before")), _as_int(rec.get(f"{what}_after"))
            if before and after:
                parts.append(
                    f"{format_count(before)} → {format_count(after)} {unit} "
                    f"({after / before - 1:+.0%})"
                )
        a0 = _as_float(rec.get("val_accuracy_before"))
        a1 = _as_float(rec.get("val_accuracy_after"))
        if a1 is None:
            a1 = m.val_accuracy
        if a0 is not None and a1 is not None:
            acc = f"{a0:.1%} → {a1:.1%} val top-1 ({_points(a1, a0)} points"
            cut = _as_float(rec.get("val_accuracy_pruned"))
            # What KD fine-tuning won back: accuracy right after the last cut vs at the end.
            acc += f"; {cut:.1%} right after pruning, before recovery)" if cut is not None else ")"
            parts.append(acc)
        src = rec.get("source")
        origin = f" from `{Path(str(src['path'])).name}`" if isinstance(src, dict) else ""
        if parts:
            lines.append(f"Pruned `{m.name}`{origin}: " + ", ".join(parts) + ".")
    return lines


def _is_jpeg_source(source: str) -> bool:
    if "jpeg" in source.lower() or "jpg" in source.lower():
        return True
    root = Path(source).expanduser()
    if not root.is_dir():
        return False
    # Image-folder layout: train/<class>/* or <class>/*; one file is enough to tell.
    for pattern in ("train/*/*", "*/*"):
        for f in root.glob(pattern):
            return f.suffix.lower() in (".jpg", ".jpeg")
    return False


def data_note(models: Sequence[Model]) -> str:
    infos = [m.ckpt.get("data") or {} for m in models if not m.is_onnx]
    sources = sorted({str(d.get("source")) for d in infos if d.get("source")})
    has_test = any(m.test_accuracy is not None for m in models)
    info = next((d for d in infos if d.get("source")), {})
    split = ""
    if info.get("val_size"):
        split = f" ({int(info['val_size']):,} images, seed {info.get('split_seed', '?')})"
    note = (
        f"Val accuracy is top-1 on a validation split{split} held out of the training images, "
        "the split used for model selection"
    )
    if sources and all(_is_jpeg_source(s) for s in sources):
        note += (
            "; the images are JPEG-decoded (as in the bundled CIFAR-10 copy), not the original "
            "lossless pixels, so expect numbers a little below published ones"
        )
    note += "." if has_test else "; the data has no test split, so no test accuracy is reported."
    if has_test:
        note += " Test accuracy is on the data's own test split, never used for selection."
    if len(sources) > 1:
        note += f" **Models in this folder were trained on different data:** {', '.join(sources)}."
    return note


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no display, no pyplot global state)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _atomic_write(path: Path, write: Callable[[str], Any]) -> Path:
    """`write(tmp)` into a temp file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other readers
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save(fig, path: Path) -> Path:
    return _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        y = _as_float(h.get(key))
        if y is not None:
            xs.append(_as_float(h.get("epoch")) or i + 1)
            ys.append(y)
    return xs, ys


def plot_curves(model: Model, path: Path) -> Path | None:
    """Loss and accuracy vs epoch, train dashed and validation solid; None without history."""
    history = [h for h in model.ckpt.get("history") or [] if isinstance(h, dict)]
    if not any("val_accuracy" in h or "val_loss" in h for h in history):
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    color = COLORS[model.role]
    fig = _figure(10, 3.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    train_loss = "train loss (KD objective)" if model.ckpt.get("teachers") else "train loss"
    for ax, key, scale, labels in (
        (loss_ax, "loss", 1.0, (train_loss, "val loss (cross-entropy)")),
        (acc_ax, "accuracy", 100.0, ("train top-1", "val top-1")),
    ):
        for split, style, label in (("train", "--", labels[0]), ("val", "-", labels[1])):
            xs, ys = _series(history, f"{split}_{key}")
            if xs:
                ax.plot(
                    xs,
                    [y * scale for y in ys],
                    style,
                    color=color,
                    marker="o",
                    markersize=3,
                    alpha=0.6 if split == "train" else 1.0,
                    label=label,
                )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.set_ylabel("loss (nats per image)")
    acc_ax.set_ylabel("top-1 accuracy")
    acc_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    best = _as_int(model.ckpt.get("metrics", {}).get("best_epoch"))
    xs, ys = _series(history, "val_accuracy")
    if best in xs:
        y = 100 * ys[xs.index(best)]
        acc_ax.plot([best], [y], "*", color="black", markersize=12, label=f"best: {y:.1f}%")
    loss_ax.legend(fontsize=8, loc="best")
    acc_ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{model.name}: {ROLES[model.role]}, {model.arch}", fontsize=12)
    return _save(fig, path)


def short_count(n: float) -> str:
    """500k, 2.5M, 21.3M: three significant digits, for tick and line labels."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _log_ticks(axis, lo: float, hi: float, fmt: Callable[[float], str]) -> None:
    """1-2-5 ticks on a log axis: matplotlib's default minor labels collide at this width."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ticks = [m * 10.0**e for e in range(-3, 12) for m in (1, 2, 5) if lo <= m * 10.0**e <= hi]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


def _place_labels(ax, pts: Sequence[tuple[float, float, str]]) -> None:
    """Label each point to its right, nudged up or down (nearest first) until its box overlaps
    no other label and no other marker (pixel boxes under the final axis limits; text width
    estimated)."""
    height, char_w, marker_r, dx = 13, 5.6, 9, 9  # pixels for 8-pt text at 110 dpi
    disp = [tuple(ax.transData.transform((x, y))) for x, y, _ in pts]
    boxes: list[tuple[float, float, float, float]] = []  # x0, x1, y0, y1

    def free(box: tuple[float, float, float, float], own: int) -> bool:
        x0, x1, y0, y1 = box
        if any(x0 < b[1] and b[0] < x1 and y0 < b[3] and b[2] < y1 for b in boxes):
            return False
        return not any(
            j != own and x0 - marker_r < qx < x1 + marker_r and y0 - marker_r < qy < y1 + marker_r
            for j, (qx, qy) in enumerate(disp)
        )

    for i in sorted(range(len(pts)), key=lambda i: disp[i][1]):
        px, py = disp[i]
        width = char_w * len(pts[i][2])
        # 0, -3, +3, -6, +6, ... pixels; a crowded column still ends somewhere (±120 px)
        for shift in (k // 2 * 3 * (1 if k % 2 else -1) for k in range(1, 82)):
            y = py + shift
            box = (px + dx, px + dx + width, y - height / 2, y + height / 2)
            if free(box, i):
                break
        boxes.append(box)
        ax.annotate(
            pts[i][2],
            pts[i][:2],
            xytext=(dx, y - py),
            textcoords="offset pixels",
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if y - py > 3 else None,
        )


def _scatter(
    ax,
    models: Sequence[Model],
    x_of: Callable[[Model], float],
    *,
    log_x: bool,
    xlim: tuple[float, float],
) -> None:
    """Val accuracy vs x_of(model): colour by role, int8 diamonds, other ONNX squares."""
    ys = [100 * m.val_accuracy for m in models]
    pad = max(1.0, 0.12 * (max(ys) - min(ys)))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    seen: set[str] = set()
    for m, y in zip(models, ys, strict=True):
        ax.scatter(
            [x_of(m)],
            [y],
            s=110 if m.role == "teacher" else 70,  # a teacher under a student shows as a ring
            marker="D" if m.precision == "int8" else ("s" if m.is_onnx else "o"),
            color=COLORS[m.role],
            edgecolor="black",
            linewidth=0.6,
            zorder=3,
            label=None if m.kind_label in seen else m.kind_label,
        )
        seen.add(m.kind_label)
    _place_labels(
        ax, [(x_of(m), y, f"{m.name} ({y:.1f}%)") for m, y in zip(models, ys, strict=True)]
    )
    ax.grid(alpha=0.3, which="both")
    ax.set_ylabel("val top-1 accuracy (%)")


def plot_accuracy_vs_params(
    models: Sequence[Model], budget_lines: dict[str, int], path: Path
) -> Path | None:
    """Every distinct model (fp32 ONNX copies of a checkpoint left out), log-x, budgets as lines."""
    pts = [
        m
        for m in models
        if m.params
        and m.val_accuracy is not None
        and not (m.is_onnx and m.source and m.precision == "fp32")
    ]
    if not pts:
        return None
    xs = [m.params for m in pts] + list(budget_lines.values())
    xlim = (min(xs) / 1.6, max(xs) * 3)  # room on the right for the last labels
    fig = _figure(8, 5)
    ax = fig.subplots()
    _scatter(ax, pts, lambda m: float(m.params), log_x=True, xlim=xlim)
    for i, (label, value) in enumerate(sorted(budget_lines.items(), key=lambda kv: -kv[1])):
        ax.axvline(
            value,
            color="black",
            linestyle=("--", ":")[i % 2],
            linewidth=1,
            label=f"{label}: {short_count(value)} params",
        )
    _log_ticks(ax.xaxis, *xlim, short_count)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_title("Accuracy vs size (upper left is better)")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_accuracy_vs_latency(models: Sequence[Model], path: Path) -> Path | None:
    """onnxruntime CPU p50 at batch 1 for every benchmarked ONNX file."""
    # A checkpoint benchmarked beside its own fp32 export would be the same point twice.
    exported = {m.source for m in models if m.is_onnx and m.precision == "fp32" and m.latency_ms}
    pts = [
        m for m in models if m.latency_ms and m.val_accuracy is not None and m.name not in exported
    ]
    if not pts:
        return None
    lat = [m.latency_ms for m in pts]
    log_x = max(lat) / min(lat) > 8  # a teacher next to an int8 student spans decades
    xlim = (min(lat) / 1.6, max(lat) * 3) if log_x else (0, max(lat) * 1.45)
    fig = _figure(8, 5)
    ax = fig.subplots()
    _scatter(ax, pts, lambda m: m.latency_ms, log_x=log_x, xlim=xlim)
    if log_x:
        _log_ticks(ax.xaxis, *xlim, lambda v: f"{v:g}")
    scale = ", log scale" if log_x else ""
    ax.set_xlabel(f"onnxruntime CPU latency, p50 at batch 1 (ms{scale})")
    ax.set_title("Accuracy vs latency (upper left is better)")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: Any, how: Callable[[Any], str]) -> str:
    return "—" if value is None else how(value)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def render_table(models: Sequence[Model]) -> str:
    has_test = any(m.test_accuracy is not None for m in models)
    has_latency = any(m.latency_ms is not None for m in models)
    head = ["model", "kind", "arch", "params", "MACs", "val top-1"]
    head += ["test top-1"] if has_test else []
    head += ["ORT p50, batch 1 (ms)"] if has_latency else []
    head += ["size on disk"]
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---", "---"] + ["--:"] * (len(head) - 3)) + "|",
    ]
    for m in models:
        cells = [
            f"`{m.name}`",
            m.kind_label,
            m.arch,
            _fmt(m.params, format_count),
            _fmt(m.macs, format_count),
            _fmt(m.val_accuracy, lambda v: f"{v:.2%}"),
        ]
        cells += [_fmt(m.test_accuracy, lambda v: f"{v:.2%}")] if has_test else []
        cells += [_fmt(m.latency_ms, lambda v: f"{v:.2f}")] if has_latency else []
        cells += [_size(m.size_bytes)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "nesterov",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "ema_decay",
    "lookahead_k",
    "grad_clip",
)


def _recipe_summary(recipe: dict[str, Any]) -> str:
    parts = []
    for key in RECIPE_KEYS:
        value = recipe.get(key)
        if value in (None, 0, 0.0, False) and key not in ("epochs", "lr"):
            continue  # defaults that mean "off" say nothing
        parts.append(f"{key} {value}")
    aug = recipe.get("augment")
    if isinstance(aug, dict):
        on = [
            f"{k}={v}" if v is not True else k for k, v in aug.items() if v not in (0, None, False)
        ]
        if on:
            parts.append("augment " + " ".join(on))
    return ", ".join(parts)


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if not isinstance(v, (dict, list)))


def _duration(seconds: Any) -> str:
    s = _as_float(seconds)
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m" if s >= 3600 else f"{s / 60:.1f} min"


def _stages(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    stages = pipeline.get("stages") or []
    if isinstance(stages, dict):  # {name: record} as well as [record, ...]
        stages = [{"name": k, **v} for k, v in stages.items() if isinstance(v, dict)]
    return [s for s in stages if isinstance(s, dict)]


def provenance(col: Collection) -> list[str]:
    ckpts = [m for m in col.models if not m.is_onnx]
    out = ["## Provenance", ""]
    info = next((m.ckpt.get("data") for m in ckpts if m.ckpt.get("data")), None)
    if info:
        sizes = [
            f"{split} {int(info[f'{split}_size']):,}"
            for split in ("train", "val", "test")
            if _as_int(info.get(f"{split}_size"))
        ]
        if "test_size" in info and not _as_int(info["test_size"]):
            sizes.append("no test split")
        out += [
            f"**Data**: `{info.get('source', '?')}`; split seed {info.get('split_seed', '?')}"
            + (f"; images: {', '.join(sizes)}" if sizes else "")
            + ".",
            "",
        ]
    if col.pipeline:
        stages = _stages(col.pipeline)
        if stages:
            out += [
                "**Stages** (from `pipeline.json`):",
                "",
                "| stage | status | wall time | outputs |",
                "|---|---|--:|---|",
            ]
            for s in stages:
                outputs = s.get("outputs") or []
                outputs = outputs if isinstance(outputs, list) else [outputs]
                names = ", ".join(f"`{Path(str(o)).name}`" for o in outputs)
                out.append(
                    f"| {s.get('name', '?')} | {s.get('status', '?')} | "
                    f"{_duration(s.get('seconds'))} | {names} |"
                )
            total = sum(_as_float(s.get("seconds")) or 0 for s in stages)
            out += [f"| **total** | | **{_duration(total)}** | |", ""]
    out += ["**Recipes**:", ""]
    for m in ckpts:
        recipe = m.ckpt.get("recipe") or {}
        metrics = m.ckpt.get("metrics") or {}
        line = f"- `{m.name}`, {ROLES[m.role]}: recipe **{recipe.get('name', '?')}**"
        summary = _recipe_summary(recipe)
        line += f": {summary}" if summary else ""
        ran = [
            f"{metrics['epochs_run']} epochs run" if "epochs_run" in metrics else "",
            f"best epoch {metrics['best_epoch']}" if "best_epoch" in metrics else "",
            f"{_duration(metrics['train_seconds'])} on {metrics.get('device', '?')}"
            if "train_seconds" in metrics
            else "",
        ]
        ran = [r for r in ran if r]
        line += f" ({'; '.join(ran)})" if ran else ""
        if isinstance(m.ckpt.get("kd"), dict):
            line += f". KD: {_kv(m.ckpt['kd'])}"
        pruning = m.ckpt.get("pruning")
        if isinstance(pruning, dict):
            # before/after numbers are in the headline; here only how it was pruned
            how = {
                k: v
                for k, v in pruning.items()
                if not k.startswith(("params_", "macs_", "val_accuracy_"))
            }
            if _as_int(how.get("budget")):
                how["budget"] = short_count(int(how["budget"]))
            line += f". Pruning: {_kv(how)}" if how else ""
        out.append(line)
    out.append("")
    teacher_lines = _teacher_lines(col)
    if teacher_lines:
        out += [
            "**Teachers of each KD student** (sha256 checked against files here):",
            "",
            *teacher_lines,
            "",
        ]
    versions = _versions(ckpts)
    if versions:
        out += ["**Versions**: " + versions, ""]
    if col.pipeline and col.pipeline.get("config"):
        out += [
            "<details><summary>Resolved pipeline config</summary>",
            "",
            "```json",
            json.dumps(col.pipeline["config"], indent=2, default=str),
            "```",
            "",
            "</details>",
            "",
        ]
    return out


def _teacher_lines(col: Collection) -> list[str]:
    kds = [m for m in col.models if not m.is_onnx and m.ckpt.get("teachers")]
    if not kds:
        return []
    here = _sha256_index([m for m in col.models if not m.is_onnx and m.role == "teacher"])
    lines = []
    for m in kds:
        for t in m.ckpt["teachers"]:
            match = here.get(str(t.get("sha256")))
            where = f"= `{match.name}` here" if match else "file not in this folder"
            acc = _as_float(t.get("val_accuracy"))
            lines.append(
                f"- `{m.name}` ← {t.get('arch', '?')} `{Path(str(t.get('path', '?'))).name}` "
                f"({_fmt(acc, lambda v: f'{v:.1%} val')}; {where})"
            )
    return lines


def _versions(ckpts: Sequence[Model]) -> str:
    seen: dict[str, set[str]] = {}
    for m in ckpts:
        for k, v in (m.ckpt.get("versions") or {}).items():
            seen.setdefault(k, set()).add(str(v))
    return ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in seen.items())


def missing_notes(col: Collection) -> list[str]:
    notes = []
    ckpts = [m for m in col.models if not m.is_onnx]
    roles = {m.role for m in ckpts}
    # Hints name a real file: the KD student when there is one (the model worth deploying).
    best = next((m for m in ckpts if m.role == "kd"), ckpts[0] if ckpts else col.models[0])
    onnx = next((m for m in col.models if m.is_onnx), None)
    if onnx is None:
        notes.append(f"No ONNX exports here: `distill export onnx {best.path} [--int8]` adds them.")
    if col.bench_file is None:
        target = onnx.path if onnx else best.path
        notes.append(
            "No `bench.json`: no latency column or accuracy-vs-latency plot; "
            f"`distill bench {target} --json {col.run_dir / 'bench.json'}` measures it."
        )
    elif not any(m.latency_ms for m in col.models):
        notes.append("`bench.json` holds no onnxruntime CPU batch-1 latency for the files here.")
    if "kd" in roles and "baseline" not in roles:
        notes.append("No label-only baseline student: the KD gain cannot be measured.")
    if col.pipeline is None:
        notes.append("No `pipeline.json`: stage wall times are not shown.")
    notes += col.problems
    return notes


def latency_note(models: Sequence[Model]) -> list[str]:
    """Where the latency column comes from, and onnxruntime's speed-up over PyTorch eager."""
    timed = [m for m in models if m.bench]
    if not timed:
        return []
    env = timed[0].bench
    note = (
        f"ORT p50: onnxruntime on CPU ({env.get('cpu') or 'unknown CPU'}, "
        f"{env.get('threads', '?')} threads), median latency of one image, from `bench.json`."
    )
    ratios = [f"`{m.name}` {m.bench['speedup']:.1f}x" for m in timed if m.bench.get("speedup")]
    if ratios:
        note += " onnxruntime vs PyTorch eager at batch 1, same run: " + ", ".join(ratios) + "."
    return [note, ""]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png; return the report's path."""
    run_dir = Path(run_dir)
    col = collect_models(run_dir)
    plots = run_dir / PLOTS
    lines = [f"# Distillation report: `{run_dir.resolve().name}`", ""]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"_{len(col.models)} model files, written {now}._", ""]
    headline = kd_gain_lines(col.models) + pruning_lines(col.models)
    lines += [f"- {line}" for line in headline] + ([""] if headline else [])
    lines += [data_note(col.models), "", "## Models", "", render_table(col.models), ""]
    lines += latency_note(col.models)

    size_plot = plot_accuracy_vs_params(col.models, budgets(col), plots / "accuracy_vs_params.png")
    latency_plot = plot_accuracy_vs_latency(col.models, plots / "accuracy_vs_latency.png")
    for title, png in (
        ("Accuracy vs parameters", size_plot),
        ("Accuracy vs latency", latency_plot),
    ):
        if png is not None:
            lines += [f"![{title}]({PLOTS}/{png.name})", ""]

    curve_pngs = [
        (m, plot_curves(m, plots / f"curves_{_slug(m.path.stem)}.png"))
        for m in col.models
        if not m.is_onnx
    ]
    curves = [f"![{m.name} training curves]({PLOTS}/{png.name})" for m, png in curve_pngs if png]
    curve_pngs = [png for _, png in curve_pngs]
    if curves:
        lines += [
            "## Training curves",
            "",
            "Dashed: training (augmented batches); solid: validation. "
            "The star marks the epoch whose weights were kept.",
            "",
        ]
        lines += [line for c in curves for line in (c, "")]

    lines += provenance(col)
    notes = missing_notes(col)
    if notes:
        lines += ["## Missing or skipped", "", *[f"- {n}" for n in notes], ""]
    report = run_dir / "report.md"
    _atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    # Plots of models no longer here would linger unlinked: remove our own stale names only.
    written = {png.name for png in (size_plot, latency_plot, *curve_pngs) if png is not None}
    for old in [*plots.glob("curves_*.png"), *plots.glob("accuracy_vs_*.png")]:
        if old.name not in written:
            old.unlink(missing_ok=True)
    return report
