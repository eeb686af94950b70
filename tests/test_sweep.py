"""`distill sweep`: studies whose trials are real (tiny) distill runs, on a journal file, sqlite
and PostgreSQL; two workers; kill -9 then the same command; pruning; infeasible points; a wrong
space file; torchrun with rank 0 alone talking to the study."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TINY_VAL_SIZE, one_line_error
from typer.testing import CliRunner

from distill.cli import app

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
TIMEOUT = 240
runner = CliRunner()

SPACE = """
[space]
arch = ["resnet18@0.05M", "resnet18@0.08M"]
lr = { low = 0.05, high = 0.8, log = true }
epochs = EPOCHS
batch_size = 32
recipe = "quick"
"""


def space_file(tmp_path: Path, epochs: int = 1, text: str = SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text.replace("EPOCHS", str(epochs)))
    return path


def sweep_args(folder: Path, tmp_path: Path, space: Path, *extra: str) -> list[str]:
    return ["sweep", "--data", str(folder), "--val-size", str(TINY_VAL_SIZE), "--cache-dir",
            str(tmp_path.parent / "sweep-cache"), "--device", "cpu", "--space", str(space),
            "--out", str(tmp_path / "sw"), *extra]  # fmt: skip


def study_of(out: Path):
    from distill.sweep.results import load

    return load(out)[1]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, env=ENV)  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tiny_image_folder, tmp_path_factory) -> Path:
    import distill

    out = tmp_path_factory.mktemp("sweep-teacher") / "t.pt"
    distill.train_teacher("resnet18@0.08M", tiny_image_folder, out, recipe="quick", epochs=2,
                          batch_size=32, val_size=TINY_VAL_SIZE, device="cpu",
                          cache_dir=tmp_path_factory.getbasetemp() / "sweep-cache")  # fmt: skip
    return out


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_study_of_three_trials_leaves_checkpoints_that_eval_agrees_with(
    storage, tiny_image_folder, teacher, tmp_path
):
    import distill

    extra = ["--trials", "3", "--teacher", str(teacher), "--pruner", "none"]
    if storage == "sqlite":
        extra += ["--storage", f"sqlite:///{tmp_path / 'study.db'}"]
    result = runner.invoke(
        app, sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), *extra)
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "sw"
    assert (out / "study.log").exists() == (storage == "journal")
    study = study_of(out)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        path = out / t.user_attrs["folder"] / "model.pt"
        assert (path.parent / "model.metrics.csv").exists()
        measured = distill.evaluate(path, cache_dir=tmp_path.parent / "sweep-cache")["accuracy"]
        assert measured == pytest.approx(t.values[0], abs=1e-9)
    assert "val top-1" in result.output and "distill export onnx" in result.output
    if storage == "sqlite":  # the results below read the study alike from either storage
        return
    shown = runner.invoke(app, ["sweep", "--show", str(out)])
    assert shown.exit_code == 0 and "best: trial" in shown.output
    assert (out / "plots" / "history.png").exists()
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "## Sweep" in (out / "report.md").read_text()
    # The pipeline takes the winner's architecture and recipe.
    from distill.pipeline.config import parse

    best = study.best_trial
    config = parse({"teacher": {"arch": "resnet18@0.08M", "recipe": "quick"},
                    "student": {"from_sweep": str(out)}, "data": {"source": "x"},
                    "prune": {"enabled": False}})  # fmt: skip
    assert config.student.arch == best.params["arch"]
    assert config.student.recipe.lr_at(32) == pytest.approx(best.params["lr"])


def test_two_workers_finish_the_trials_between_them_each_once(tiny_image_folder, tmp_path):
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--trials", "4",
                      "--workers", "2")  # fmt: skip
    result = run_cli(args)
    assert result.returncode == 0, result.stderr + result.stdout
    out = tmp_path / "sw"
    trials = [t for t in study_of(out).get_trials() if not t.user_attrs.get("surplus")]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    folders = [t.user_attrs["folder"] for t in trials]
    assert len(set(folders)) == 4
    pids = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(pids) == 2  # both workers took trials
    for f in folders:  # each trial trained once: one epoch line in its metrics
        assert len((out / f / "model.metrics.csv").read_text().splitlines()) == 2


KILLABLE = (
    "import sys, distill.train as t; t.STATE_SAVE_SECONDS = 0; "  # state saved every epoch
    "from distill.cli import main; sys.argv = ['distill', *sys.argv[1:]]; main()"
)


def test_kill_9_then_the_same_command_resumes_the_trial(tiny_image_folder, tmp_path):
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path, epochs=4), "--trials", "2",
                      "--pruner", "none")  # fmt: skip
    state = tmp_path / "sw" / "trials" / "0000" / "model.last.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + TIMEOUT
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert state.exists(), "the trial never saved a resumable state"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    result = run_cli(args)
    assert result.returncode == 0, result.stderr + result.stdout
    trials = study_of(tmp_path / "sw").get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    killed, *rest = trials
    assert killed.state == TrialState.FAIL
    retry = next(t for t in rest if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    at = retry.user_attrs["resumed_from"]
    assert (at["epoch"], at["step"]) > (0, 0)  # taken up from its state, not from step 0
    assert retry.user_attrs["folder"] == killed.user_attrs["folder"]
    epochs = (tmp_path / "sw" / killed.user_attrs["folder"] / "model.metrics.csv").read_text()
    assert [line.split(",")[0] for line in epochs.splitlines()[1:]] == ["1", "2", "3", "4"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2


def test_workers_stop_when_the_sweep_is_killed_with_9(tiny_image_folder, tmp_path):
    # kill -9 cannot pass anything on to the workers: they notice the sweep is gone and stop
    # as SIGTERM stops a trial (the same command continues it), instead of training on alone.
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path, epochs=500), "--trials",
                      "2", "--workers", "2", "--pruner", "none")  # fmt: skip
    logs = [tmp_path / "sw" / "workers" / f"worker-{k}.log" for k in (0, 1)]
    proc = subprocess.Popen([sys.executable, "-m", "distill", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            if all(log.exists() and "trial" in log.read_text() for log in logs):
                break
            time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        workers = [int(pid) for pid in children.stdout.split()]
        assert len(workers) == 2, children
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(_running(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_running(pid) for pid in workers), "a worker trained on alone"
    finally:
        proc.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    for log in logs:
        assert "the sweep (pid" in log.read_text() and "went away" in log.read_text()


def _running(pid: int) -> bool:
    from distill.launch import alive

    return alive(pid)


def finished_curves(study, job, n: int = 2) -> None:
    """n finished trials whose val top-1 was 100% from the first epoch: any real tiny trial's
    curve is clearly worse."""
    params = {"arch": "resnet18@0.05M", "lr": 0.1, "epochs": 3, "batch_size": 16,
              "recipe": "quick"}  # fmt: skip
    dists = {d.name: optuna.distributions.CategoricalDistribution(list(d.choices))
             if d.kind in ("choice", "fixed") else
             optuna.distributions.FloatDistribution(d.low, d.high, log=d.log)
             for d in job.space.dims}  # fmt: skip
    for _ in range(n):
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=1.0,
            intermediate_values={1: 1.0, 2: 1.0, 3: 1.0},
        ))  # fmt: skip


PRUNABLE = SPACE.replace("batch_size = 32", "batch_size = 16").replace("low = 0.05", "low = 1e-4")


def test_pruning_cuts_a_poor_curve_and_an_infeasible_point_never_trains(
    tiny_image_folder, tmp_path
):
    from distill.sweep.job import make_job
    from distill.sweep.study import open_study

    space = space_file(tmp_path, 3, PRUNABLE.replace('"resnet18@0.08M"', '"resnet18"'))
    args = sweep_args(tiny_image_folder, tmp_path, space, "--trials", "3", "--budget", "1M")
    job = make_job(tmp_path / "sw", str(space), {"trials": 3, "budget": "1M"},
                   {"source": str(tiny_image_folder), "val_size": 20}, [], "cpu", 1)  # fmt: skip
    study = open_study(job.settings, job.storage_url, job.identity)
    finished_curves(study, job)
    for arch in ("resnet18", "resnet18@0.05M"):  # over the budget; then a poor lr
        study.enqueue_trial({"arch": arch, "lr": 0.0004, "epochs": 3, "batch_size": 16,
                             "recipe": "quick"})  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    trials = study_of(tmp_path / "sw").get_trials()
    infeasible, poor = trials[2], trials[3]
    assert infeasible.user_attrs["infeasible"].startswith("11,")
    assert not (tmp_path / "sw" / "trials" / "0002").exists()
    assert "infeasible" in result.output
    assert poor.state == TrialState.PRUNED and poor.user_attrs["epochs_run"] < 3
    assert len(trials) == 4  # the infeasible point did not count as a trial


def test_a_wrong_space_file_is_one_line_before_any_trial(tiny_image_folder, tmp_path):
    cases = {
        'arch = ["resnet18@0.05M"]\nlr = { low = 0.8, high = 0.05 }': "below high",
        'arch = ["resnet18@0.05M"]\nweight_decays = 0.1': "did you mean weight_decay",
        'arch = ["resnet99"]': "resnet99",
        'arch = ["resnet18@0.05M"]\nrecipe = ["quick", "fastest"]': "unknown recipe",
        'arch = ["resnet18@0.05M"]\nbatch_size = { low = 16.5, high = 64 }': "integer",
        'arch = ["resnet18@0.05M"]\nlr = -1': "greater than 0",
        'arch = ["resnet18@0.05M"]\n[space.kd]\nmethod = ["hinton", "fitnet"]': "kd.method",
    }
    for body, expected in cases.items():
        space = tmp_path / "bad.toml"
        space.write_text("[space]\n" + body + "\n")
        one_line_error(runner.invoke(app, sweep_args(tiny_image_folder, tmp_path, space)), expected)
        assert not (tmp_path / "sw").exists()
    inside = ["--out", str(tiny_image_folder / "sw")]  # its plots would join the data
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path))
    one_line_error(runner.invoke(app, [*args, *inside]), "inside the data folder")
    assert not (tiny_image_folder / "sw").exists()


def test_workers_that_would_take_the_machine_are_refused_before_any_trial(
    tiny_image_folder, tmp_path, monkeypatch
):
    import distill.launch
    import distill.memory

    cores = distill.launch.physical_cores()
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--workers")
    line = one_line_error(runner.invoke(app, [*args, str(4 * cores + 1)]), "--workers")
    assert f"{4 * cores + 1:,} processes on {cores} cores" in line
    # As many as the cores allow, but not the memory: 200 MiB each is more than 1 GiB.
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2**30)
    workers = min(4 * cores, 8)
    one_line_error(runner.invoke(app, [*args, str(workers)]), f"{workers} processes needs at least")
    assert not (tmp_path / "sw" / "workers").exists()


def test_confirmation_retrains_the_best_and_scores_it_on_images_no_trial_saw(
    tiny_image_folder, tmp_path
):
    from distill.sweep.results import confirmation

    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--trials", "2",
                      "--confirm-top", "1", "--seeds", "1")  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    conf = confirmation(tmp_path / "sw")
    (best,) = conf["candidates"]
    assert [r["seed"] for r in best["runs"]] == [0, 1] and conf["winner"] == best["trial"]
    assert conf["holdout"].startswith("the data's test split")  # no trial trained or chose on it
    assert len(conf["holdout_top1"]) == 2 and 0 <= conf["holdout_mean"] <= 1
    assert conf["baseline"]["params"]["arch"] == best["params"]["arch"]
    shown = runner.invoke(app, ["sweep", "--show", str(tmp_path / "sw")])
    assert f"winner: trial {best['trial']}, held-out top-1" in shown.output, shown.output


def test_a_point_the_memory_cannot_hold_fails_its_trial_and_the_sweep_goes_on(
    tiny_image_folder, tmp_path, monkeypatch
):
    # Sizes are searched (arch, batch): that one combination does not fit this machine is a
    # result for that point, like a divergence, not a mistake that stops the sweep.
    import distill.memory

    # Room for the tiny data (1.2 MB), not for a step of 32 images (24 MiB of activations).
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 8 * 2**20)
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--trials", "2")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("cannot fit: a training step of") == 2, result.output
    trials = study_of(tmp_path / "sw").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all("needs at least" in t.user_attrs["error"] for t in trials)


def test_damaged_sweep_records_are_one_line_naming_them(tmp_path):
    from distill.errors import UserError
    from distill.sweep.results import confirmation

    folder = tmp_path / "sw"
    folder.mkdir()
    for body in ("{bad", "[" * 100_000 + "]" * 100_000, '{"settings": 5}',
                 '{"settings": {"objective": "best"}}'):  # fmt: skip
        (folder / "sweep.json").write_text(body)
        one_line_error(
            runner.invoke(app, ["sweep", "--show", str(folder)]), "sweep.json is damaged"
        )
    no_candidate = '{"candidates": [], "winner": 3, "holdout_mean": 0.5, "holdout_std": 0}'
    for body in ("[]", '{"candidates": [{"trial": 1}], "winner": 1}', no_candidate):
        (folder / "confirm.json").write_text(body)
        with pytest.raises(UserError, match="confirm.json is damaged"):
            confirmation(folder)
    good = {"candidates": [{"trial": 3, "params": {}, "runs": [], "val_mean": 0.5,
                            "val_std": 0.0, "train_seconds": 1.0}],
            "winner": 3, "holdout": "100 images", "holdout_mean": 0.5, "holdout_std": 0.0,
            "baseline": {"params": {"arch": "a"}, "runs": [], "val_mean": 0.4,
                         "holdout_mean": 0.4, "train_seconds": 1.0}}  # fmt: skip
    (folder / "confirm.json").write_text(json.dumps(good))
    assert confirmation(folder) == good


def test_a_space_file_nested_past_the_parser_is_one_line(tiny_image_folder, tmp_path):
    space = tmp_path / "deep.toml"
    space.write_text("[space]\narch = " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(runner.invoke(app, sweep_args(tiny_image_folder, tmp_path, space)), "TOML")


def test_another_sweep_on_the_same_folder_is_refused(tiny_image_folder, tmp_path):
    from distill.errors import UserError
    from distill.sweep.job import make_job
    from distill.sweep.study import open_study

    data = {"source": str(tiny_image_folder), "val_size": 20}
    one = make_job(tmp_path / "sw", str(space_file(tmp_path)), {}, data, [], "cpu", 1)
    open_study(one.settings, one.storage_url, one.identity)
    open_study(one.settings, one.storage_url, one.identity)  # a second worker: welcome
    other = make_job(tmp_path / "sw", str(space_file(tmp_path)), {"objective": "top1+params"},
                     data, [], "cpu", 1)  # fmt: skip
    with pytest.raises(UserError, match="other settings"):
        open_study(other.settings, other.storage_url, other.identity)


def test_under_torchrun_rank_0_reports_and_every_rank_prunes(tiny_image_folder, tmp_path):
    from distill.sweep.job import make_job
    from distill.sweep.study import open_study

    space = space_file(tmp_path, 3, PRUNABLE)
    job = make_job(tmp_path / "sw", str(space), {"trials": 4},
                   {"source": str(tiny_image_folder), "val_size": 20}, [], "cpu", 2)  # fmt: skip
    study = open_study(job.settings, job.storage_url, job.identity)
    finished_curves(study, job)
    for lr in (0.0004, 0.0004):
        study.enqueue_trial({"arch": "resnet18@0.05M", "lr": lr, "epochs": 3, "batch_size": 16,
                             "recipe": "quick"})  # fmt: skip
    args = sweep_args(tiny_image_folder, tmp_path, space, "--trials", "4", "--nproc-per-node", "2")
    result = run_cli(args)
    assert result.returncode == 0, result.stderr + result.stdout
    trials = study_of(tmp_path / "sw").get_trials()[2:]
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:  # one report per epoch run: rank 0 alone talks to the study
        assert sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1))
        # Both ranks stopped at the same epoch (else the next trial would have deadlocked).
        assert t.user_attrs["epochs_run"] < 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server from the distribution's packages (as root: run as the
    postgres user); skipped with the reason where none can be started."""
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        pytest.skip("no PostgreSQL server installed (apt-get install postgresql)")
    bin_dir = bins[-1]
    home = Path(tempfile.mkdtemp(prefix="distill-pg-"))  # pytest's folders are root's alone
    data, user = home / "data", []
    if os.geteuid() == 0:
        try:
            import pwd

            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to start a server as")
        os.chown(home, pg.pw_uid, pg.pw_gid)
        user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    try:
        init = subprocess.run([*user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                               "-U", "postgres"], capture_output=True, text=True)  # fmt: skip
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-200:]}")
        start = subprocess.run([*user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                                str(home / "log"), "-o", f"-p {port} -k {home} -c "
                                "listen_addresses=127.0.0.1", "start"],
                               capture_output=True, text=True)  # fmt: skip
        if start.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-200:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_finish_a_postgresql_study(postgres, tiny_image_folder, tmp_path):
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--trials", "2",
                      "--workers", "2", "--storage", postgres)  # fmt: skip
    result = run_cli(args)
    assert result.returncode == 0, result.stderr + result.stdout
    trials = [t for t in study_of(tmp_path / "sw").get_trials() if not t.user_attrs.get("surplus")]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_the_scaling_bench_times_the_study_engine_per_trial(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from sweep_scaling import engine_seconds

    seconds = engine_seconds(tmp_path, trials=3, epochs=2)
    assert 0 < seconds["median"] <= seconds["max"]


def test_two_objectives_give_a_pareto_front(tiny_image_folder, tmp_path):
    args = sweep_args(tiny_image_folder, tmp_path, space_file(tmp_path), "--trials", "2",
                      "--objective", "top1+params")  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = study_of(tmp_path / "sw")
    assert len(study.directions) == 2 and study.best_trials
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert t.values[1] == t.user_attrs["params"]  # the second objective: its parameters
    assert "Pareto front" in result.output
    assert (tmp_path / "sw" / "plots" / "pareto.png").exists()


def test_the_documented_spaces_read_as_written(tmp_path):
    import re

    from distill.sweep.job import read_space_file

    issue = ('[space]\narch = ["resnet18@0.2M", "resnet18@0.4M"]\n'
             'lr = { low = 0.05, high = 0.8, log = true }\nepochs = 2\nbatch_size = 64\n'
             'recipe = "quick"\n')  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"```\n(\[space\]\n.*?)```", readme, re.DOTALL).group(1)
    for text in (issue, shown):
        (tmp_path / "s.toml").write_text(text)
        space, _ = read_space_file(str(tmp_path / "s.toml"))
        assert space["arch"].kind == "choice" and space["lr"].log
    for preset in ("cpu", "gpu"):
        assert read_space_file(preset)[0].names()[0] == "arch"
