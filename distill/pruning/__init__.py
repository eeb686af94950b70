"""Structured pruning to a parameter budget (SPEC 5).

- `search`: the mechanics on torch-pruning: a pruner that meets a parameter target, the
  geometric schedule of steps, and the proof that a pruned model rebuilds from its plan;
- `run`: `distill prune` itself: checks, teachers, KD fine-tuning and recovery, the record.
"""

from distill.pruning.iterative import prune_checkpoint
from distill.pruning.search import min_params, prune_to_budget, rebuild, scheduled_target

__all__ = ["min_params", "prune_checkpoint", "prune_to_budget", "rebuild", "scheduled_target"]
