"""Nothing lost and nothing silently wrong, one class of fault at a time: corrupt state is never
trusted, failed or colliding writes lose nothing, temporary files never outlive a process, and
crafted or absurd input is refused up front with one line. (Pipeline state: test_pipeline.py;
ONNX metadata: test_metadata.py; TOML types: test_cli_ux.py.)"""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_VAL_SIZE, make_cifar_python, one_line_error, png_header_only, teacher_args
from PIL import Image
from typer.testing import CliRunner

import distill.checkpoint
import distill.compare
import distill.resume
import distill.train
from distill.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from distill.cli import app
from distill.data import DataSettings, load_data
from distill.errors import UserError
from distill.files import output_lock, sweep_stale
from distill.recipes import make_recipe
from distill.registry import create_model
from distill.resume import last_path
from distill.run_guard import training_run
from distill.settings import RunSettings
from distill.train import TrainingDiverged, fit
from students.resnet import CifarResNet, plan

runner = CliRunner()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# Stale or corrupt state is never trusted


@pytest.mark.parametrize("where", ["label", "pixel"])
def test_a_corrupt_data_cache_is_decoded_again(tiny_image_folder, tmp_path, capfd, where):
    settings = DataSettings(str(tiny_image_folder), cache_dir=tmp_path, val_size=8)
    clean = load_data(settings)
    (cache,) = (tmp_path / "data").glob("*.pt")
    obj = torch.load(cache, weights_only=True)
    if where == "label":  # a label byte flipped: out of range, or silently another class
        obj["train_labels"][3] = obj["train_labels"][3] ^ 1
    else:  # a pixel byte flipped: would train on a corrupted image without a word
        obj["train_images"][5, 0, 0, 0] ^= 0x40
    torch.save(obj, cache)  # the file's own structure stays valid: only its content changed
    capfd.readouterr()
    again = load_data(settings)
    assert "corrupt" in capfd.readouterr().err
    assert torch.equal(again.train.images, clean.train.images)
    assert torch.equal(again.train.labels, clean.train.labels)


# ---------------------------------------------------------------------------------------------
# Writes that fail or collide


def test_an_output_that_is_one_of_the_inputs_is_refused_even_with_force(
    tiny_image_folder, tmp_path
):
    # The result would replace what it is made from: by the same name, another name for it
    # (a relative path) or a hard link to it.
    teacher = tmp_path / "t.pt"
    save_checkpoint(_checkpoint(), teacher)
    before = teacher.read_bytes()
    (tmp_path / "link.pt").hardlink_to(teacher)
    data = ["--data", str(tiny_image_folder), "--cache-dir", str(tmp_path / "c"), "--force"]
    cases = {
        "the teacher it learns from": ["student", "--teacher", str(teacher), "--arch",
                                       "resnet18-quarter", "--out", str(teacher), *data],
        "the model it prunes": ["prune", str(teacher), "--budget", "0.2M", "--out",
                                str(tmp_path / "link.pt"), *data],
        "the weights it imports": ["teacher", "import", "torchvision:resnet18", "--weights",
                                   str(teacher), "--out", str(teacher), *data],
    }  # fmt: skip
    for what, args in cases.items():
        one_line_error(runner.invoke(app, args), what, "--force never overwrites an input")
    assert teacher.read_bytes() == before and not (tmp_path / "c").exists()


def test_a_run_folder_inside_the_data_is_refused_before_it_is_made(tiny_image_folder, tmp_path):
    # Its plots would be a new class of images and its files would change the data's
    # fingerprint: the next run would read other data.
    inside = tiny_image_folder / "train" / "run"
    args = ["pipeline", "--data", str(tiny_image_folder), "--out", str(inside)]
    one_line_error(runner.invoke(app, args), "inside the data folder", "--out")
    assert not inside.exists()


def full_disk(monkeypatch, target: str) -> None:
    """torch.save of a file named like `target` fails as a full disk does (ENOSPC)."""
    real = torch.save

    def save(obj, f, *a, **k):
        if Path(str(getattr(f, "name", f))).name.startswith(f".{target}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_keeps_what_was_there_and_says_how_to_continue(
    tiny_image_folder, tmp_path, monkeypatch
):
    out = tmp_path / "t.pt"
    monkeypatch.setattr(distill.train, "STATE_SAVE_SECONDS", 0.0)  # a state at every sync
    full_disk(monkeypatch, "t.pt")
    result = runner.invoke(app, teacher_args(tiny_image_folder, out, epochs=2))
    line = one_line_error(result, "t.pt", "the disk is full", "--resume")
    assert "no file was written" in line and not out.exists()
    assert leftovers(tmp_path) == [] and last_path(out).exists()
    monkeypatch.undo()  # room again: the command it printed finishes the run
    resumed = runner.invoke(app, teacher_args(tiny_image_folder, out, "--resume", epochs=2))
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in load_checkpoint(out)["history"]] == [1, 2]


