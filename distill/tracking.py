"""Optional experiment tracking in MLflow (`--mlflow URI`, off by default): one MLflow run per
training output, holding its settings as params, every epoch's metrics as they come, the final
metrics, the checkpoint and, when it is exported later, its ONNX files (the checkpoint records
its tracking run so `distill export onnx` adds them to the same run). A pipeline is one run
holding its settings, bench.json and report.md, with each training stage's run nested under it
and tagged with the stage's name.

MLflow because it is the tracking server most teams run themselves; `sqlite:///runs.db` works
offline, with the artefacts in a folder beside the database. The client API is used directly
(no global "active run"), so a library caller's own MLflow runs are left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_line

EXPERIMENT = "distill"
# `distill pipeline --mlflow` and the pipeline config's `mlflow` key (here: the CLI imports it
# without the pipeline and torch).
PIPELINE_HELP = (
    "Also track the pipeline in MLflow: one run holding the settings, bench.json and report.md, "
    "and nested under it one run per training stage (params, per-epoch metrics, the checkpoint, "
    "its ONNX files); a server URL or sqlite:///runs.db offline (pip install distill[mlflow])."
)
METRICS = ("lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_s")
# What MLflow takes in one request (mlflow.utils.validation): a pipeline has over 100 settings,
# and a run resumed late logs every earlier epoch's metrics at once.
MAX_PARAMS, MAX_METRICS = 100, 1000


def check_mlflow() -> None:
    """Refuse --mlflow before any work when the optional extra is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise UserError(
            "--mlflow needs the mlflow package: pip install 'distill[mlflow]'"
        ) from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client, uri: str) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artefacts beside the database, not in the working dir
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve()
        location = location.as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


class Tracker:
    """One MLflow run: params at the start, metrics per epoch, the output files at the end.
    `parent` nests it under another run (a pipeline's); `stage` names the pipeline stage."""

    def __init__(
        self,
        uri: str,
        name: str,
        params: dict[str, Any],
        *,
        parent: str | None = None,
        stage: str | None = None,
    ) -> None:
        from mlflow.entities import Param

        check_mlflow()
        self.uri = uri
        tags = {}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent  # MLflow's own tag: its UI nests the run
        if stage is not None:
            tags["distill.stage"] = stage
        try:
            self.client = _client(uri)
            run = self.client.create_run(_experiment(self.client, uri), run_name=name, tags=tags)
        except Exception as e:
            reason = first_line(e, 120)
            raise UserError(
                f"--mlflow {uri}: cannot reach the tracking store ({reason}); pass a running "
                "server's URL or sqlite:///runs.db"
            ) from None
        self.run_id = run.info.run_id
        flat = _flatten(params)
        # MLflow caps a param's value at 6000 characters; none of ours comes close.
        self._log(params=[Param(k, str(v)) for k, v in sorted(flat.items())])
        self._logged = 0

    def _log(self, *, params: Sequence[Any] = (), metrics: Sequence[Any] = ()) -> None:
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS])
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS])

    @property
    def record(self) -> dict[str, str]:
        """What the checkpoint says about its tracking run."""
        return {"mlflow_uri": self.uri, "run_id": self.run_id}

    def epochs(self, history: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = history[self._logged :]
        metrics = [
            Metric(key, float(row[key]), now, int(row["epoch"]))
            for row in rows
            for key in METRICS
            if key in row
        ]
        self._log(metrics=metrics)
        self._logged = len(history)

    def finish(self, files: Iterable[Path], metrics: Mapping[str, Any] | None = None) -> None:
        """The final `metrics` (as final_NAME) and `files` logged; the run marked finished."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = [
            Metric(f"final_{k}", float(v), now, 0)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        self._log(metrics=final)
        for f in files:
            self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED")

    def abandon(self) -> None:
        """The run stopped before its checkpoint (interrupted, diverged, a full disk)."""
        self.client.set_terminated(self.run_id, "KILLED")


def log_files(record: dict[str, Any] | None, files: list[Path]) -> bool:
    """Add exported files to the tracking run a checkpoint records; False when it records none
    or MLflow is not installed here (the export itself never fails for it)."""
    if not record or not record.get("run_id"):
        return False
    try:
        client = _client(record["mlflow_uri"])
        for f in files:
            client.log_artifact(record["run_id"], str(f), artifact_path="onnx")
    except ImportError:
        return False
    except Exception as e:  # the file is written; tracking is a copy, not the result
        from distill.console import note

        names = ", ".join(f.name for f in files)
        note(f"could not add {names} to MLflow run {record['run_id']}: {e}")
        return False
    return True


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out
