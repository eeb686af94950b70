"""`SweepSettings`: how a study searches (`distill sweep` flags and a space file's `[sweep]`
table), declared like every setting in distill/settings.py: each default written once, flags
generated from the fields, values checked by `distill.typed.build`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.budget import parse_budget
from distill.typed import (
    MAX_SAMPLER_SEED,
    non_negative,
    positive,
    require,
    seeds,
    setting,
    whole_numbers_as_floats,
)

OBJECTIVES = Literal["top1", "top1+params", "top1+macs", "top1+latency"]
PRUNERS = Literal["median", "hyperband", "none"]


@dataclass(frozen=True)
class SweepSettings:
    trials: int = setting(
        20, "Finished trials the study should hold; the same command later runs only the rest."
    )
    objective: OBJECTIVES = setting(
        "top1",
        "top1 (val top-1, poor trials pruned per epoch) or top1 with params, macs or latency "
        "(ONNX, batch 1): a Pareto front.",
    )
    pruner: PRUNERS = setting(
        "median", "Stops trials whose per-epoch val top-1 is poor (objective top1 only)."
    )
    budget: str = setting("5M", "Parameter budget: a trial over it never trains.")
    mac_ceiling: str | None = setting(
        None, "MACs of one 32x32 forward a trial may not exceed, e.g. 600M (none: no ceiling)."
    )
    workers: int = setting(
        1, "Local worker processes sharing the study: the CPU threads are divided, one GPU each."
    )
    storage: str | None = setting(
        None,
        "The study: a journal file, sqlite:///PATH or postgresql://URL "
        "(every node runs the same command against it).",
        shown="OUT/study.log",
    )
    confirm_top: int = setting(
        0, "Retrain the best K trials with other seeds and score the winner on held-out images."
    )
    seeds: int = setting(2, "Extra seeds per confirmed trial.")
    holdout_size: int = setting(
        1000,
        "Held-out images the winner is scored on (never trained on, validated on or chosen by).",
    )
    heartbeat: int = setting(
        20, "Seconds between a running trial's heartbeats; after 3 missed it is taken up again."
    )
    sampler_seed: int = setting(0, "Seed of the TPE sampler.")

    def __post_init__(self) -> None:
        whole_numbers_as_floats(self)
        positive(self, "trials", "workers", "seeds", "holdout_size", "heartbeat")
        non_negative(self, "confirm_top")
        seeds(self, "sampler_seed", limit=MAX_SAMPLER_SEED)
        for name in ("budget", "mac_ceiling"):
            text = getattr(self, name)
            if text is not None:
                try:
                    parse_budget(text.removesuffix("MAC").removesuffix("MACs"))
                except Exception:
                    require(False, name, f"must be a count like 5M or 800k, got {text!r}")

    @property
    def budget_params(self) -> int:
        return parse_budget(self.budget)

    @property
    def mac_limit(self) -> int | None:
        text = self.mac_ceiling
        return None if text is None else parse_budget(text.removesuffix("MACs").removesuffix("MAC"))

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.objective == "top1" else ["maximize", "minimize"]