def test_a_full_disk_before_any_state_says_to_run_again(tiny_image_folder, tmp_path, monkeypatch):
    out = tmp_path / "t.pt"
    full_disk(monkeypatch, "t.last.pt")
    monkeypatch.setattr(distill.train, "STATE_SAVE_SECONDS", 0.0)
    result = runner.invoke(app, teacher_args(tiny_image_folder, out, epochs=2))
    one_line_error(result, "t.last.pt", "the disk is full", "run the command again")
    assert leftovers(tmp_path) == [] and not out.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB file system (tmpfs) and `fill(room)`, which leaves `room` bytes free."""
    import os

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:100]}")

    def fill(room: int) -> None:
        filler = disk / "filler"
        filler.unlink(missing_ok=True)
        st = os.statvfs(disk)
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(st.f_bavail * st.f_frsize - room, 1))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_keeps_what_was_there_and_says_how_to_continue(
    tiny_image_folder, tmp_path, monkeypatch, small_disk, capfd
):
    disk, fill = small_disk
    out = disk / "t.pt"
    out.write_bytes(b"the previous checkpoint")
    # A full cache disk costs the next run a decode, nothing more.
    fill(0)
    data = load_data(
        DataSettings(str(tiny_image_folder), cache_dir=disk / "cache", val_size=TINY_VAL_SIZE)
    )
    assert len(data.val) == TINY_VAL_SIZE and "the disk is full" in capfd.readouterr().err

    # Room for the resumable state (~11 MB for this model) but not then the checkpoint (~3 MB):
    # torch.save fails on the real file system with its own RuntimeError.
    monkeypatch.setattr(distill.train, "STATE_SAVE_SECONDS", 0.0)
    fill(12_800_000)
    result = runner.invoke(
        app, teacher_args(tiny_image_folder, out, "--force", cache=tmp_path / "cache", epochs=2)
    )
    line = one_line_error(result, "t.pt", "the disk is full", "the previous file is unchanged")
    assert "--resume" in line and str(last_path(out)) in line
    assert out.read_bytes() == b"the previous checkpoint" and leftovers(disk) == []
    fill(20_000_000)  # room again: the command it printed finishes the run
    again = teacher_args(
        tiny_image_folder, out, "--resume", "--force", cache=tmp_path / "cache", epochs=2
    )
    resumed = runner.invoke(app, again)
    assert resumed.exit_code == 0, resumed.output
    assert [h["epoch"] for h in load_checkpoint(out)["history"]] == [1, 2]


@pytest.mark.parametrize(
    "command",
    [
        lambda folder, tmp: teacher_args(folder, tmp / "f.txt" / "t.pt", cache=tmp / "cache"),
        lambda folder, tmp: ["pipeline", "--data", str(folder), "-o", str(tmp / "f.txt" / "run")],
        lambda folder, tmp: ["bench", str(tmp / "m.onnx"), "-o", str(tmp / "f.txt" / "b.json")],
        lambda folder, tmp: ["export", "onnx", str(tmp / "m.pt"), "-o", str(tmp / "f.txt/m.onnx")],
    ],
)
def test_an_output_under_a_file_is_refused_before_any_work(tiny_image_folder, tmp_path, command):
    (tmp_path / "f.txt").write_text("a file, not a folder")
    (tmp_path / "m.onnx").write_bytes(b"not looked at")
    save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    result = runner.invoke(app, command(tiny_image_folder, tmp_path))
    one_line_error(result, "is a file, not a folder")
    assert not (tmp_path / "cache").exists()  # refused before the data was even read


def _checkpoint(**fields):
    ckpt = new_checkpoint(
        kind="teacher",
        arch="resnet18-quarter",
        model=create_model("resnet18-quarter", 4),
        classes=["a", "b", "c", "d"],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        input_size=[3, 32, 32],
        recipe={},
        data={},
    )
    ckpt.update(fields)
    return ckpt


def test_a_second_writer_of_an_output_is_refused_naming_the_first(tiny_image_folder, tmp_path):
    out = tmp_path / "t.pt"
    with output_lock(out):  # another run holds it: here, this test process
        result = runner.invoke(app, teacher_args(tiny_image_folder, out, epochs=2))
        one_line_error(result, "being written by another distill run", "pid")
        run_dir = tmp_path / "run"
        with output_lock(run_dir / "pipeline"):
            again = runner.invoke(app, ["pipeline", "--data", str(tiny_image_folder), "-o",
                                        str(run_dir), "--quiet"])  # fmt: skip
            one_line_error(again, "being written by another distill run")
    assert not out.exists()
    # Released with its holder: the next run proceeds.
    assert runner.invoke(app, teacher_args(tiny_image_folder, out, epochs=2)).exit_code == 0


def test_temp_files_of_a_killed_process_are_swept_and_live_ones_kept(tmp_path, monkeypatch):
    dead, alive = dead_pid(), __import__("os").getpid()
    stale = tmp_path / f".t.pt.{dead}.0123abcd.tmp"
    live = tmp_path / f".t.pt.{alive}.4567cdef.tmp"
    stale_dir = tmp_path / f"distill-int8-{dead}-x1"
    for p in (stale, live):
        p.write_bytes(b"half a checkpoint")
    stale_dir.mkdir()
    assert sorted(p.name for p in sweep_stale(tmp_path)) == [stale.name]
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert [p.name for p in sweep_stale()] == [stale_dir.name]
    assert live.exists() and not stale.exists() and not stale_dir.exists()


def test_a_write_that_fails_leaves_no_temp_file(tmp_path):
    from distill.files import atomic_write

    (tmp_path / "keep.json").write_text("old")

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"\(the disk is full\); the previous file is unchanged"):
        atomic_write(tmp_path / "keep.json", fails)
    assert (tmp_path / "keep.json").read_text() == "old" and leftovers(tmp_path) == []


def test_outputs_are_never_overwritten_without_force(tmp_path):
    mine = tmp_path / "report.md"
    mine.write_text("# my own notes\n")
    save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    refused = runner.invoke(app, ["report", str(tmp_path)])
    one_line_error(refused, "report.md", "--force")
    assert mine.read_text() == "# my own notes\n"
    assert runner.invoke(app, ["report", str(tmp_path), "--force"]).exit_code == 0
    # Now it is the tool's own file: regenerated without --force.
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 0
    bench = tmp_path / "b.json"
    bench.write_text('{"mine": true}')
    result = runner.invoke(app, ["bench", str(tmp_path / "m.pt"), "-o", str(bench)])
    one_line_error(result, "b.json", "--force")
    assert json.loads(bench.read_text()) == {"mine": True}


# ---------------------------------------------------------------------------------------------
# Crafted, damaged or absurd inputs


def test_a_device_or_a_pipe_given_as_a_file_is_named_as_such_and_never_read(
    tiny_image_folder, tmp_path
):
    # Not "does not exist" (it does), and never opened: reading a pipe waits for a writer.
    import os

    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)
    weights = ["teacher", "import", "torchvision:resnet18", "--data", str(tiny_image_folder),
               "--out", str(tmp_path / "t.pt"), "--weights"]  # fmt: skip
    for special in ("/dev/null", str(pipe)):
        for args in (["eval", special], ["predict", special, str(tmp_path)], [*weights, special],
                     ["pipeline", "--config", special, "--out", str(tmp_path / "run")],
                     ["student", "--teacher", special, "--arch", "resnet18-quarter",
                      "--out", str(tmp_path / "s.pt")]):  # fmt: skip
            one_line_error(runner.invoke(app, args), "is not a regular file")
    one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "is a folder")


def test_a_decompression_bomb_in_training_data_is_refused_like_in_predict(tmp_path):

    for split, n in (("train", 3),):
        for label in ("a", "b"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    bomb = png_header_only(tmp_path / "train" / "a" / "bomb.png", 20_000, 20_000)
    with pytest.raises(UserError, match="decompression bombs") as e:
        load_data(DataSettings(str(tmp_path), cache_dir=tmp_path.parent / "c", val_size=2))
    assert str(bomb) in str(e.value)


@pytest.mark.parametrize(
    "fields,problem",
    [
        ({"classes": 3}, "classes"),
        ({"classes": ["a"]}, "classes"),
        ({"input_size": [3, 100000, 100000]}, "input_size"),
        ({"input_size": "abc"}, "input_size"),
        ({"std": [0.25, -1.0, 0.25]}, "std"),
        ({"mean": [float("nan")] * 3}, "mean"),
    ],
)
def test_a_crafted_checkpoint_is_refused_with_one_line(tmp_path, fields, problem):
    save_checkpoint(_checkpoint(**fields), tmp_path / "x.pt")
    with pytest.raises(UserError, match=problem) as e:
        load_checkpoint(tmp_path / "x.pt")
    assert "damaged" in str(e.value) and "\n" not in str(e.value)
    huge = _checkpoint()
    huge["model_config"] = dict(huge["model_config"], stem_width=10**9)
    save_checkpoint(huge, tmp_path / "huge.pt")  # no allocation of a billion-channel layer
    with pytest.raises(UserError, match="width"):
        load_checkpoint(tmp_path / "huge.pt")


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--lr", "inf"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--seed", str(2**64)], "--seed"),
        (["--epochs", "0"], "--epochs"),
        (["--label-smoothing", "2"], "--label-smoothing"),
        (["--ema-decay", "1.5"], "--ema-decay"),
    ],
)
def test_absurd_training_numbers_are_refused_up_front(tiny_image_folder, tmp_path, flags, named):
    result = runner.invoke(app, teacher_args(tiny_image_folder, tmp_path / "t.pt", *flags))
    one_line_error(result, named)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--temperature", "inf"], "--temperature"),
        (["--beta", "nan"], "--beta"),
        (["--warmup", "inf"], "--warmup"),
        (["--alpha", "-1"], "--alpha"),
    ],
)
def test_absurd_kd_numbers_are_refused_up_front(tmp_path, flags, named):
    teacher = tmp_path / "t.pt"
    save_checkpoint(_checkpoint(), teacher)
    args = ["student", "--teacher", str(teacher), "--arch", "resnet18-quarter", "--out",
            str(tmp_path / "s.pt"), "--data", str(tmp_path), *flags]  # fmt: skip
    one_line_error(runner.invoke(app, args), named)


def test_absurd_bench_sizes_are_refused_before_timing(tmp_path):
    save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    for sizes, named in (("100000000", "between 1 and"), ("0", "between 1 and"),
                         ("1,a", "--batch-sizes item 2 must be an integer")):  # fmt: skip
        result = runner.invoke(app, ["bench", str(tmp_path / "m.pt"), "--batch-sizes", sizes])
        one_line_error(result, named)


def test_a_late_divergence_names_its_suspects_and_resumes_with_a_lower_lr(
    tiny_dataset, tmp_path, monkeypatch
):
    monkeypatch.setattr(distill.train, "STATE_SAVE_SECONDS", 0.0)
    poisoned = {"on": True}

    class Objective:
        suspects = "--lr, --temperature"

        def forward_train(self, model, batch, progress):
            logits = model(batch.x)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch.targets)
            return logits, loss * float("nan") if poisoned["on"] and progress >= 1.5 else loss

    out = tmp_path / "d.pt"
    recipe = replace(make_recipe("quick", batch_size=16), epochs=3)

    def train(recipe, resume=False):
        torch.manual_seed(0)
        model = CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=4))
        run = RunSettings(out, "cpu", quiet=True, resume=resume)
        with training_run(run):
            return fit(model, tiny_dataset, recipe, run, kind="teacher", arch="micro",
                       objective=Objective())  # fmt: skip

    with pytest.raises(TrainingDiverged) as e:
        train(recipe)
    message = str(e.value)
    assert "epoch 2" in message and "--lr, --temperature" in message
    assert "--resume" in message and str(last_path(out)) in message
    # At batch 16 the quick recipe's lr (0.2 at 256) gives a peak of 0.0125: the hint's --lr,
    # which a resume takes as the lr of its global batch, must be below that, not half of 0.2.
    hinted = float(re.search(r"--lr ([0-9.e+-]+)", message).group(1))
    assert hinted < recipe.peak_lr(1) and hinted == pytest.approx(recipe.peak_lr(1) / 2, 0.01)
    poisoned["on"] = False
    lower = make_recipe(recipe, lr=hinted)
    ckpt = train(lower, resume=True)  # a lower lr is accepted on resume
    assert len(ckpt["history"]) == 3 and out.exists()
    assert ckpt["metrics"]["peak_lr"] == pytest.approx(hinted)


def test_a_run_whose_validation_diverged_is_not_saved_as_a_result(tiny_dataset, tmp_path):
    """Running statistics gone to NaN (as at an absurd lr): training mode uses batch statistics
    and its loss stays finite; validation is NaN. Not a result, whatever its accuracy reads."""
    torch.manual_seed(0)
    model = CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=4))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))

    def poison(m, _inputs) -> None:
        m.running_mean.fill_(float("nan"))

    bn.register_forward_pre_hook(poison)
    out = tmp_path / "d.pt"
    run = RunSettings(out, "cpu", quiet=True)
    recipe = replace(make_recipe("quick", batch_size=16), epochs=2)
    diverged = pytest.raises(TrainingDiverged, match="validation loss or a weight .* epoch 1")
    with diverged, training_run(run):
        fit(model, tiny_dataset, recipe, run, kind="teacher", arch="micro")
    assert not out.exists()


def test_a_teacher_trained_on_other_data_is_named(tiny_image_folder, tiny_dataset, tmp_path):
    teacher = tmp_path / "t.pt"
    save_checkpoint(
        _checkpoint(data={"source": "/data/elsewhere", "val_size": 5000, "train_size": 45000,
                          "split_seed": 0}),
        teacher,
    )  # fmt: skip
    args = ["student", "--teacher", str(teacher), "--arch", "resnet18-quarter", "--out",
            str(tmp_path / "s.pt"), "--data", str(tiny_image_folder), "--cache-dir",
            str(tmp_path / "c")]  # fmt: skip
    line = one_line_error(runner.invoke(app, args), "trained on other data", "/data/elsewhere")
    assert "45,000" in line and "5,000" in line


# ---------------------------------------------------------------------------------------------
# Text from files is text: never markup on the console, escaped in Markdown

HOSTILE = ["[/x]", "a|b", "<b>c</b>", "d`e", "[bold]f", "g*h_i", "j\\k", "l m", "n", "o"]


def test_class_names_from_a_file_are_printed_as_text(tmp_path):
    from distill.data.splits import channel_stats

    base = make_cifar_python(tmp_path / "src", per_class=2, test_per_class=1, label_names=HOSTILE)
    data = load_data(DataSettings(str(base), cache_dir=tmp_path / "c", val_size=10))
    mean, std = channel_stats(data.train.images)
    ckpt = new_checkpoint(
        kind="teacher", arch="resnet18-quarter", model=create_model("resnet18-quarter", 10),
        classes=HOSTILE, mean=list(mean), std=list(std), input_size=[3, 32, 32], recipe={},
        data=dict(data.info),
    )  # fmt: skip
    save_checkpoint(ckpt, tmp_path / "m.pt")
    args = ["eval", str(tmp_path / "m.pt"), "--data", str(base), "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[/x]" in result.output and "[bold]f" in result.output


def test_text_in_markdown_cannot_break_a_table_or_add_tags():
    from distill.report.text import code, plain

    for name in [*HOSTILE, "l\nm"]:  # a path may hold a newline (a class name may not)
        cell = plain(name)
        assert "\n" not in cell and "<b>" not in cell
        assert "|" not in cell.replace("\\|", "")  # no unescaped pipe to split the row
    assert code("x`y|z") == "``x`y\\|z``"


def test_the_console_prints_text_from_files_without_driving_the_terminal(capsys):
    from rich.table import Table

    from distill.console import make_console

    table = Table()
    table.add_column("name")
    table.add_row("a\x1b[2Jb\rc")
    make_console().print(table, "path\x1b]0;title\x07.pt")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "a\\x1b[2Jb\\rc" in out and "path\\x1b]0;title\\x07.pt" in out


@pytest.mark.parametrize("name", ["a\nb.pt", "a\x1b[31mb.pt", "a\u2028b.pt", "a\rb.pt"])
def test_a_file_name_with_control_characters_stays_one_escaped_line(tmp_path, name):
    # A newline or an escape sequence in a name the user gave: the error is still one line,
    # shows the name as Python writes it, and never drives the terminal.
    for args in (["eval", str(tmp_path / name)], ["export", "onnx", str(tmp_path / name)]):
        line = one_line_error(runner.invoke(app, args), "does not exist")
        assert repr(name)[1:-1] in line and "\x1b" not in line, line


def test_a_library_message_is_cut_at_a_sentence_or_a_word_never_mid_word():
    from distill.errors import first_line

    mlflow = RuntimeError(
        "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode and will not "
        "receive further updates. Please migrate to a database backend (e.g., 'sqlite:///x.db')."
    )
    assert first_line(mlflow) == (
        "The filesystem tracking backend (e.g., './mlruns') is in maintenance mode and will not "
        "receive further updates."
    )
    said = first_line(RuntimeError("word " * 40), 30)
    assert said == "word word word word word word..." and len(said) <= 33
    assert first_line(RuntimeError("x" * 50), 20) == "x" * 20 + "..."
    assert first_line(RuntimeError("short\nsecond line")) == "short"
    assert first_line(RuntimeError("")) == "RuntimeError"


def test_a_report_of_hostile_names_keeps_every_table_row_whole(tmp_path):
    """The report end to end, not only its escaping helpers: an arch label, class names and a
    file name holding pipes, tags and newlines leave every table row with its header's cells."""
    from distill.report import write_report

    model = CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=len(HOSTILE)))
    ckpt = new_checkpoint(
        kind="teacher", arch="micro|<b>x</b>", model=model, classes=HOSTILE, mean=[0.5] * 3,
        std=[0.25] * 3, input_size=[3, 32, 32], recipe={}, data={},
        metrics={"val_accuracy": 0.5, "per_class": [0.5] * 10, "confusion": [[1] * 10] * 10},
    )  # fmt: skip
    save_checkpoint(ckpt, tmp_path / "m|<i>]x.pt")
    report = write_report(tmp_path).read_text()
    outside_code = re.sub(r"(`+).*?\1", "", report)  # a code span shows a tag as text
    assert "<b>" not in outside_code and "<i>" not in outside_code
    images = [line for line in report.splitlines() if line.startswith("![")]
    assert any("confusion" in line for line in images)
    for line in images:  # a `]` in the title would end the link early
        assert re.fullmatch(r"!\[(?:[^\]\\]|\\.)*\]\(plots/[\w.]+\.png\)", line), line

    def cells(row: str) -> int:
        return len(re.split(r"(?<!\\)\|", row))

    tables = re.findall(r"(?:^\|.*\n)+", report, re.MULTILINE)
    assert len(tables) >= 2  # the models and the per-class accuracy
    for table in tables:
        rows = table.splitlines()
        assert {cells(row) for row in rows} == {cells(rows[0])}, table


