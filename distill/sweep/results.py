"""What a sweep found: the trials table, the best trial or the Pareto front, the confirmation,
and plots drawn with Optuna's matplotlib visualisations (`distill sweep --show`, `distill
report`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_line
from distill.files import loads_json
from distill.sweep import study as studies
from distill.sweep.confirm import RESULT
from distill.sweep.launch import JOB_FILE
from distill.sweep.trial import MODEL

SECOND = {"top1+params": "params", "top1+macs": "MACs", "top1+latency": "ms/image"}


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / JOB_FILE).is_file()


def load(folder: Path) -> tuple[dict[str, Any], Any]:
    """(the sweep's job record, its study) of a sweep folder."""
    import optuna

    folder = Path(folder)
    if not is_sweep(folder):
        raise UserError(f"{folder} holds no sweep ({JOB_FILE} missing); pass a distill sweep --out")
    job = _record(folder / JOB_FILE, _job_problem)
    url = job["settings"].get("storage") or str(folder / studies.JOURNAL)
    storage = studies.open_storage(url, int(job["settings"].get("heartbeat", 20)))
    try:
        study = optuna.load_study(study_name=studies.STUDY_NAME, storage=storage)
    except KeyError:
        raise UserError(f"{url} holds no distill sweep yet; run distill sweep first") from None
    return job, study


def rows(study: Any, objective: str = "top1") -> list[dict[str, Any]]:
    """One row per trial, in order."""
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("surplus"):
            continue
        note = a.get("infeasible") or a.get("error") or a.get("stopped") or ""
        if a.get("resumed_from"):
            r = a["resumed_from"]
            note = (
                note + "; " if note else ""
            ) + f"resumed at epoch {r['epoch'] + 1} step {r['step']}"
        if t.system_attrs.get("failed_trial") is not None:
            note = (note + "; " if note else "") + f"retry of {t.system_attrs['failed_trial']}"
        settings = {k: v for k, v in t.params.items() if k != "arch"}
        out.append({
            "trial": t.number,
            "state": "infeasible" if a.get("infeasible") else t.state.name.lower(),
            "arch": t.params.get("arch", "?"),
            "params": a.get("params"),
            "macs": a.get("macs"),
            "settings": settings,
            "best_epoch": a.get("best_epoch"),
            "val_top1": a.get("val_top1") if t.values is None else t.values[0],
            "second": t.values[1] if t.values is not None and len(t.values) > 1 else None,
            "folder": a.get("folder"),
            "note": note,
        })  # fmt: skip
    return out


def table(study: Any, objective: str) -> tuple[list[str], list[list[str]]]:
    """The trials table as text cells: (column names, rows), for a terminal or Markdown."""
    from distill.budget import format_count

    study_rows = rows(study, objective)
    keys = varying(study_rows)
    second = SECOND.get(objective)
    columns = ["#", "arch", "params", "MACs", *keys, "best epoch", "val top-1"]
    columns += [second] if second else []
    columns += ["state", "note"]
    cells = []
    for r in study_rows:
        row = [
            str(r["trial"]), r["arch"],
            format_count(r["params"]) if r["params"] else "-",
            format_count(r["macs"]) if r["macs"] else "-",
            *[fmt(r["settings"].get(k, "-")) for k in keys],
            str(r["best_epoch"] or "-"),
            f"{r['val_top1']:.2%}" if isinstance(r["val_top1"], float) else "-",
        ]  # fmt: skip
        if second:
            row.append(fmt(r["second"]) if r["second"] is not None else "-")
        cells.append([*row, r["state"], r["note"]])
    return columns, cells


def summary(study: Any, folder: Path, objective: str) -> list[str]:
    """The best trial or the Pareto front, the confirmation and the winner's path to ONNX, as
    sentences."""
    found = best(study)
    if not found:
        return ["no finished trial yet"]
    second = SECOND.get(objective)
    if len(study.directions) == 1:
        t = found[0]
        lines = [f"best: trial {t.number}, val top-1 {t.values[0]:.2%}, {t.params.get('arch')}, "
                 f"{settings_text(t.params)}"]  # fmt: skip
    else:
        points = [f"trial {t.number} {t.values[0]:.2%} at {fmt(t.values[1])}" for t in found]
        lines = [f"Pareto front (val top-1 vs {second}): " + "; ".join(points)]
    chosen = found[0]
    conf = confirmation(folder)
    if conf:
        for c in conf["candidates"]:
            lines.append(f"confirmed trial {c['trial']}: val top-1 {c['val_mean']:.2%} +- "
                         f"{c['val_std']:.2%} over {len(c['runs'])} seeds")  # fmt: skip
        lines.append(f"winner: trial {conf['winner']}, held-out top-1 {conf['holdout_mean']:.2%}"
                     f" +- {conf['holdout_std']:.2%} on {conf['holdout']}")  # fmt: skip
        base = conf.get("baseline")
        if base:
            won = next(c for c in conf["candidates"] if c["trial"] == conf["winner"])
            gain = 100 * (conf["holdout_mean"] - base["holdout_mean"])
            lines.append(
                f"the recipe's defaults ({base['params']['arch']}, "
                f"{settings_text(base['params'])}): val top-1 {base['val_mean']:.2%}, held-out "
                f"{base['holdout_mean']:.2%} in {base['train_seconds']:.0f} s a run; the winner "
                f"gains {gain:+.1f} points held out in {won['train_seconds']:.0f} s a run"
            )
        chosen = study.trials[conf["winner"]]
    lines.append(f"to ONNX: {export_hint(folder, chosen)}")
    return lines


def settings_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {fmt(v)}" for k, v in params.items() if k != "arch")


def best(study: Any) -> list[Any]:
    """The best trial, or the Pareto front (best top-1 first)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: -t.values[0])
    return [study.best_trial]


def varying(study_rows: list[dict[str, Any]]) -> list[str]:
    """Settings that differ between trials (the table shows only those)."""
    keys: dict[str, set[str]] = {}
    for r in study_rows:
        for k, v in r["settings"].items():
            keys.setdefault(k, set()).add(repr(v))
    return [k for k, vs in keys.items() if len(vs) > 1]


def plots(study: Any, folder: Path, prefix: str = "") -> list[Path]:
    """Optimisation history, Pareto front, parameter importances and top-1 vs params, as PNGs in
    `folder`; those the study cannot draw yet (too few trials) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    folder.mkdir(parents=True, exist_ok=True)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    multi = len(study.directions) > 1
    top1 = (lambda t: t.values[0]) if multi else None
    drawn = []

    def save(name: str, draw) -> None:
        try:
            ax = draw()
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            plt.close("all")
            return
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        path = folder / f"{prefix}{name}.png"
        fig.savefig(path, dpi=110)
        plt.close("all")
        drawn.append(path)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(
            "history",
            lambda: ovm.plot_optimization_history(study, target=top1, target_name="val top-1"),
        )
        if multi:
            save("pareto", lambda: ovm.plot_pareto_front(study))
        searched = _searched(done)
        if len(done) >= 2 and searched:
            save(
                "importances",
                lambda: ovm.plot_param_importances(
                    study, params=searched, target=top1, target_name="val top-1"
                ),
            )
        save("top1_vs_params", lambda: _top1_vs_params(study))
    return drawn


def _searched(done: list[Any]) -> list[str]:
    """The params that were searched (a fixed value is a one-choice categorical)."""
    from optuna.distributions import CategoricalDistribution

    dists = done[0].distributions
    return [
        k
        for k, d in dists.items()
        if not (isinstance(d, CategoricalDistribution) and len(d.choices) == 1)
    ]


def _top1_vs_params(study: Any):
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots()
    for state, marker in ((TrialState.COMPLETE, "o"), (TrialState.PRUNED, "x")):
        ts = [t for t in study.get_trials(deepcopy=False, states=(state,))
              if t.user_attrs.get("params") and not t.user_attrs.get("infeasible")
              and t.user_attrs.get("val_top1") is not None]  # fmt: skip
        ax.scatter([t.user_attrs["params"] / 1e6 for t in ts],
                   [100 * t.user_attrs["val_top1"] for t in ts],
                   marker=marker, label=state.name.lower())  # fmt: skip
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("top-1 vs parameters")
    ax.legend()
    return ax


def confirmation(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RESULT
    return _record(path, _confirmation_problem) if path.is_file() else None


def _record(path: Path, problem) -> dict[str, Any]:
    """A record the sweep wrote, read back checked: a damaged or crafted one is a UserError
    naming it (the sweep command writes it again), never a traceback from what reads it."""
    try:
        record = loads_json(path.read_text())
        why = problem(record)
    except ValueError as e:  # not JSON, not text, nested past the parser's stack
        why = f"not JSON: {first_line(e, 60)}"
    if why:
        raise UserError(
            f"{path} is damaged ({why}); run the same distill sweep command again to rewrite it"
        )
    return record


def _job_problem(job: Any) -> str | None:
    from distill.sweep.settings import SweepSettings
    from distill.typed import build

    if not isinstance(job, dict) or not isinstance(job.get("settings"), dict):
        return "no settings table"
    try:
        build(SweepSettings, job["settings"])
    except UserError as e:
        return str(e)
    return None


def _confirmation_problem(conf: Any) -> str | None:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def run(c: Any, *keys: str) -> bool:
        return isinstance(c, dict) and all(number(c.get(k)) for k in keys)

    candidate = ("trial", "val_mean", "val_std", "train_seconds")
    if not isinstance(conf, dict) or not isinstance(conf.get("candidates"), list):
        return "no candidates"
    if not all(run(c, *candidate) and isinstance(c.get("runs"), list) for c in conf["candidates"]):
        return "a candidate without its numbers"
    if not run(conf, "winner", "holdout_mean", "holdout_std"):
        return "no winner"
    if conf["winner"] not in [c["trial"] for c in conf["candidates"]]:
        return "a winner that is not a candidate"
    base = conf.get("baseline")
    if base is not None and not (
        run(base, "val_mean", "holdout_mean", "train_seconds")
        and isinstance(base.get("params"), dict)
        and "arch" in base["params"]
    ):
        return "a baseline without its numbers"
    return None


def export_hint(folder: Path, trial: Any) -> str:
    path = Path(folder) / trial.user_attrs.get("folder", "?") / MODEL
    return f"distill export onnx {path}"


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def winner(folder: Path) -> tuple[int, dict[str, Any]]:
    """(trial number, params) of a sweep's winner: the confirmed one, else the best trial (two
    objectives: the front's best top-1)."""
    _, study = load(folder)
    conf = confirmation(folder)
    if conf:
        t = study.trials[conf["winner"]]
        return t.number, dict(t.params)
    found = best(study)
    if not found:
        raise UserError(f"the sweep in {folder} has no finished trial yet; run it first")
    return found[0].number, dict(found[0].params)


def as_pipeline_tables(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as pipeline tables: [student] (arch, recipe, recipe fields, augment)
    and [kd]."""
    from distill.sweep.trial import DEFAULT_RECIPE

    student: dict[str, Any] = {
        "arch": params["arch"],
        "recipe": params.get("recipe", DEFAULT_RECIPE),
    }
    kd: dict[str, Any] = {}
    augment: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("arch", "recipe"):
            continue
        group, _, name = key.rpartition(".")
        {"kd": kd, "augment": augment, "": student}[group][name] = value
    if augment:
        student["augment"] = augment
    if "lr" in student:  # the trial's lr was the lr of its own batch (one process)
        from distill.recipes import get_recipe

        student["lr_batch"] = student.get("batch_size", get_recipe(student["recipe"]).batch_size)
    return {"student": student, **({"kd": kd} if kd else {})}
