"""Honest selection: the best of many trials on one validation split is partly luck. The sweep
retrains its best K trials with other seeds (`--confirm-top K --seeds S`), ranks them by the
mean, and scores the winner on held-out images that no trial trained on, validated on or was
chosen by, so the number a user reads is not the maximum of many noisy draws.

The held-out images: the training pool's images outside the trials' `--train-size` subsample
and outside the validation split (seeded, equal per class), else the data's test split.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from distill.data import Dataset, Split
from distill.errors import UserError
from distill.files import atomic_write_text
from distill.sweep import trial as trials
from distill.sweep.job import Say, SweepJob

CONFIRM = "confirm"
RESULT = "confirm.json"
HOLDOUT_SEED = 1  # another draw than any split seed a user is likely to pass


def trial_data(job: SweepJob):
    """The trials' DataSettings: with a teacher, on the teacher's split."""
    from distill.checkpoint import load_checkpoint
    from distill.settings import DataSettings, build, data_for_model

    if job.teachers:
        record = load_checkpoint(job.teachers[0]).get("data") or {}
        return data_for_model(record, job.data, f"teacher {job.teachers[0]}")
    return build(DataSettings, job.data)


def holdout_split(job: SweepJob) -> tuple[Split, Dataset, str]:
    """(held-out images, the trials' data set, where the images come from)."""
    from distill.data import load_data
    from distill.data.cache import cached_decode
    from distill.data.sources import resolve_source
    from distill.data.splits import even_quotas, split_indices

    settings = trial_data(job)
    data = load_data(settings)
    decoded = cached_decode(resolve_source(settings), settings)
    labels = decoded.train.labels
    k = len(decoded.classes)
    train, val = split_indices(
        labels, k, val_size=settings.val_size, train_size=settings.train_size,
        seed=settings.split_seed, class_names=decoded.classes,
    )  # fmt: skip
    unused = torch.ones(len(labels), dtype=torch.bool)
    unused[train] = False
    unused[val] = False
    rest = unused.nonzero().squeeze(1)
    size = job.settings.holdout_size
    if len(rest) >= max(k, min(size, 10 * k)):
        counts = torch.bincount(labels[rest], minlength=k).tolist()
        quotas = even_quotas(counts, min(size, len(rest)))
        gen = torch.Generator().manual_seed(HOLDOUT_SEED)
        picked = []
        for c, q in enumerate(quotas):
            members = rest[labels[rest] == c]
            picked.append(members[torch.randperm(len(members), generator=gen)[:q]])
        idx = torch.cat(picked).sort().values
        return decoded.train.take(idx), data, f"{len(idx):,} training-pool images no trial used"
    if decoded.test is not None:
        return decoded.test, data, f"the data's test split ({len(decoded.test):,} images)"
    raise UserError(
        "--confirm-top needs images no trial sees, and every image is in the trials' training "
        "or validation split: pass a smaller --train-size, or data with a test split"
    )


def score(path: Path, split: Split, data: Dataset, device: str) -> float:
    from distill.checkpoint import load_checkpoint, model_from_checkpoint
    from distill.device import resolve_device
    from distill.evaluation import eval_loader, evaluate

    dev = resolve_device(device)
    model = model_from_checkpoint(load_checkpoint(path)).to(dev)
    return evaluate(model, eval_loader(split, data, dev)).accuracy


def candidates(study: Any, k: int) -> list[Any]:
    """The best k finished trials by val top-1 (two objectives: from the Pareto front)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.values]
    pool = study.best_trials if len(study.directions) > 1 else done
    return sorted(pool, key=lambda t: t.values[0], reverse=True)[:k]


def confirm(job: SweepJob, study: Any, *, say: Say = print) -> dict[str, Any]:
    """Retrain the best trials with seeds 1..S, pick the best mean, score it held out; the
    result is also written to OUT/confirm.json. Rerunning continues where it stopped."""
    split, data, where = holdout_split(job)
    rows = []
    for t in candidates(study, job.settings.confirm_top):
        runs = [{"seed": 0, "path": str(job.out / t.user_attrs["folder"] / trials.MODEL),
                 "val_top1": t.values[0],
                 "train_seconds": t.user_attrs.get("train_seconds")}]  # fmt: skip
        for seed in range(1, job.settings.seeds + 1):
            path = job.out / CONFIRM / f"{t.number:04d}-seed{seed}" / trials.MODEL
            say(f"confirming trial {t.number} with seed {seed} ({path.parent})")
            ckpt = trials.train(job, t.params, path, seed=seed)
            runs.append({"seed": seed, "path": str(path),
                         "val_top1": ckpt["metrics"]["val_accuracy"],
                         "train_seconds": ckpt["metrics"]["train_seconds"]})  # fmt: skip
        vals = [r["val_top1"] for r in runs]
        rows.append({
            "trial": t.number, "params": t.params, "runs": runs,
            "val_mean": statistics.fmean(vals),
            "train_seconds": statistics.fmean(r["train_seconds"] or 0.0 for r in runs),
            "val_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        })  # fmt: skip
    if not rows:
        raise UserError("no finished trial to confirm yet; run the sweep to --trials first")
    winner = max(rows, key=lambda r: r["val_mean"])
    held = [score(Path(r["path"]), split, data, job.device) for r in winner["runs"]]
    base = baseline(job, winner, split, data, say)
    result = {
        "candidates": rows,
        "winner": winner["trial"],
        "holdout": where,
        "holdout_top1": held,
        "holdout_mean": statistics.fmean(held),
        "holdout_std": statistics.stdev(held) if len(held) > 1 else 0.0,
        "baseline": base,
    }
    atomic_write_text(job.out / RESULT, json.dumps(result, indent=1) + "\n")
    return result


def baseline(
    job: SweepJob, winner: dict[str, Any], split: Split, data: Dataset, say: Say
) -> dict[str, Any]:
    """The winner's architecture trained by its named recipe's defaults for as many epochs
    (the same training time, to a few percent), with the same seeds, scored the same way: what
    the search itself gained."""
    keep = ("arch", "recipe", "epochs")
    params = {k: v for k, v in winner["params"].items() if k in keep}
    runs = []
    for seed in range(job.settings.seeds + 1):
        path = job.out / CONFIRM / f"baseline-seed{seed}" / trials.MODEL
        say(f"baseline: {params} with seed {seed} ({path.parent})")
        ckpt = trials.train(job, params, path, seed=seed)
        m = ckpt["metrics"]
        runs.append({"seed": seed, "path": str(path), "val_top1": m["val_accuracy"],
                     "holdout_top1": score(path, split, data, job.device),
                     "train_seconds": m["train_seconds"]})  # fmt: skip
    return {
        "params": params,
        "runs": runs,
        "val_mean": statistics.fmean(r["val_top1"] for r in runs),
        "holdout_mean": statistics.fmean(r["holdout_top1"] for r in runs),
        "train_seconds": statistics.fmean(r["train_seconds"] for r in runs),
    }