# ---------------------------------------------------------------------------------------------
# Sizes that would take the machine: bounded, and estimated before anything is allocated


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--batch-size", "100000000"], "--batch-size"),
        (["--arch", "resnet18@99999999999999999999999"], "1,000,000,000 a model may have"),
    ],
)
def test_absurd_sizes_are_refused_before_any_allocation(tiny_image_folder, tmp_path, flags, named):
    result = runner.invoke(app, teacher_args(tiny_image_folder, tmp_path / "t.pt", *flags))
    one_line_error(result, named)
    with pytest.raises(UserError, match="image_size"):
        DataSettings(str(tiny_image_folder), image_size=100_000)


def test_what_cannot_fit_the_memory_is_refused_saying_how_much(
    tiny_image_folder, tiny_dataset, tmp_path, monkeypatch
):
    import distill.memory

    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2**30)
    big = DataSettings(
        str(tiny_image_folder), cache_dir=tmp_path, val_size=TINY_VAL_SIZE, image_size=4096
    )
    # 200 images decoded and the split's copy of the 160 training ones, x 3 x 4096^2 bytes,
    # before a single one is decoded.
    with pytest.raises(
        UserError,
        match=r"4096x4096 \(decoded, and the split's copy\) needs at least 16\.9 GiB .* 1\.0 GiB",
    ):
        load_data(big)
    model = CifarResNet(plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=4))
    run = RunSettings(tmp_path / "t.pt", "cpu", quiet=True)
    recipe = make_recipe("quick", batch_size=50_000)
    with pytest.raises(UserError, match="training step of 50,000 images .* --batch-size"):
        fit(model, tiny_dataset, recipe, run, kind="teacher", arch="micro")


