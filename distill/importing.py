"""`distill teacher import`: a torchvision or timm model the user already has (their own state
dict; nothing is downloaded), its classifier replaced for the data's classes, fine-tuned on the
data, and written as a distill teacher checkpoint like any other: self-describing, read with
`weights_only=True`, its normalisation (the data's) recorded. Students then learn from it as
from any teacher, at its input size or their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from distill.data import Dataset, DataSettings, load_data
from distill.device import seed_everything
from distill.files import file_sha256
from distill.run_guard import training_run
from distill.settings import Recipe, RunSettings
from distill.train import fit
from teachers.imported import parse_spec, read_state_dict, with_weights


def import_teacher(
    spec: str,
    weights: str | Path,
    data: DataSettings | Dataset,
    recipe: Recipe,
    run: RunSettings,
    *,
    console: Console | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Fine-tune `spec` (`torchvision:NAME` or `timm:NAME`) from the state dict in `weights` on
    `data`'s labels; return the teacher checkpoint (also written to `run.out`)."""
    weights = Path(weights)

    def checks() -> tuple[str, str, dict[str, Any]]:
        # A bad name or file fails before any data is decoded (the classifier's size does not
        # matter to the check: it is the one part replaced).
        source, name = parse_spec(spec)
        state = read_state_dict(weights)
        with_weights(source, name, state, weights, num_classes=2)
        return source, name, state

    reads = [("the weights it imports", weights)]
    with training_run(run, checks, reads) as (source, name, state):
        dataset = data if isinstance(data, Dataset) else load_data(data)
        seed_everything(run.seed)  # the new classifier's initialisation
        model = with_weights(source, name, state, weights, dataset.num_classes)
        del state
        origin = {
            "weights": str(weights.resolve()),
            "sha256": file_sha256(weights),
            "architecture": f"{source}:{name}",
        }
        return fit(
            model,
            dataset,
            recipe,
            run,
            kind="teacher",
            arch=f"{source}:{name}",
            meta={"origin": origin},
            console=console,
            stop_after_steps=stop_after_steps,
        )
