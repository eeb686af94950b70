"""`distill sweep` from start to end: check everything, open the study, run its workers (in this
process, as W local processes, or each under torchrun), then confirm the best trials.

Local workers divide this machine: each gets the physical cores / W threads, or one GPU each
(a worker under torchrun takes --nproc-per-node GPUs). Their output goes to
`OUT/workers/worker-K.log`; a worker's mistake ends the sweep with its one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.files import atomic_write_text
from distill.sweep import study as studies
from distill.sweep.job import Say, SweepJob

JOB_FILE = "sweep.json"
WORKERS = "workers"
SWEEP_PID = "DISTILL_SWEEP_PID"


def check_before_trials(job: SweepJob) -> None:
    """What would otherwise fail in every trial, checked once: the sweep's folder is outside
    the data, the processes the workers would start fit the machine, at least one architecture
    fits the budget, and the held-out split the confirmation needs exists."""
    from distill.data.sources import check_outside_data
    from distill.launch import check_nproc
    from distill.sweep.confirm import trial_data
    from distill.sweep.trial import feasibility
    from distill.sweep.worker import _num_classes

    check_outside_data(job.out, trial_data(job))
    if job.settings.workers > 1 or job.nproc_per_node > 1:
        warn = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        check_nproc(job.nproc_per_node, job.device, warn, workers=job.settings.workers)
    num_classes = _num_classes(job)
    verdicts = [feasibility(job, a, num_classes) for a in job.space["arch"].choices]
    if all(why is not None for _, _, why in verdicts):
        raise UserError(
            f"no architecture of the space fits: {job.space['arch'].choices[0]} has "
            f"{verdicts[0][2]}; choose smaller ones or raise --budget"
        )
    if job.settings.confirm_top:
        from distill.sweep.confirm import holdout_split

        holdout_split(job)  # refuses, with what to do, when no image is left for it


def run_sweep(job: SweepJob, *, say: Say = print, quiet: bool = True) -> Any:
    """Run the study to `--trials` finished trials (and confirm the best); return the study."""
    check_before_trials(job)
    say(f"sweep {job.out}: {job.settings.trials} trials, study in {job.storage_url}")
    study = studies.open_study(job.settings, job.storage_url, job.identity)
    job.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.out / JOB_FILE, job.to_json() + "\n")
    if job.settings.workers == 1 and job.nproc_per_node == 1:
        from distill.sweep.worker import work

        work(job, quiet=quiet, say=say)
    else:
        run_workers(job, say)
    if job.settings.confirm_top:
        from distill.sweep.confirm import confirm

        confirm(job, study, say=say)
    return study


def worker_env(job: SweepJob, k: int) -> dict[str, str]:
    """Worker k's share of this machine: a GPU (or --nproc-per-node of them), else threads."""
    import torch

    from export.runtime import default_threads

    env = dict(os.environ)
    env[SWEEP_PID] = str(os.getpid())  # the workers stop when this process goes (even by kill -9)
    gpus = torch.cuda.device_count() if job.device != "cpu" else 0
    if gpus:
        n = job.nproc_per_node
        first = (k * n) % gpus
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str((first + i) % gpus) for i in range(n))
    else:
        share = max(1, default_threads() // (job.settings.workers * job.nproc_per_node))
        env["DISTILL_SWEEP_THREADS"] = str(share)
        env["OMP_NUM_THREADS"] = str(share)
    return env


def worker_command(job_file: Path, nproc: int) -> list[str]:
    head = [sys.executable]
    if nproc > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*head, "-m", "distill.sweep.worker", str(job_file)]


def run_workers(job: SweepJob, say: Say = print) -> None:
    logs = job.out / WORKERS
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distill-sweep-") as tmp:
        job_file = Path(tmp) / JOB_FILE
        job_file.write_text(job.to_json())
        procs = []
        for k in range(job.settings.workers):
            log = (logs / f"worker-{k}.log").open("a")
            cmd = worker_command(job_file, job.nproc_per_node)
            procs.append(
                (
                    k,
                    subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(job, k)
                    ),
                    log,
                )
            )
        say(f"{len(procs)} workers started; their output: {logs}/worker-K.log")
        failed = []
        try:
            for k, proc, log in procs:
                code = proc.wait()
                log.close()
                if code != 0:
                    failed.append((k, code))
        finally:
            for _, proc, _ in procs:  # interrupted: the workers stop too (their trials resume)
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
    if failed:
        k, code = failed[0]
        last = _last_line(logs / f"worker-{k}.log")
        raise UserError(f"worker {k} stopped (exit {code}): {last}")


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error: ")