def test_a_step_that_cannot_fit_is_refused_before_the_data_is_decoded(
    tiny_image_folder, tmp_path, monkeypatch
):
    # The step needs only the architecture, the image size and the batch: a run that could
    # never take one step must not first decode (and cache) gigabytes of images.
    import distill.memory

    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2**30)
    teacher = teacher_args(tiny_image_folder, tmp_path / "t.pt", "--image-size", "4096")
    one_line_error(runner.invoke(app, teacher), "training step of 32 images at 4096x4096")
    assert not (tmp_path / "cache").exists()
    save_checkpoint(_checkpoint(), tmp_path / "teacher.pt")
    student = ["student", "--teacher", str(tmp_path / "teacher.pt"), "--arch", "resnet18-quarter",
               "--out", str(tmp_path / "s.pt"), "--image-size", "4096", "--batch-size", "8",
               "--data", str(tiny_image_folder),
               "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    one_line_error(runner.invoke(app, student), "training step of 8 images at 4096x4096")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; ...)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
        ),
    ],
    ids=["cuda", "cpu"],
)
def test_running_out_of_memory_while_training_is_one_line(
    tiny_image_folder, tmp_path, monkeypatch, error
):
    # The estimates are lower bounds: a run that passed them can still run out. That is one
    # line saying what to lower, not an allocator's traceback.
    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(distill.train, "train_one_epoch", out_of_memory)
    result = runner.invoke(app, teacher_args(tiny_image_folder, tmp_path / "t.pt"))
    one_line_error(result, "ran out of memory training at batch", "lower --batch-size")
    assert not (tmp_path / "t.pt").exists()


