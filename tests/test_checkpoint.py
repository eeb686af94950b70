import os
import pickle
from importlib import metadata

import pytest
import torch

from distill.checkpoint import (
    FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    new_checkpoint,
    save_checkpoint,
)
from distill.errors import UserError
from distill.files import check_output
from distill.registry import create_model


def make_ckpt(model=None, **extra):
    model = model or create_model("resnet18-quarter", num_classes=3)
    return new_checkpoint(
        kind="teacher",
        arch="resnet18-quarter",
        model=model,
        classes=["a", "b", "c"],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        input_size=[3, 32, 32],
        recipe={"name": "quick", "epochs": 1},
        data={"source": "/data", "split_seed": 0},
        metrics={"val_accuracy": 0.5},
        **extra,
    )


def test_round_trip_with_weights_only(tmp_path):
    model = create_model("resnet18-quarter", num_classes=3).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(make_ckpt(model), path)
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert raw["format"] == FORMAT and raw["kind"] == "teacher"
    for key in (
        "arch",
        "model_config",
        "state_dict",
        "classes",
        "mean",
        "std",
        "input_size",
        "recipe",
        "metrics",
        "history",
        "teachers",
        "data",
        "pruning",
        "versions",
        "created",
        "format_version",
    ):
        assert key in raw
    assert raw["versions"]["torch"] == metadata.version("torch")
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(rebuilt(x), model(x))


def test_state_dict_is_unwrapped_from_compile_and_ddp_style_wrappers():
    model = create_model("resnet18-quarter", num_classes=3)

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel's `.module`
        def __init__(self, m):
            super().__init__()
            self.module = m

    ckpt = make_ckpt(Wrapper(model))
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


def test_saved_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_ckpt(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(make_ckpt(), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(make_ckpt(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file left behind


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"ONNX\x08\x01\x12\x04"])
def test_non_checkpoints_are_refused_with_one_line(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and "x.pt" in str(e.value)


def test_a_class_name_with_a_control_character_is_a_damaged_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    ckpt = make_ckpt()
    ckpt["classes"] = ["a\x1b]0;pwned\x07"] + ckpt["classes"][1:]
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"damaged distill checkpoint \(class name .* control ch"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_ckpt(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"not a readable distill checkpoint \(it is cut short"):
        load_checkpoint(path)


class Foreign:  # a class torch.save pickles by reference: a safe load must refuse it
    pass


@pytest.mark.parametrize(
    "write,reason",
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("garbage"), "is not a file torch.save wrote"),
        (lambda p: p.write_text("junk"), "is not a file torch.save wrote"),  # struct's error
        (lambda p: torch.save({"m": Foreign()}, p), "a Python object (test_checkpoint.Foreign)"),
    ],
    ids=["empty", "text", "short", "object"],
)
def test_an_unreadable_file_is_named_in_the_users_terms(tmp_path, write, reason):
    # torch's own messages are paragraphs about its defaults: one clause about the file instead.
    path = tmp_path / "m.pt"
    write(path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert reason in str(e.value) and "PyTorch 2.6" not in str(e.value), str(e.value)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": FORMAT, "x": Evil()}, f)
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_foreign_torch_file_is_not_a_distill_checkpoint(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not a distill checkpoint"):
        load_checkpoint(path)


def test_check_output_never_overwrites_without_force(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"keep")
    with pytest.raises(UserError, match="--force"):
        check_output(path, force=False)
    assert check_output(path, force=True) == path
    with pytest.raises(UserError, match="should end in"):
        check_output(tmp_path / "m.txt", force=False)
    assert path.read_bytes() == b"keep"
