"""The bench/ scripts' own logic, at toy sizes (their numbers are the lead's to measure):
gpu_check.sh on a machine without a GPU, the synthetic data the GPU rows train on, the variants
kd_overhead.py times, prune_speed.py's choice of round_to, and cpu_step_variants.py's rows and
its check that every teacher variant gives the same logits."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import Conv2d

from distill.data import DataSettings, load_data
from distill.device import choose_precision
from distill.registry import create_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the scripts import their siblings by name

import gpu_carry  # noqa: E402
import gpu_rows  # noqa: E402
import kd_overhead  # noqa: E402
import prune_speed  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine it would measure")
def test_gpu_check_says_no_gpu_and_exits_0(tmp_path: Path) -> None:
    env = os.environ | {"OUT": str(tmp_path), "PY": sys.executable}
    env.pop("GPU_CHECK_SMOKE", None)
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU is visible" in done.stdout
    assert "Nothing was measured" in (tmp_path / "gpu_check.txt").read_text()


def test_synthetic_cifar_loads_as_cifar10(tmp_path: Path) -> None:
    root = gpu_rows.write_synthetic_cifar(tmp_path / "syn", train_images=120, test_images=20)
    data = load_data(DataSettings(str(root), val_size=20, cache_dir=tmp_path / "cache"))
    assert data.classes == tuple(gpu_rows.CIFAR10_CLASSES)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 20, 20)
    assert torch.bincount(data.val.labels).tolist() == [2] * 10  # balanced labels: stratifiable


def test_the_carried_subset_is_the_images_byte_for_byte(tmp_path: Path, tiny_image_folder) -> None:
    pack = tmp_path / gpu_carry.SUBSET
    assert gpu_carry.pack_subset(tiny_image_folder / "train", pack, per_class=5) == 20
    root = gpu_rows.unpack_subset(pack, tmp_path / "cifar")
    data = load_data(DataSettings(str(root), val_size=4, cache_dir=tmp_path / "cache"))
    folder = load_data(DataSettings(str(tiny_image_folder), val_size=4, cache_dir=tmp_path / "c2"))
    assert data.classes == folder.classes and len(data.train) + len(data.val) == 20
    # PNG here (lossless): every carried image is one of the folder's own.
    theirs = {bytes(x.numpy()) for s in (folder.train, folder.val) for x in s.images}
    assert all(bytes(x.numpy()) in theirs for s in (data.train, data.val) for x in s.images)
    # torch-pruning travels as a zip that Python imports from the path alone.
    zipped = gpu_carry.zip_package("torch_pruning", tmp_path)
    code = "import torch_pruning as tp, sys; print(tp.__file__)"
    env = os.environ | {"PYTHONPATH": str(zipped)}
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert where.stdout.startswith(str(zipped)), where.stderr


def test_a_failed_row_says_why_in_distills_words(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(gpu_rows.RowFailed, match="distill eval .*error: .*does not exist"):
        gpu_rows.distill(["eval", str(tmp_path / "missing.pt")])

    def cold_compile(*args, **kwargs):
        raise subprocess.TimeoutExpired("distill", kwargs["timeout"])

    monkeypatch.setattr(gpu_rows, "train_run", cold_compile)
    monkeypatch.setenv("ROW_LIMIT_S", "100")
    monkeypatch.setattr(gpu_rows, "STARTED", time.monotonic())
    args = ["train", "--compile", "--data", "d", "--work", str(tmp_path), "--device", "cuda"]
    monkeypatch.setattr(sys, "argv", ["gpu_rows.py", *args])
    printed = []
    monkeypatch.setattr(gpu_rows, "row", lambda name, result: printed.append((name, result)))
    gpu_rows.main()
    assert printed[0][0] == "train resnet18-5m + compile"
    assert re.fullmatch(r"compile took longer than \d+ s \(a cold Inductor.*", printed[0][1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine it would measure")
@pytest.mark.slow
def test_gpu_check_smoke_runs_every_row_with_the_carried_subset(tmp_path, tiny_image_folder):
    carry = tmp_path / "carry"
    make = [sys.executable, str(ROOT / "bench" / "gpu_carry.py"), "--out", str(carry)]
    made = subprocess.run(
        [*make, "--data", str(tiny_image_folder / "train"), "--per-class", "20"],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    env = os.environ | {"OUT": str(tmp_path), "PY": sys.executable, "CARRY": str(carry)}
    env |= {"GPU_CHECK_SMOKE": "1"}
    env.pop("DATA", None)
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: it takes well under 2 minutes on 2 quiet cores
    )
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "gpu_check.txt").read_text()
    rows = [line for line in table.splitlines()[4:] if line.strip() and not line.startswith("log")]
    names = ("train resnet18-quarter ", "KD step", "DKD step", "EMA of weights", "accuracy",
             "distill eval", "distill bench b1", "distill bench b8", "DDP 2 vs 1",
             "train resnet18-half ", "train resnet18-quarter + compile")  # fmt: skip
    for name in names:
        assert any(line.startswith(name) for line in rows), (name, table)
    assert not any(w in table for w in ("FAILED", "TIMED OUT", "SKIPPED", "no result")), table
    assert "subset/cifar-10-batches-py" in table  # the accuracy row read the carried images
    assert "torch 2." in table.splitlines()[1]  # the machine's own torch, in the table


def test_kd_overhead_times_every_variant() -> None:
    r = kd_overhead.measure_variants(
        "resnet18-quarter",
        "resnet18-quarter",
        variants=kd_overhead.VARIANTS,
        batch_size=2,
        steps=1,
        repeats=1,
        warmup=0,
    )
    assert set(r["ms_per_step"]) == set(kd_overhead.VARIANTS)
    assert r["ratio_to_labels"]["labels"] == 1.0
    names = [name for name, _ in kd_overhead.summary_rows(r)]
    assert names == ["KD step, resnet18-quarter teacher", "DKD step", "EMA of weights"]


def _row(round_to: int, ratios: tuple[float, float], speedups: tuple[float, float]) -> dict:
    engines = {
        e: {1: {"per_mac_reduction": q, "speedup": s}}
        for e, q, s in zip(prune_speed.ENGINES, ratios, speedups, strict=True)
    }
    return {"round_to": round_to, "engines": engines}


def test_prune_speed_recommends_the_fastest_round_to_that_meets_the_target() -> None:
    rows = [
        _row(8, (0.64, 0.75), (1.9, 2.1)),  # fastest, but eager misses 0.7
        _row(16, (0.78, 0.82), (1.5, 1.6)),
        _row(32, (0.90, 0.92), (1.3, 1.4)),
    ]
    assert prune_speed.recommend(rows, 1)[0] == 16
    missing = [_row(8, (0.5, 0.6), (1, 1)), _row(16, (0.65, 0.62), (1, 1))]
    best, why = prune_speed.recommend(missing, 1)
    assert best == 16 and "none meets" in why


@pytest.mark.slow
def test_kd_table_script_runs_its_pairs_and_prints_the_published_figures(tmp_path: Path) -> None:
    # The plumbing at toy size: a 240-epoch CIFAR-100 run needs a GPU and a day.
    from conftest import make_cifar_python

    make_cifar_python(tmp_path / "data", num_classes=100, per_class=2, test_per_class=1)
    env = os.environ | {
        "PY": sys.executable, "DATA": str(tmp_path / "data"), "OUT": str(tmp_path / "out"),
        "EPOCHS": "1", "PAIRS": "wrn-40-2:wrn-16-2", "METHODS": "labels fitnet",
        "VAL_SIZE": "100", "DEVICE": "cpu", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    done = subprocess.run(["bash", str(ROOT / "bench" / "kd_table.sh")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| wrn-40-2")]
    rows = {line.split(" | ")[1]: line for line in table}  # ("== pair method" lines are progress)
    assert "73.58" in rows["fitnet"] and "not run" not in rows["fitnet"]  # ours beside theirs
    assert "not run" in rows["dkd"] and "76.24" in rows["dkd"]
    assert (tmp_path / "out" / "wrn-40-2_wrn-16-2" / "teacher.pt").exists()


def test_cpu_step_variants_times_every_row_and_checks_the_teachers_agree(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    script = ROOT / "bench" / "cpu_step_variants.py"
    args = [sys.executable, str(script), "--smoke", "--allocator", "--profile", "--json", str(out)]
    subprocess.run(args, check=True, capture_output=True, text=True)
    rows = json.loads(out.read_text())
    by_table: dict[str, list[dict]] = {}
    for row in rows:
        by_table.setdefault(row["table"], []).append(row)
    train, forward = by_table["training step"], by_table["teacher forward (KD)"]
    assert len(train) == 4 and len(forward) == 4
    for group in (train, forward):
        default = next(r for r in group if r["variant"] == "eager, channels_last")
        assert default["vs_default"] == 1.0 and all(r["images_per_s"] > 0 for r in group)
    # Folding and TorchScript's fusion are the same function: logits agree to the rounding of
    # the precision the forward runs in (bf16 where the CPU has it natively: 8-bit mantissas,
    # measured up to 4e-3 apart on a Zen 5, against 2.5e-7 in float32).
    bf16 = choose_precision(torch.device("cpu"), amp=True).name == "bf16"
    assert all(r["max_abs_diff"] < (3e-2 if bf16 else 1e-3) for r in forward), forward
    if platform.libc_ver()[0] == "glibc":
        kinds = [r["variant"] for r in by_table["allocator"]]
        assert kinds == ["glibc defaults", "freed blocks kept"]
    # The profile accounts for the whole step, and every convolution of the model is found in
    # it, forward and backward (a shape it failed to match would drop out of the table).
    shares = {r["variant"]: r["share"] for r in by_table["profile"]}
    assert abs(sum(shares.values()) - 1.0) < 1e-6
    assert shares["convolution forward"] > 0 and shares["convolution backward"] > 0
    convs = by_table["profile: convolutions"]
    model = create_model("resnet18-quarter")
    assert sum(r["calls"] for r in convs) == sum(isinstance(m, Conv2d) for m in model.modules())
    assert all(r["forward_gflops"] > 0 and r["backward_gflops"] > 0 for r in convs), convs
    # Against the peak of the precision the step runs in (bf16 rows once read against fp32's).
    assert {r["precision"] for r in convs} == {"bf16" if bf16 else "fp32"}