def test_kd_methods_sizes_are_bounded_and_its_step_estimated(monkeypatch):
    import distill.memory

    one_line_error(runner.invoke(app, ["kd-methods", "--batch-size", "100000"]), "--batch-size")
    one_line_error(runner.invoke(app, ["kd-methods", "--classes", "10000000"]), "--classes")
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 2**30)
    args = ["kd-methods", "--device", "cpu", "--batch-size", "20000"]
    one_line_error(runner.invoke(app, args), "training step of 20,000 images", "1.0 GiB free")
    monkeypatch.setattr(distill.memory, "available", lambda device="cpu": 8 * 2**30)
    args = ["kd-methods", "--device", "cpu", "--batch-size", "1024"]  # CRD's negatives: 16 GiB
    one_line_error(runner.invoke(app, args), "--kd crd", "lower --batch-size")


def test_a_decode_block_stays_small_at_any_image_size():
    # 500 images per block at 32x32; at 4096x4096 that would be a 25 GB block beside the result.
    from distill.data.decode import CHUNK, CHUNK_BYTES, chunk_for

    assert chunk_for(32) == CHUNK
    for side in (96, 224, 512, 2048, 4096):
        n = chunk_for(side)
        assert n >= 1 and (n * 3 * side * side <= CHUNK_BYTES or n == 1), side


