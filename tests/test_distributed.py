"""Scale-out on two CPU processes (gloo): DDP equals one big batch, one checkpoint per run whose
recorded accuracy equals a single-process eval, SIGTERM then --resume, mistakes end every rank."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_VAL_SIZE, one_line_error
from ddp_worker import micro_plan, without_batchnorm

from distill.checkpoint import load_checkpoint
from students.resnet import CifarResNet

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args]  # fmt: skip


def distill_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill", *args]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=ENV, **kw)


def test_two_processes_equal_one_process_with_twice_the_batch(tiny_image_folder, tmp_path):
    cache = str(tmp_path / "cache")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = run([sys.executable, str(WORKER), str(tiny_image_folder), cache, str(one), "32"])
    assert single.returncode == 0, single.stderr
    double = run(torchrun(2, str(WORKER), str(tiny_image_folder), cache, str(two), "16"))
    assert double.returncode == 0, double.stderr
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a["metrics"]["processes"] == 1 and b["metrics"]["processes"] == 2
    for key, value in a["state_dict"].items():
        # Float sums in another order (two half batches, then an all-reduce): 1e-6 relative.
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)  # the start both runs share: training moved away from it
    start = without_batchnorm(CifarResNet(micro_plan(len(a["classes"]))))
    assert any(
        not torch.allclose(v, a["state_dict"][k], atol=1e-3) for k, v in start.state_dict().items()
    )
    # The same images, the same weights: the same history, to float noise.
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
        assert hb["val_accuracy"] == ha["val_accuracy"]


def cli_args(folder: Path, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data", str(folder), "--out", str(out), "--recipe", "quick", "--batch-size", "16",
        "--val-size", str(TINY_VAL_SIZE), "--cache-dir", str(tmp_path / "cache"), "--device",
        "cpu", *extra,
    ]  # fmt: skip


def eval_accuracy(path: Path, tmp_path: Path) -> float:
    """One process evaluating every validation image (here, in the test's own process), on
    one thread as the ranks ran: a near tie then falls the same way."""
    from distill.api import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(path, device="cpu", cache_dir=tmp_path / "cache")["accuracy"]
    finally:
        torch.set_num_threads(threads)


def test_two_process_teacher_and_feature_kd_student_write_one_checkpoint(
    tiny_image_folder, tmp_path
):
    teacher, student = tmp_path / "t.pt", tmp_path / "s.pt"
    args = ["teacher", "train", "--arch", "resnet18-quarter", "--epochs", "2", "--lr", "0.05"]
    trained = run(distill_cmd(*args, *cli_args(tiny_image_folder, tmp_path, teacher),
                              "--nproc-per-node", "2"))  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    # A feature method: its connector trains beside the student, its gradients averaged over
    # the ranks by the objective (DDP sees the student alone).
    args = ["student", "--teacher", str(teacher), "--arch", "resnet18-quarter", "--epochs", "1",
            "--kd", "fitnet"]  # fmt: skip
    distilled = run(distill_cmd(*args, *cli_args(tiny_image_folder, tmp_path, student),
                                "--nproc-per-node", "2"))  # fmt: skip
    assert distilled.returncode == 0, distilled.stderr
    raw = torch.load(student, weights_only=True)
    assert raw["kd"]["method"] == "fitnet"
    assert not any(k.startswith("connector") for k in raw["state_dict"])
    # One checkpoint per run (and its metrics), no resumable state left, nothing per rank.
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["s.metrics.csv", "s.pt", "t.metrics.csv", "t.pt"]
    for path in (teacher, student):
        raw = torch.load(path, weights_only=True)
        assert not any(k.startswith("module.") for k in raw["state_dict"])
        assert raw["metrics"]["processes"] == 2
        # Validation is sharded and all-reduced: it equals one process evaluating everything.
        assert eval_accuracy(path, tmp_path) == raw["metrics"]["val_accuracy"]
    assert "saved" in distilled.stdout and distilled.stdout.count("saved") == 1  # rank 0 only
    # --lr is the peak lr of the global batch (2 x 16): the optimizer got it as given.
    assert torch.load(teacher, weights_only=True)["metrics"]["peak_lr"] == pytest.approx(0.05)


def test_sigterm_to_the_launcher_then_resume_matches(tiny_image_folder, tmp_path):
    # 96 training images at 4 per rank: 12 steps an epoch, time to be stopped inside epoch 2.
    args = ["teacher", "train", "--arch", "resnet18-quarter", "--epochs", "3", "--train-size", "96"]
    whole = tmp_path / "whole.pt"
    done = run(distill_cmd(*args, *cli_args(tiny_image_folder, tmp_path, whole, "--batch-size",
                                            "4"), "--nproc-per-node", "2"))  # fmt: skip
    assert done.returncode == 0, done.stderr

    out = tmp_path / "cut.pt"
    cmd = distill_cmd(*args, *cli_args(tiny_image_folder, tmp_path, out, "--batch-size", "4"),
                      "--nproc-per-node", "2")  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while "epoch   1/3" not in proc.stdout.readline():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode != 0 and not out.exists()
    assert "--resume" in err and "--nproc-per-node 2" in err, err  # the hint: the whole command
    state = load_checkpoint(out.with_name("cut.last.pt"))["train_state"]
    assert state["identity"]["world_size"] == 2

    # Another world size cannot continue mid-epoch: one line saying how to resume.
    other = run(distill_cmd(*args, *cli_args(tiny_image_folder, tmp_path, out, "--batch-size",
                                             "4"), "--resume"))  # fmt: skip
    assert other.returncode == 2 and "resume with 2" in other.stderr, other.stderr

    resumed = run([*cmd, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(whole), load_checkpoint(out)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_a_mistake_under_torchrun_ends_every_rank_with_one_line(tiny_image_folder, tmp_path):
    # Found by the ranks (the data's size): under torchrun and relaunched alike, one line.
    # Found before any rank starts (--nproc-per-node): the architecture, the recipe on a CPU.
    for extra, message, in_ranks in (
        (["--arch", "resnet18-quarter", "--val-size", "100000"], "--val-size", True),
        (["--arch", "resnet9000"], "unknown architecture", False),
        (["--arch", "resnet18-quarter", "--sync-bn"], "--sync-bn", False),
    ):
        started = time.monotonic()
        cmd = ["teacher", "train", *cli_args(tiny_image_folder, tmp_path, tmp_path / "t.pt"),
               *extra]  # fmt: skip
        if in_ranks:
            result = run(torchrun(2, "-m", "distill", *cmd))
            assert result.returncode != 0 and time.monotonic() - started < 120
            ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(ours) == 1 and message in ours[0], result.stderr
        one_line_error(run(distill_cmd(*cmd, "--nproc-per-node", "2")), message)
        assert not (tmp_path / "t.pt").exists()
