"""Launching several processes: the environment is checked when it is used, impossible process
counts are refused before any rank starts, a mistake or a NaN on one rank ends every rank with one
line, the data is decoded once, the run folder must be shared, ranks die with their launcher and a
lost peer is one line naming it. Two gloo ranks on the CPU; the launcher's cases use
`--nproc-per-node`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_VAL_SIZE, one_line_error
from typer.testing import CliRunner

from distill.cli import app
from distill.files import sweep_stale

WORKER = Path(__file__).with_name("rank_worker.py")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 180
runner = CliRunner()


def train_args(folder: Path, tmp_path: Path, out: str, *extra: str) -> list[str]:
    return [
        "teacher", "train", "--arch", "resnet18-quarter", "--data", str(folder), "--out", out,
        "--epochs", "1", "--batch-size", "4", "--val-size", str(TINY_VAL_SIZE), "--cache-dir",
        str(tmp_path / "cache"), "--device", "cpu", *extra,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(scenario: str, args: list[str], counter: Path, cwds=(None, None)):
    """Both ranks' (exit code, stderr), started by hand as a launcher would start them."""
    env = ENV | {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env |= {"MASTER_PORT": str(free_port()), "DISTILL_DIST_TIMEOUT_MIN": "2"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(counter), *args],
            env=env | {"RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=cwds[r],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    return [(p.returncode, e) for p, e in zip(procs, errs, strict=True)]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_a_nan_on_one_rank_stops_both_at_the_same_step_and_the_data_is_decoded_once(
    tiny_image_folder, tmp_path
):
    counter = tmp_path / "decodes"
    args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"))
    (code0, err0), (code1, err1) = two_ranks("nan", args, counter)
    assert (code0, code1) == (2, 2), (err0, err1)
    assert len(error_lines(err0)) == 1 and "NaN or infinite" in err0, err0
    assert error_lines(err1) == [] and "Traceback" not in err0 + err1, err1
    assert counter.read_text().split() == ["0"]  # rank 0 decoded; rank 1 read its cache


def test_a_mistake_on_rank_1_only_is_printed_once_with_its_rank(tiny_image_folder, tmp_path):
    started = time.monotonic()
    args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"))
    (code0, err0), (code1, err1) = two_ranks("error", args, tmp_path / "decodes")
    assert (code0, code1) == (2, 2), (err0, err1)
    assert error_lines(err0) == ["[rank 1] error: rank 1 cannot see the data folder"], err0
    assert error_lines(err1) == [], err1
    assert time.monotonic() - started < 100  # well within the 2-minute collective timeout


def test_a_run_folder_that_is_not_shared_is_refused(tiny_image_folder, tmp_path):
    # A relative --out from two working folders: two different folders, as on two nodes
    # without a shared filesystem.
    homes = [tmp_path / "node0", tmp_path / "node1"]
    for home in homes:
        home.mkdir()
    args = train_args(tiny_image_folder, tmp_path, "runs/t.pt")
    (code0, err0), (code1, err1) = two_ranks("plain", args, tmp_path / "decodes", homes)
    assert (code0, code1) == (2, 2), (err0, err1)
    (line,) = error_lines(err0)
    assert line.startswith("[rank 1] error: runs is not the same folder on rank 1"), line
    assert "filesystem every node shares" in line and error_lines(err1) == []
    assert not list((homes[0] / "runs").iterdir())  # the token is gone, nothing was written


def test_another_hosts_temp_file_is_not_swept(tmp_path):
    dead = 2**22 + 12345  # above any pid this machine hands out
    theirs = tmp_path / f".t.pt.{dead}@another-node.0123abcd.tmp"
    ours = tmp_path / f".t.pt.{dead}@{socket.gethostname()}.4567cdef.tmp"
    for path in (theirs, ours):
        path.write_text("half a checkpoint")
    assert sweep_stale(tmp_path) == [ours] and theirs.exists()


@pytest.mark.parametrize(
    "env, args, message",
    [
        ({"DISTILL_DIST_TIMEOUT_MIN": "abc"}, ["--version"], None),
        ({"WORLD_SIZE": "two"}, ["models"], "WORLD_SIZE='two' must be a whole number"),
        (
            {"WORLD_SIZE": "2", "RANK": "5"},
            ["models"],
            "RANK='5' must be a whole number from 0 to 1",
        ),
        ({"DISTILL_DIST_TIMEOUT_MIN": "0"}, ["--nproc-per-node", "2"], "DISTILL_DIST_TIMEOUT"),
        ({}, ["--nproc-per-node", "64"], "--nproc-per-node 64 would start 64 processes"),
    ],
)
def test_the_environment_is_checked_when_used_in_one_line(
    tiny_image_folder, tmp_path, monkeypatch, env, args, message
):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if args[0] == "--nproc-per-node":
        args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"), *args)
    if args[0] == "models":  # the launcher's variables are read by every command that trains
        args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"))
    result = runner.invoke(app, args)
    if message is None:
        assert result.exit_code == 0 and "distill" in result.output
        return
    one_line_error(result, message)
    assert not (tmp_path / "t.pt").exists()


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def rank_of(pid: int) -> int:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in env if v.startswith(b"RANK=")).split(b"=")[1])


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def launched_run(tiny_image_folder, tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A two-rank run under --nproc-per-node, caught in its first epoch; its ranks' pids."""
    args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"), "--nproc-per-node", "2")
    args[args.index("--epochs") + 1] = "50"
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + TIMEOUT
    while "epoch   1/" not in proc.stdout.readline():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    agents = [proc.pid, *children(proc.pid)]  # the launcher may run the ranks from a helper
    ranks = [c for a in agents for c in children(a) if b"distill" in Path(f"/proc/{c}/cmdline")
             .read_bytes()]  # fmt: skip
    assert len(ranks) == 2, ranks
    return proc, ranks


def test_ranks_end_with_a_launcher_killed_with_9(tiny_image_folder, tmp_path):
    proc, ranks = launched_run(tiny_image_folder, tmp_path)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 90
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, "the ranks outlived their launcher"
        time.sleep(0.5)
    assert (tmp_path / "t.last.pt").exists()  # they stopped as SIGTERM stops: resumable


def test_a_lost_rank_is_one_line_naming_it(tiny_image_folder, tmp_path):
    proc, ranks = launched_run(tiny_image_folder, tmp_path)
    victim = next(pid for pid in ranks if rank_of(pid) == 1)
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"rank 1 (pid {victim}) went away" in lines[0], err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "resnet9000"], "unknown architecture"),
        (["--sync-bn"], "--sync-bn"),
        (["--ddp-bf16-grads"], "--ddp-bf16-grads"),
    ],
)
def test_what_every_rank_would_refuse_is_refused_before_any_starts(
    tiny_image_folder, tmp_path, monkeypatch, extra, message
):
    from distill import distributed

    def started(*args):  # raised, not returned: a relaunch's parent leaves with os._exit
        raise AssertionError("a rank was started")

    monkeypatch.setattr(distributed, "relaunch", started)
    args = train_args(tiny_image_folder, tmp_path, str(tmp_path / "t.pt"), "--nproc-per-node", "2")
    one_line_error(runner.invoke(app, [*args, *extra]), message)