# ---------------------------------------------------------------------------------------------
# Records read from files are checked against their type and range; derived facts recounted


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"metrics": [1, 2]}, "metrics is not a table"),
        ({"metrics": {"val_accuracy": 1.5}}, "val_accuracy 1.5 is not a fraction"),
        ({"metrics": {"params": -3}}, "params -3 is not a count"),
        ({"history": "epoch 1"}, "history"),
        ({"arch": ["resnet18"]}, "arch"),
    ],
)
def test_impossible_records_in_a_checkpoint_are_refused(tmp_path, fields, problem):
    save_checkpoint(_checkpoint(**fields), tmp_path / "x.pt")
    with pytest.raises(UserError, match=problem):
        load_checkpoint(tmp_path / "x.pt")


def test_the_report_counts_weights_and_ignores_a_hostile_bench_record(tmp_path):
    from distill.budget import count_params, format_count

    ckpt = _checkpoint(metrics={"params": 1, "macs": 2, "val_accuracy": 0.5})
    save_checkpoint(ckpt, tmp_path / "m.pt")
    hostile = [
        {"model": "m.pt", "environment": ["cpu"], "results": "fast"},
        {"model": {"path": "m.pt"}, "environment": {"device": "cpu", "cpu": ["x"]},
         "results": [{"engine": "onnxruntime", "batch_size": 1, "p50_ms": -5.0},
                     {"engine": ["x"], "batch_size": [1], "p50_ms": [1.0]}],
         "speedup": "10x"},
    ]  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(hostile))
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    real = count_params(create_model("resnet18-quarter", 4))
    assert f"| {format_count(real)} |" in report and "| 1 |" not in report
    assert "-5.00" not in report
    (tmp_path / "bench.json").write_text("[" * 100_000 + "]" * 100_000)
    again = runner.invoke(app, ["report", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert "nested too deeply" in (tmp_path / "report.md").read_text()


def _relabelled(path: Path, **fields) -> Path:
    """A resnet18-quarter checkpoint with some of its record edited by hand."""
    save_checkpoint(_checkpoint(**fields), path)
    return path


def test_an_arch_label_that_disagrees_with_the_weights_is_refused_everywhere(
    tiny_image_folder, tmp_path, monkeypatch
):
    from distill.api import load_model
    from distill.registry import model_config

    half_plan = model_config("resnet18-half", 4).to_dict()
    cases = {
        "label.pt": {"arch": "resnet18-half"},  # the label alone edited
        "fitted.pt": {"arch": "resnet18@2M"},
        "both.pt": {"arch": "resnet18-half", "model_config": half_plan},  # label and plan edited
        "imported.pt": {
            "arch": "torchvision:resnet50",
            "model_config": {"source": "torchvision", "name": "resnet18", "num_classes": 4},
        },
    }
    for name, fields in cases.items():
        path = _relabelled(tmp_path / "bad" / name, **fields)
        with pytest.raises(UserError) as e:
            load_checkpoint(path)
        said = str(e.value)
        assert "\n" not in said and "damaged" in said, said
        assert fields["arch"] in said or "weights" in said, said
        if name == "label.pt":
            assert "resnet18-quarter" in said, said  # what the weights really are
        with pytest.raises(UserError):
            load_model(path)
    path = tmp_path / "bad" / "label.pt"
    data = ["--data", str(tiny_image_folder), "--cache-dir", str(tmp_path / "cache")]
    for args in (
        ["eval", str(path), *data],
        ["budget", str(path)],
        ["compare", str(path)],
        ["export", "onnx", str(path), "-o", str(tmp_path / "m.onnx")],
        ["predict", str(path), str(tiny_image_folder)],
    ):
        one_line_error(runner.invoke(app, args), "resnet18-half", "resnet18-quarter")
    assert not (tmp_path / "m.onnx").exists()
    # The report of a folder shows the checkpoints it can trust and says why it left one out.
    good = tmp_path / "run" / "good.pt"
    save_checkpoint(_checkpoint(metrics={"val_accuracy": 0.5}), good)
    _relabelled(tmp_path / "run" / "edited.pt", arch="resnet18-half")
    result = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Skipped `edited.pt`" in report and "resnet18-half" in report.split("Skipped")[1]
    assert "| resnet18-half |" not in report
    # And so does compare, on stderr, once however the file is reached (a link to its folder),
    # from the one read of each file that collecting the folder made.
    (tmp_path / "run" / "sub").mkdir()
    (tmp_path / "run" / "sub" / "up").symlink_to(tmp_path / "run")
    reads = []
    real_load = distill.checkpoint.load_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    for module in (distill.checkpoint, distill.compare):
        monkeypatch.setattr(module, "load_checkpoint", counted)
    result = runner.invoke(app, ["compare", str(tmp_path / "run")])
    assert reads.count("edited.pt") == 2  # the folder, and the folder through the link
    assert result.exit_code == 0 and "good.pt" in result.stdout, result.output
    said = [line for line in result.stderr.splitlines() if "edited.pt" in line]
    assert len(said) == 1 and said[0].startswith("note: left out") and "resnet18-half" in said[0]


def test_a_pruned_label_is_derived_from_its_source_and_may_not_grow_it(tmp_path):
    narrower = CifarResNet(plan("basic", (2, 2, 2, 2), (8, 16, 32, 64), stem_width=8,
                                num_classes=4))  # fmt: skip
    pruned = _checkpoint(kind="pruned", arch="resnet18-quarter-pruned")
    pruned.update(model_config=narrower.channel_plan().to_dict(), state_dict=narrower.state_dict())
    save_checkpoint(pruned, tmp_path / "p.pt")
    assert load_checkpoint(tmp_path / "p.pt")["arch"] == "resnet18-quarter-pruned"
    result = runner.invoke(app, ["compare", str(tmp_path / "p.pt")])
    assert result.exit_code == 0 and "resnet18-quarter-pruned" in result.output, result.output
    wider = CifarResNet(plan("basic", (2, 2, 2, 2), (32, 32, 64, 128), stem_width=16,
                             num_classes=4))  # fmt: skip
    grown = dict(pruned, model_config=wider.channel_plan().to_dict(), state_dict=wider.state_dict())
    save_checkpoint(grown, tmp_path / "g.pt")
    with pytest.raises(UserError, match="resnet18-quarter-pruned"):
        load_checkpoint(tmp_path / "g.pt")
    deeper = CifarResNet(plan("basic", (2, 2, 3, 2), (8, 16, 32, 64), stem_width=8,
                              num_classes=4))  # fmt: skip
    save_checkpoint(dict(pruned, model_config=deeper.channel_plan().to_dict(),
                         state_dict=deeper.state_dict()), tmp_path / "d.pt")  # fmt: skip
    with pytest.raises(UserError, match="resnet18-quarter-pruned"):
        load_checkpoint(tmp_path / "d.pt")
