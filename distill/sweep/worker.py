"""A sweep worker: ask, run an ordinary training run, report each epoch, tell; until the study
holds its trials. Several workers (processes, nodes) share one study through its storage.

Under torchrun every rank runs this loop, but only rank 0 talks to the study: it asks, and the
other ranks get the trial's params by broadcast; each epoch rank 0 reports and decides whether
to prune, and every rank gets the decision by broadcast, so all ranks stop at the same epoch.

    python -m distill.sweep.worker JOB.json   (what `distill sweep --workers W` starts W times)
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from distill import distributed
from distill.errors import UserError
from distill.memory import TooLarge
from distill.sweep import study as studies
from distill.sweep import trial as trials
from distill.sweep.job import Say, SweepJob
from distill.sweep.space import resolve
from distill.train import TrainingDiverged

# The space proposing this many infeasible points in a row means it has (almost) no others.
MAX_INFEASIBLE_IN_A_ROW = 100


def counted(t: Any) -> bool:
    """Whether a trial counts towards --trials: finished or under way, and trained (an
    infeasible point or a surplus ask is not a trial)."""
    from optuna.trial import TrialState

    if t.user_attrs.get("infeasible") or t.user_attrs.get("surplus"):
        return False
    if t.state == TrialState.FAIL:  # diverged: a result; killed: it is taken up again
        return "error" in t.user_attrs
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _num_classes(job: SweepJob) -> int:
    from distill.checkpoint import load_checkpoint
    from distill.data import load_data
    from distill.settings import DataSettings, build

    if job.teachers:
        return len(load_checkpoint(job.teachers[0])["classes"])
    return load_data(build(DataSettings, job.data)).num_classes


def _next_order(job: SweepJob, study: Any, num_classes: int) -> dict[str, Any] | None:
    """Rank 0: the next trial to train (feasible, not surplus), or None when there is none."""
    from optuna.trial import TrialState

    streak = 0
    while True:
        studies.take_up_abandoned(study, job.settings.heartbeat)
        if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= job.settings.trials:
            return None
        trial = study.ask()
        # Two workers may have asked at once for the last trial: the later one stands down.
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        if sum(counted(t) for t in before) >= job.settings.trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return None
        params = job.space.sample(trial)
        n_params, macs, why = trials.feasibility(job, params["arch"], num_classes)
        trial.set_user_attr("params", n_params)
        trial.set_user_attr("macs", macs)
        if why is not None:
            trial.set_user_attr("infeasible", why)
            study.tell(trial, state=TrialState.PRUNED)
            streak += 1
            if streak >= MAX_INFEASIBLE_IN_A_ROW:
                raise UserError(
                    f"the space proposed {streak} infeasible points in a row ({why}); narrow "
                    "arch to architectures within --budget and --mac-ceiling"
                )
            continue
        retried = study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        number = trial.number if retried is None else retried
        trial.set_user_attr("folder", str(Path(trials.TRIALS) / f"{number:04d}"))
        trial.set_user_attr("worker", studies.worker_id())
        return {"trial": trial, "number": number, "params": params}


def work(job: SweepJob, *, quiet: bool = True, say: Say = print) -> int:
    """Run trials until the study holds `--trials` of them; return how many this worker ran."""
    from distill.device import resolve_device

    distributed.init(resolve_device(job.device).type)
    main = distributed.is_main()
    study = studies.open_study(job.settings, job.storage_url, job.identity) if main else None
    num_classes = _num_classes(job)
    ran = 0
    while True:
        order = _next_order(job, study, num_classes) if main else None
        shared = distributed.broadcast(
            None if order is None else {k: order[k] for k in ("number", "params")}
        )
        if shared is None:
            return ran
        trial = order["trial"] if main else None
        _run_one(job, study, trial, shared["number"], shared["params"], quiet, say)
        ran += 1


def _run_one(
    job: SweepJob,
    study: Any,
    trial: Any,
    number: int,
    params: dict[str, Any],
    quiet: bool,
    say: Say,
) -> None:
    from optuna.trial import TrialState

    folder = trials.trial_folder(job.out, number)
    path = folder / trials.MODEL
    single = len(job.settings.directions) == 1
    epochs = resolve(params, trials.DEFAULT_RECIPE).recipe.epochs
    pruned = False

    def on_epoch(rec: dict[str, Any]) -> bool:
        nonlocal pruned
        decision = False
        if trial is not None and single:
            trial.report(float(rec["val_accuracy"]), int(rec["epoch"]))
            # After the last epoch there is nothing left to save: the trial is complete.
            decision = int(rec["epoch"]) < epochs and trial.should_prune()
        pruned = bool(distributed.broadcast(decision))
        return pruned

    main = trial is not None
    if main:
        resumed = trials.resume_point(path)
        if resumed is not None:
            trial.set_user_attr("resumed_from", resumed)
        shown = ", ".join(f"{k} {_short(v)}" for k, v in params.items())
        say(
            f"trial {trial.number} ({folder}): {shown}"
            + (f"; resuming at {resumed}" if resumed else "")
        )
    beat = studies.beating(study, trial, job.settings.heartbeat) if main else nullcontext()
    try:
        with beat:
            ckpt = trials.train(job, params, path, on_epoch=on_epoch, quiet=quiet)
            values = trials.objective_values(job, ckpt, path) if main and not pruned else None
    except UserError as e:
        # An lr the model cannot take, or sizes this machine cannot hold, are results of the
        # search (each counts as a trial); any other mistake every trial would repeat: the
        # sweep stops with it.
        of_this_point = isinstance(e, (TrainingDiverged, TooLarge))
        if main:
            trial.set_user_attr("error" if of_this_point else "stopped", str(e))
            study.tell(trial, state=TrialState.FAIL)
        if not of_this_point:
            raise
        if main:
            what = "diverged" if isinstance(e, TrainingDiverged) else "cannot fit"
            say(f"trial {trial.number} {what}: {e}")
        return
    if not main:
        return
    for k, v in trials.record(ckpt, folder, job.out).items():
        trial.set_user_attr(k, v)
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        say(f"trial {trial.number} pruned after epoch {ckpt['metrics']['epochs_run']}")
    else:
        study.tell(trial, values)
        say(f"trial {trial.number} finished: val top-1 {values[0]:.2%}")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _stop_with_the_sweep() -> None:
    """A worker ends with the `distill sweep` that started it, even one killed with -9 (which
    cannot stop its children): its trial stops as SIGTERM stops a run, state saved, and the
    same command takes it up again. A rank under torchrun also ends with torchrun."""
    import signal

    from distill import launch
    from distill.sweep.launch import SWEEP_PID

    sweep = os.environ.get(SWEEP_PID, "")
    if sweep.isdigit():

        def lost(pid: int) -> None:
            if distributed.rank() == 0:
                print(
                    f"error: the sweep (pid {pid}) went away; stopping this worker (the same "
                    "command continues its trial)",
                    file=sys.stderr,
                    flush=True,
                )
            os.kill(os.getpid(), signal.SIGTERM)

        launch.watch_parent(lost, pid=int(sweep))
    if distributed.launched():
        launch.stop_with_launcher(distributed.rank())


def main(argv: list[str]) -> int:
    """A worker process: the job file is written by `distill sweep`."""
    import torch

    from distill.resume import TrainingInterrupted

    job = SweepJob.from_json(Path(argv[0]).read_text())
    _stop_with_the_sweep()
    threads = os.environ.get("DISTILL_SWEEP_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    try:
        work(job, quiet=True, say=lambda text: print(text, flush=True))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except TrainingInterrupted:
        print("interrupted: the trial's state is saved in its folder", file=sys.stderr, flush=True)
        return 130
    finally:
        # Every rank leaves the process group together: one tearing it down while another
        # still uses it aborts the process at exit.
        distributed.barrier()
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