@pytest.mark.parametrize("argv, code", [(["models", "--json"], 0), (["budget", "resnet9000"], 2)])
def test_a_rank_leaves_with_its_commands_code_without_cpp_destructors(monkeypatch, argv, code):
    # A rank's ordinary exit can abort in the destructors of the store's and gloo's threads:
    # every rank leaves through exit_now, with the code the command ended with.
    import distill.cli as cli
    from distill import distributed, launch

    left = []
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(launch, "stop_with_launcher", lambda rank: None)
    monkeypatch.setattr(distributed, "exit_now", left.append)
    monkeypatch.setattr(sys, "argv", ["distill", *argv])
    handler = signal.getsignal(signal.SIGTERM)  # main() ignores SIGTERM as it leaves
    try:
        cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert left == [code]


def test_a_sigterm_while_a_lost_peer_is_reported_keeps_the_one_line(monkeypatch, capfd):
    # The launcher stops the ranks that are left after one died, while they report the lost
    # peer: that SIGTERM must not turn the one line into a traceback of the error handled.
    import distill.cli as cli
    from distill import distributed, launch

    left = []
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "stop_with_launcher", lambda rank: None)
    monkeypatch.setattr(distributed, "exit_now", left.append)

    def gloo_error(**_):
        raise RuntimeError("Connection closed by peer")

    def lost_line(error):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode: mid-report
        time.sleep(0.1)
        return "rank 1 (pid 123) went away" if error is not None else None

    monkeypatch.setattr(cli, "app", gloo_error)
    monkeypatch.setattr(distributed, "lost_peer_line", lost_line)
    handler = signal.getsignal(signal.SIGTERM)
    try:
        cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert left == [1] and lines == ["[rank 0] error: rank 1 (pid 123) went away"], lines
