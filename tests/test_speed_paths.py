"""The paths that make a run fast, checked for behaviour (their speed is bench/time_split.py's to
measure): decoding on several processes gives the very bytes one process gives, `--help` and
`--version` never import torch, phases are recorded when asked, and the final checkpoint reuses
the last epoch's validation instead of running it again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import distill.train
from distill.data.decode import decode_files
from distill.errors import UserError
from distill.recipes import make_recipe
from distill.settings import RunSettings
from distill.train import fit
from students.resnet import CifarResNet, plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import time_split  # noqa: E402


def _image_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.png"))


def test_several_decode_workers_give_the_bytes_of_one(tiny_image_folder):
    files = _image_files(tiny_image_folder) * 8  # enough for several chunks per worker
    done = []
    one, *_ = decode_files(files, 32, workers=1)
    several, *_ = decode_files(files, 32, workers=2, chunk=7, on_progress=done.append)
    assert one.dtype == torch.uint8 and one.shape == (len(files), 3, 32, 32)
    assert torch.equal(one, several)
    assert done == sorted(done) and done[-1] == len(files)  # progress counts every image once


def test_a_bad_file_in_a_worker_is_the_usual_one_line_error(tiny_image_folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    files = _image_files(tiny_image_folder) * 4 + [str(bad)]
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        decode_files(files, 32, workers=2, chunk=5)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["teacher", "train", "--help"]])
def test_help_and_version_do_not_import_torch(argv):
    code = (  # the command leaves through its exit functions (distributed.exit_now)
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
        f"sys.argv = ['distill', *{argv!r}]\n"
        "runpy.run_module('distill', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"


def test_phases_are_recorded_only_when_asked(tmp_path):
    log = tmp_path / "t.jsonl"
    code = (
        "from distill.timing import mark, phase\n"
        "mark('main')\n"
        "with phase('data: split'):\n    pass\n"
    )
    env = os.environ | {"DISTILL_TIMINGS": str(log)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, timeout=60)
    names = [json.loads(line)["phase"] for line in log.read_text().splitlines()]
    assert names == ["main", "data: split"]
    env.pop("DISTILL_TIMINGS")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=ROOT, timeout=60)
    assert len(log.read_text().splitlines()) == 2  # nothing appended without the variable


def test_a_command_skips_the_teardown_but_not_its_exit_work(tmp_path):
    """Commands leave without the interpreter's teardown (distributed.exit_now): the exit
    functions still run (the timing records are written at exit), the exit code and the whole
    output still arrive, and a thread of the process's own still finishes its work."""
    log = tmp_path / "t.jsonl"
    env = os.environ | {"DISTILL_TIMINGS": str(log)}
    cmd = [sys.executable, "-m", "distill", "budget", "resnet18-quarter", "--budget", "1M"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resnet18-quarter" in done.stdout and "701,466" in done.stdout
    assert [json.loads(line)["phase"] for line in log.read_text().splitlines()] == ["main"]
    cmd[3] = "no-such-arch"  # a user's error keeps its code
    over = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert over.returncode == 2 and over.stderr.startswith("error:"), over.stderr
    marker = tmp_path / "written-by-the-thread"
    code = (
        "import sys, threading, time\n"
        "def work():\n    time.sleep(0.5)\n"
        f"    open({str(marker)!r}, 'w').write('done')\n"
        "threading.Thread(target=work).start()\n"
        "sys.argv = ['distill', '--version']\n"
        "from distill.cli import main\nmain()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
    assert marker.read_text() == "done"


def test_the_split_accounts_for_the_whole_wall_time():
    records = [
        {"phase": "main", "offset": 0.5, "seconds": 0.0},
        {"phase": "data: cache check", "offset": 0.6, "seconds": 0.2},
        {"phase": "epoch 1 steps", "offset": 1.0, "seconds": 5.0},
    ]
    rows = dict(time_split.split(7.0, records))
    assert rows["interpreter start-up and imports"] == 0.5
    assert rows["epoch 1 steps"] == 5.0
    assert sum(rows.values()) == pytest.approx(7.0)
    staged = [*records, {"phase": "stage teacher", "offset": 0.6, "seconds": 6.0}]
    assert "epoch 1 steps" not in dict(time_split.split(7.0, staged))  # nested in the stage
    by_kind = time_split.totals(staged)
    assert by_kind["data"] == 0.2 and by_kind["training steps"] == 5.0


def test_the_final_checkpoint_reuses_the_best_epochs_validation(
    tiny_dataset, tmp_path, monkeypatch
):
    calls = []
    real = distill.train.evaluate
    monkeypatch.setattr(
        distill.train,
        "evaluate",
        lambda m, loader, **k: calls.append(loader) or real(m, loader, **k),
    )
    recipe = replace(make_recipe("quick", batch_size=32), epochs=2)
    micro = CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=4))
    ckpt = fit(micro, tiny_dataset, recipe, RunSettings(None, "cpu", quiet=True),
               kind="teacher", arch="micro")  # fmt: skip
    best = ckpt["metrics"]["best_epoch"]
    assert ckpt["metrics"]["val_accuracy"] == ckpt["history"][best - 1]["val_accuracy"]
    val_passes = [c for c in calls if c.size == len(tiny_dataset.val)]
    # One validation per epoch and no final one, whichever epoch was best: without a teacher
    # the best epoch's own validation holds everything the checkpoint records. (This said a
    # final pass followed when the best epoch was not the last, which failed at random.)
    assert len(val_passes) == 2
