"""What `distill sweep` gets from more workers, and what the study engine costs a trial, measured
in one run.

1. Trials per hour: the same small sweep (label-only trials, a fixed number of steps each) with
   1 and with 2 local workers on a journal file; the ratio is the speed-up. Two workers on two
   cores share the cores (each gets one thread), so expect little gain there; on a GPU node each
   worker has a GPU of its own.
2. Engine overhead: everything a worker asks of the study for one trial (taking up abandoned
   trials, ask, sampling the space, the trial's attributes, one report and pruning decision per
   epoch, a heartbeat every 20 s, tell), timed on a journal file beside the trials of step 1,
   against a one-minute trial. SPEC 11: under 2%.

    python bench/sweep_scaling.py                        # a generated image folder, CPU
    python bench/sweep_scaling.py --data ../shared/data/cifar10-jpeg --train-size 2000 \\
        --val-size 500 --trials 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPACE = """
[space]
arch = ["resnet18@0.1M", "resnet18@0.2M"]
lr = { low = 0.05, high = 0.8, log = true }
epochs = EPOCHS
batch_size = 64
recipe = "quick"
"""
TRIAL_SECONDS = 60.0  # the trial length the overhead is judged against (SPEC 11)
HEARTBEAT = 20  # SweepSettings.heartbeat's default


def sweep_seconds(
    data: str, out: Path, space: Path, trials: int, workers: int, extra: list[str]
) -> float:
    cmd = [sys.executable, "-m", "distill", "sweep", "--data", data, "--space", str(space),
           "--trials", str(trials), "--workers", str(workers), "--pruner", "none",
           "--device", "cpu", "--out", str(out), *extra]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed: {done.stderr.strip()[-400:]}")
    return time.perf_counter() - t0


def engine_seconds(folder: Path, trials: int, epochs: int) -> dict[str, float]:
    """Seconds of study work per trial on a journal file, as a worker does it."""
    from distill.sweep import study as studies
    from distill.sweep.job import make_job
    from distill.sweep.worker import counted

    space = folder / "space.toml"
    space.write_text(SPACE.replace("EPOCHS", str(epochs)))
    job = make_job(folder / "engine", str(space), {"trials": trials}, {"source": "x"}, [], "cpu", 1)
    study = studies.open_study(job.settings, job.storage_url, job.identity)
    beats = int(TRIAL_SECONDS // HEARTBEAT)
    per_trial = []
    for _ in range(trials):
        t0 = time.perf_counter()
        studies.take_up_abandoned(study, HEARTBEAT)
        sum(counted(t) for t in study.get_trials(deepcopy=False))
        trial = study.ask()
        params = job.space.sample(trial)
        for key, value in (("params", 1), ("macs", 1), ("folder", "x"), ("worker", {"pid": 1})):
            trial.set_user_attr(key, value)
        for _ in range(beats):
            trial.set_user_attr("heartbeat", time.time())
        for epoch in range(1, epochs + 1):
            trial.report(0.5, epoch)
            trial.should_prune()
        for key in ("best_epoch", "val_top1", "train_seconds", "epochs_run", "params", "macs"):
            trial.set_user_attr(key, 1)
        study.tell(trial, 0.5 + 0.01 * len(params))
        per_trial.append(time.perf_counter() - t0)
    return {"median": statistics.median(per_trial), "max": max(per_trial)}


def tiny_folder(root: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import write_image_folder

    classes = tuple(f"c{i}" for i in range(10))
    return str(write_image_folder(root / "images", classes, {"train": 120}))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="Data folder (default: a generated 10-class image folder).")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--engine-trials", type=int, default=30)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        data = args.data or tiny_folder(root)
        space = root / "space.toml"
        space.write_text(SPACE.replace("EPOCHS", str(args.epochs)))
        extra = ["--val-size", str(args.val_size)]
        if not args.data:  # a real data set keeps its decoded cache where every run finds it
            extra += ["--cache-dir", str(root / "cache")]
        if args.train_size:
            extra += ["--train-size", str(args.train_size)]
        sweep_seconds(data, root / "warm", space, 1, 1, extra)  # decodes and caches the data
        one = sweep_seconds(data, root / "one", space, args.trials, 1, extra)
        two = sweep_seconds(data, root / "two", space, args.trials, 2, extra)
        engine = engine_seconds(root, args.engine_trials, args.epochs)
    result = {
        "trials": args.trials,
        "trials_per_hour_1_worker": 3600 * args.trials / one,
        "trials_per_hour_2_workers": 3600 * args.trials / two,
        "speedup_2_workers": one / two,
        "engine_seconds_per_trial": engine["median"],
        "engine_seconds_per_trial_max": engine["max"],
        "engine_overhead_of_a_1_min_trial": engine["median"] / TRIAL_SECONDS,
    }
    print(json.dumps(result, indent=1))
    share = 100 * result["engine_overhead_of_a_1_min_trial"]
    print(
        f"2 workers / 1 worker: {result['speedup_2_workers']:.2f}x trials per hour; study engine "
        f"{engine['median'] * 1000:.0f} ms per trial = {share:.2f}% of a one-minute trial"
    )
    return result


if __name__ == "__main__":
    main()
