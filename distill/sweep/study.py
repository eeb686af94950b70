"""The study a sweep's workers share, and the storage that is their only coordination.

- A journal file (default `OUT/study.log`; one machine, or a filesystem every node mounts).
- `sqlite:///PATH` and `postgresql://...` through Optuna's RDB storage, with its heartbeat:
  a trial whose worker stopped beating is failed and queued again by
  `RetryHeartbeatStaleTrialCallback`.

The journal has no heartbeat of its own, so distill keeps one rule for every storage: a running
trial records its worker (host, pid) and a heartbeat time; a trial whose worker is gone (a dead
pid on this host) or silent for 3 heartbeats is failed and queued again with the same params, and
the retry carries the original trial's number, so it continues in that trial's folder from its
resumable state.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distill.errors import UserError, first_line
from distill.launch import alive
from distill.sweep.settings import SweepSettings

STUDY_NAME = "distill-sweep"
JOURNAL = "study.log"
MISSED_BEATS = 3  # heartbeats a running trial may miss before it is taken up again
IDENTITY = "sweep_identity"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # ask/tell with our own heartbeat thread is what the warning asks us to do ourselves.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(settings: SweepSettings, out: Path) -> str:
    """What `--storage` names, as written (the default: the journal in the sweep folder)."""
    return settings.storage or str(out / JOURNAL)


def open_storage(url: str, heartbeat: int) -> Any:
    optuna = _optuna()
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        path = Path(url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")):
        raise UserError(
            f"--storage {url}: use a journal file path, sqlite:///PATH or postgresql://URL"
        )
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    try:
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=MISSED_BEATS * heartbeat,
            heartbeat_stale_trial_callback=retry,
            engine_kwargs={"pool_pre_ping": True},
        )
    except ImportError as e:
        raise UserError(f"--storage {url}: {e}; pip install the database's driver") from None
    except Exception as e:  # sqlalchemy's OperationalError: a server that does not answer
        first = first_line(e, 160)
        raise UserError(f"--storage {url} could not be opened: {first}") from None


def open_study(settings: SweepSettings, url: str, identity: Mapping[str, Any]) -> Any:
    """The sweep's study, created on first use; a study made by a sweep with other settings is
    refused (a second worker of the same sweep joins it)."""
    optuna = _optuna()
    storage = open_storage(url, settings.heartbeat)
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        directions=settings.directions,
        sampler=_sampler(settings),
        pruner=_pruner(settings, identity),
        load_if_exists=True,
    )
    theirs = study.user_attrs.get(IDENTITY)
    mine = json.loads(json.dumps(identity))  # the stored form: lists, not tuples
    if theirs is None:
        study.set_user_attr(IDENTITY, mine)
    elif theirs != mine:
        keys = sorted(k for k in set(theirs) | set(mine) if theirs.get(k) != mine.get(k))
        raise UserError(
            f"{url} holds a sweep with other settings ({', '.join(keys)} differ); run the same "
            "command to continue it, or give another --out or --storage"
        )
    return study


def _sampler(settings: SweepSettings) -> Any:
    optuna = _optuna()
    # constant_liar: workers asking at once see each other's running trials as poor, so they
    # do not all try the same point.
    return optuna.samplers.TPESampler(
        seed=settings.sampler_seed, constant_liar=True, multivariate=True
    )


def _pruner(settings: SweepSettings, identity: Mapping[str, Any]) -> Any:
    optuna = _optuna()
    if settings.objective != "top1" or settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        epochs = max(2, int(identity.get("max_epochs", 2)))
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    # Two finished curves to compare with; each epoch of a trial is judged against them.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


# ---------------------------------------------------------------------------------------------
# Trials that nobody runs any more


def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def is_abandoned(trial: Any, heartbeat: int, now: float | None = None) -> bool:
    """A running trial whose worker died on this host, or that has been silent too long."""
    who = trial.user_attrs.get("worker") or {}
    pid = who.get("pid")
    # A pid of this very process: a trial it ran before a crash it survived (it asks anew).
    here = who.get("host") == socket.gethostname() and isinstance(pid, int)
    if here and (not alive(pid) or pid == os.getpid()):
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    now = time.time() if now is None else now
    return beat is not None and now - beat > MISSED_BEATS * heartbeat + 5


def take_up_abandoned(study: Any, heartbeat: int) -> list[int]:
    """Fail every abandoned running trial and queue it again (same params, its intermediate
    values, its original number); return the numbers taken up. Two workers racing for one
    trial: the storage lets one of them finish it, the other moves on."""
    optuna = _optuna()
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)  # the RDB storage's own heartbeat
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    taken = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_abandoned(t, heartbeat):
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue
        retry(study, study._storage.get_trial(t._trial_id))
        taken.append(t.number)
    return taken


@contextmanager
def beating(study: Any, trial: Any, seconds: int) -> Iterator[None]:
    """Record the trial's heartbeat every `seconds` while the block runs (and the RDB
    storage's own, which its stale-trial check reads)."""
    from optuna.storages import RDBStorage

    stop = threading.Event()
    storage = study._storage
    rdb = isinstance(getattr(storage, "_backend", storage), RDBStorage)

    def beat() -> None:
        while True:
            try:
                trial.set_user_attr("heartbeat", time.time())
                if rdb:
                    storage.record_heartbeat(trial._trial_id)
            except Exception:  # a storage hiccup: the next beat tries again
                pass
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
