"""Per-class accuracy and confusion matrices of the teacher, baseline and KD student, and the KD
gain per class, from each checkpoint's `metrics["per_class"]` and `metrics["confusion"]`
(validation split; per_class[i] is the top-1 of true class i; confusion rows are true classes,
columns predicted) and its `classes`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distill.report.headline import kd_pairs
from distill.report.records import Model, as_float
from distill.report.text import code, plain

ROLES_SHOWN = ("teacher", "baseline", "kd")  # the models whose classes the issue compares
WIDE = 20  # more classes than this: the table folds away, and cells lose their numbers


@dataclass(frozen=True)
class ClassScores:
    """One checkpoint's validation accuracy per class."""

    model: Model
    classes: tuple[str, ...]
    per_class: tuple[float, ...]  # [0, 1], index = class
    confusion: tuple[tuple[float, ...], ...] | None  # counts, rows true, columns predicted

    def row_fractions(self) -> list[list[float]]:
        """Each true class's predictions as fractions of that class (rows sum to 1)."""
        assert self.confusion is not None
        return [[c / sum(row) if sum(row) else 0.0 for c in row] for row in self.confusion]


def _matrix(value: object, n: int) -> tuple[tuple[float, ...], ...] | None:
    if not isinstance(value, list) or len(value) != n:
        return None
    rows = []
    for row in value:
        cells = [as_float(c) for c in row] if isinstance(row, list) else []
        if len(cells) != n or any(c is None or c < 0 for c in cells):
            return None
        rows.append(tuple(cells))
    return tuple(rows)


def read_scores(m: Model) -> tuple[ClassScores | None, str | None]:
    """The model's per-class numbers, or None and why they are not shown (None: nothing to say)."""
    metrics = m.ckpt.get("metrics") or {}
    raw_pc, raw_conf = metrics.get("per_class"), metrics.get("confusion")
    if raw_pc is None and raw_conf is None:
        return None, (
            f"{code(m.name)} records no per-class accuracy or confusion matrix (a checkpoint "
            "written before distill kept them): it is left out of the per-class plots."
        )
    classes = [str(c) for c in m.ckpt.get("classes") or []]
    n = len(classes) or len(raw_pc or raw_conf or [])
    classes = classes or [str(i) for i in range(n)]
    confusion = _matrix(raw_conf, n) if raw_conf is not None else None
    per_class = [as_float(v) for v in raw_pc] if isinstance(raw_pc, list) else []
    if len(per_class) != n or any(v is None for v in per_class):
        per_class = []
    if not per_class and confusion is not None:  # the diagonal says the same
        per_class = [row[i] / sum(row) if sum(row) else 0.0 for i, row in enumerate(confusion)]
    if not per_class:
        return None, (
            f"{code(m.name)}: its per-class accuracy does not match its {n} classes; not shown."
        )
    note = None
    if confusion is None:
        what = "records no confusion matrix" if raw_conf is None else "has a malformed confusion"
        note = f"{code(m.name)} {what}: no heatmap for it."
    return ClassScores(m, tuple(classes), tuple(per_class), confusion), note


def collect_scores(models: Sequence[Model]) -> tuple[list[ClassScores], list[str]]:
    """Scores of the teacher, baseline and KD student checkpoints, and one note per gap."""
    scores, notes = [], []
    for m in models:
        if m.is_onnx or m.role not in ROLES_SHOWN:
            continue
        s, note = read_scores(m)
        scores += [s] if s else []
        notes += [note] if note else []
    return scores, notes


def gains(scores: Sequence[ClassScores]) -> list[tuple[ClassScores, ClassScores, list[float]]]:
    """(KD student, its baseline, KD minus baseline per class in points) for each KD student
    whose label-only baseline (same arch) has per-class numbers over the same classes."""
    by_name = {s.model.name: s for s in scores}
    out = []
    for kd, base in kd_pairs([s.model for s in scores]):
        k, b = by_name.get(kd.name), by_name.get(base.name) if base else None
        if k and b and k.classes == b.classes:
            out.append(
                (k, b, [100 * (x - y) for x, y in zip(k.per_class, b.per_class, strict=True)])
            )
    return out


def gain_line(kd: ClassScores, base: ClassScores, gain: Sequence[float]) -> str:
    """ "KD vs baseline per class: better on 7 of 10 classes, from -1.0 (dog) to +3.0 (ship)"."""
    lo, hi = (
        min(range(len(gain)), key=gain.__getitem__),
        max(range(len(gain)), key=gain.__getitem__),
    )
    better = sum(g > 0 for g in gain)
    return (
        f"Per class, {code(kd.model.name)} vs {code(base.model.name)}: better on {better} of "
        f"{len(gain)} classes, from {gain[lo]:+.1f} points ({plain(kd.classes[lo])}) to "
        f"{gain[hi]:+.1f} ({plain(kd.classes[hi])})."
    )


def class_table(scores: Sequence[ClassScores]) -> list[str]:
    """class | one accuracy column per model | one KD gain column per KD student."""
    if not scores:
        return []
    classes = scores[0].classes
    same = [s for s in scores if s.classes == classes]  # a model on other classes: own plots only
    pairs = gains(same)
    head = ["class", *[f"{code(s.model.name)}" for s in same]]
    head += [f"KD gain {code(k.model.name)} (points)" for k, _, _ in pairs]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for i, name in enumerate(classes):
        cells = [plain(name), *[f"{s.per_class[i]:.1%}" for s in same]]
        cells += [f"{g[i]:+.1f}" for _, _, g in pairs]
        rows.append("| " + " | ".join(cells) + " |")
    if len(classes) > WIDE:
        return ["<details><summary>Per-class table</summary>", "", *rows, "", "</details>", ""]
    return [*rows, ""]
