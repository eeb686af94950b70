"""The GPU path, checked where a CPU can check it: models go to the device their batches are on,
precision follows the device's capability, the hot loop issues no per-tensor loops or host
syncs, --compile is reachable, and nothing is rebuilt or written more often than it must be.
(onnxruntime's device choice: test_runtime.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from typer.testing import CliRunner

import distill.evaluation
import distill.train
from distill.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from distill.cli import app
from distill.device import Precision, choose_precision, configure_for_training
from distill.evaluation import eval_loader, evaluate
from distill.losses import dkd_loss
from distill.optim import EMA
from distill.pruning import rebuild
from distill.recipes import make_recipe
from distill.registry import create_model
from distill.settings import RunSettings
from distill.train import fit
from students.resnet import CifarResNet, plan

runner = CliRunner()


def micro(num_classes: int = 4) -> CifarResNet:
    return CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=num_classes))


def test_eval_of_a_checkpoint_moves_the_model_to_the_batches_device(
    tiny_dataset, tmp_path, monkeypatch
):
    """`distill eval m.pt` built the model on the CPU and sent batches to the GPU: every path now
    places the model where `--device` resolves, and `evaluate` refuses a mismatch outright."""
    path = tmp_path / "m.pt"
    save_checkpoint(
        new_checkpoint(
            kind="teacher", arch="micro", model=micro(), classes=list(tiny_dataset.classes),
            mean=list(tiny_dataset.mean), std=list(tiny_dataset.std),
            input_size=list(tiny_dataset.input_size), recipe={}, data=dict(tiny_dataset.info),
        ),
        path,
    )  # fmt: skip
    placed = []
    real_to = torch.nn.Module.to

    def spy_to(module, *args, **kwargs):
        if isinstance(module, CifarResNet):
            placed.append(torch.device(args[0]) if args else kwargs.get("device"))
        return real_to(module, *args, **kwargs)

    seen = []
    real_evaluate = distill.evaluation.evaluate

    def spy_evaluate(model, loader, **kw):
        seen.append((next(model.parameters()).device, loader.device))
        return real_evaluate(model, loader, **kw)

    monkeypatch.setattr(torch.nn.Module, "to", spy_to)
    monkeypatch.setattr(distill.evaluation, "evaluate", spy_evaluate)
    result = distill.evaluation.evaluate_file(path, device="cpu")
    assert result["count"] == 20
    assert placed and placed[-1] == torch.device("cpu")
    assert seen == [(torch.device("cpu"), torch.device("cpu"))]

    model, loader = micro(), eval_loader(tiny_dataset.val, tiny_dataset, torch.device("cpu"))
    loader.device = torch.device("cuda")  # batches said to be elsewhere: refused, not crashed
    with pytest.raises(ValueError, match="the model is on cpu but the batches on cuda"):
        evaluate(model, loader)


def test_precision_follows_the_device(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision(cuda, True) == Precision(torch.bfloat16)
    # V100, T4: no fast bf16, so fp16 with a gradient scaler (bf16 would be emulated and slow).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert choose_precision(cuda, True) == Precision(torch.float16, scaler=True)
    assert choose_precision(cuda, False) == Precision(None)
    monkeypatch.setattr("distill.device.cpu_has_native_bf16", lambda: False)
    assert choose_precision(torch.device("cpu"), True) == Precision(None)


def test_training_asks_cudnn_for_the_fastest_kernels():
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        configure_for_training(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False  # the CPU has no cuDNN to tune
        configure_for_training(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True  # fixed shapes: the search pays
    finally:
        torch.backends.cudnn.benchmark = saved


def op_counts(fn, top_level: bool = False) -> dict[str, int]:
    """How often each op ran; `top_level`: only the ops Python itself called (on a CPU a
    foreach op falls back to per-tensor kernels inside it; on a GPU it is one kernel)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        if not top_level or event.cpu_parent is None:
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def test_ema_updates_every_tensor_in_one_foreach_call():
    model = create_model("resnet18-quarter")
    ema = EMA(model, 0.999)
    ema.update(model)  # builds the tensor lists once
    counts = op_counts(lambda: ema.update(model), top_level=True)
    assert counts.get("aten::_foreach_lerp_", 0) == 1
    assert counts.get("aten::lerp_", 0) == 0  # no per-tensor loop (62 tensors here)
    assert counts.get("aten::state_dict", 0) == 0
    # And it still averages: the EMA moved towards the model's new weights.
    before = next(ema.module.parameters()).clone()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    ema.update(model)
    assert not torch.equal(before, next(ema.module.parameters()))


def test_dkd_needs_no_boolean_indexing_or_host_sync():
    s, t = torch.randn(64, 10, requires_grad=True), torch.randn(64, 10)
    y = torch.randint(0, 10, (64,))
    counts = op_counts(lambda: dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0).backward())
    # masked_select and nonzero size their outputs from the data: a host sync on a GPU.
    for op in ("aten::masked_select", "aten::nonzero", "aten::item", "aten::_local_scalar_dense"):
        assert counts.get(op, 0) == 0, op


def test_compile_is_reachable_from_the_command_line(tiny_image_folder, tmp_path):
    out = tmp_path / "t.pt"
    args = ["teacher", "train", "--arch", "resnet18-quarter", "--data", str(tiny_image_folder),
            "--out", str(out), "--recipe", "quick", "--epochs", "1", "--batch-size", "32",
            "--val-size", "20", "--cache-dir", str(tmp_path / "c"), "--quiet"]  # fmt: skip
    args.append("--compile")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # The recipe records it; on a CPU the model runs eagerly (compile is for CUDA, see --help).
    assert load_checkpoint(out)["recipe"]["compile"] is True
    assert "--compile" in runner.invoke(app, ["teacher", "train", "--help"]).output


def test_the_validation_loader_is_built_once_and_states_are_not_written_every_epoch(
    tiny_dataset, tmp_path, monkeypatch
):
    built, saved = [], []
    real_loader, real_save = distill.train.eval_loader, distill.train.atomic_save
    monkeypatch.setattr(
        distill.train, "eval_loader", lambda *a, **k: built.append(a[0]) or real_loader(*a, **k)
    )
    monkeypatch.setattr(
        distill.train, "atomic_save", lambda obj, p: saved.append(p.name) or real_save(obj, p)
    )
    recipe = replace(make_recipe("quick", batch_size=32), epochs=3)
    ckpt = fit(micro(), tiny_dataset, recipe, RunSettings(tmp_path / "m.pt", "cpu", quiet=True),
               kind="teacher", arch="micro")  # fmt: skip
    assert len(ckpt["history"]) == 3
    # One loader for validation, reused every epoch and at the end, one for the test split.
    assert built == [tiny_dataset.val, tiny_dataset.test]
    # Quick epochs: the resumable state is written by wall time, not after every epoch.
    assert saved == ["m.pt"]


def test_a_channels_last_pruned_model_rebuilds_in_its_own_format():
    model = create_model("resnet18-quarter").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    fresh = rebuild(model, x)
    assert fresh.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
