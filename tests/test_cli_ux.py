"""What users of training tools expect from the command line: every --help renders, flags mean
the same thing on every command, a training run leaves its metrics beside the checkpoint and
prints one plan line and one line per epoch, and pipeline settings round-trip and are checked
key by key."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pytest
import typer
from conftest import TINY_BATCH_SIZE, TINY_VAL_SIZE, one_line_error, teacher_args
from typer.testing import CliRunner

import distill.progress
from distill import __version__
from distill.checkpoint import load_checkpoint
from distill.cli import app
from distill.docs import generated_section, pipeline_settings_table
from distill.pipeline.config import load_config
from distill.progress import COLUMNS
from distill.recipes import RECIPES
from distill.settings import KD_METHODS

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# Wide enough that typer's option table neither cuts a flag name nor folds a list of choices.
WIDE = {"COLUMNS": "300"}


def walk(command: typer.core.TyperGroup, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk(typer.main.get_command(app)))
LEAVES = {path: cmd for path, cmd in COMMANDS.items() if not hasattr(cmd, "commands")}


def options(path: tuple[str, ...]) -> dict[str, typer.core.TyperOption]:
    """Each option of a command by its long flag."""
    out = {}
    for p in COMMANDS[path].params:
        if isinstance(p, typer.core.TyperOption):
            out[next(o for o in p.opts if o.startswith("--"))] = p
    return out


def flat(text: str) -> str:
    """Help text without the table's borders and line breaks: what a reader reads."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------
# --help, --version, completion


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "distill")
def test_every_help_renders_its_text(path):
    result = runner.invoke(app, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    shown = flat(result.output)
    command = COMMANDS[path]
    first = " ".join((command.help or "").split("\n\n")[0].split())
    assert first and first in shown
    for p in command.params:
        if p.hidden:
            continue
        for flag in (*p.opts, *p.secondary_opts):
            assert (flag if flag.startswith("-") else p.name) in shown
        # Help is rich markup: an escaped "\[" shows as "[", anything else as written.
        text = " ".join((getattr(p, "help", None) or "").replace("\\[", "[").split())
        assert text in shown, f"{p.name}: {text!r} is not shown whole"


# A default shown in brackets; typer's own style would parenthesise a described one.
DEFAULT = re.compile(r"\[default: ([^\]]*)\]")


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(p) or "distill")
def test_every_help_shows_defaults_and_switches_one_way(path):
    shown = flat(runner.invoke(app, [*path, "--help"], env=WIDE, terminal_width=300).output)
    for value in DEFAULT.findall(shown):
        assert value.strip() and not value.startswith("("), f"[default: {value}]"
    sentences = DEFAULT.sub("", shown).lower()
    assert "default:" not in sentences and "(default " not in sentences, sentences
    assert "<bool>" not in shown  # a switch takes no value: it shows no type


def test_defaults_read_the_same_concrete_or_derived():
    shown = flat(runner.invoke(app, ["student", "--help"], env=WIDE, terminal_width=300).output)
    assert {"5M", "4.0", "none", "the recipe's", "the teacher's", "the method's"} <= set(
        DEFAULT.findall(shown)
    )


def test_commands_are_listed_in_the_order_a_user_runs_them():
    shown = runner.invoke(app, ["--help"], env=WIDE, terminal_width=300).output
    panel = shown.split("Commands", 1)[1]
    names = [m.group(1) for line in panel.splitlines() if (m := re.match(r"│ (\S+) ", line))]
    assert names[:10] == [
        "teacher", "student", "prune", "export", "predict", "eval", "bench", "compare", "report",
        "pipeline",
    ]  # fmt: skip
    assert sorted(names) == sorted(path[0] for path in COMMANDS if len(path) == 1)


def test_pipeline_help_shows_its_tables_literally():
    result = runner.invoke(app, ["pipeline", "--help"], env=WIDE)
    assert "[data] [teacher] [student] [kd] [prune]" in result.output


def test_settings_help_keeps_brackets():
    result = runner.invoke(app, ["teacher", "train", "--help"], env=WIDE)
    assert "pip install distill[tensorboard]" in result.output


DEVICE_COMMANDS = [p for p in LEAVES if "--device" in options(p)]
CHOICES = [
    (("student",), "--kd", list(get_args(KD_METHODS))),
    (("student",), "--recipe", list(RECIPES)),
    (("teacher", "train"), "--recipe", list(RECIPES)),
    (("prune",), "--recipe", list(RECIPES)),
    (("prune",), "--importance", ["magnitude", "taylor"]),
    (("eval",), "--split", ["val", "test"]),
    (("pipeline",), "--preset", ["quick", "standard"]),
    *((p, "--device", ["auto", "cpu", "cuda"]) for p in DEVICE_COMMANDS),
]


@pytest.mark.parametrize(
    "path,flag,choices", CHOICES, ids=[f"{' '.join(p)} {flag}" for p, flag, _ in CHOICES]
)
def test_choices_are_shown(path, flag, choices):
    result = runner.invoke(app, [*path, "--help"], env=WIDE)
    # The option's row (help text above it may name the flag too).
    row = next(ln for ln in result.output.splitlines() if re.search(rf"^│\s+{flag}\s", ln))
    assert "<" + "|".join(choices) + ">" in row


def test_every_command_that_runs_a_model_takes_device():
    runs_a_model = {("teacher", "train"), ("student",), ("prune",), ("eval",), ("predict",)}
    assert runs_a_model | {("bench",), ("pipeline",)} <= set(DEVICE_COMMANDS)


def test_version_and_shell_completion():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"distill {__version__}\n"
    shown = runner.invoke(app, ["--help"], env=WIDE).output
    assert "--install-completion" in shown and "--show-completion" in shown


# ---------------------------------------------------------------------------------------------
# Flags that mean the same everywhere


def test_json_is_a_switch_everywhere():
    with_json = {path for path in LEAVES if "--json" in options(path)}
    assert {("models",), ("budget",), ("eval",), ("predict",), ("bench",)} <= with_json
    for path in with_json:
        opt = options(path)["--json"]
        assert opt.is_flag and opt.default is False, path
    # (`models --json` measures every architecture: its JSON is tested in test_cli_models.py)
    result = runner.invoke(app, ["budget", "resnet18-quarter", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["within"] is True


WRITERS = [("teacher", "train"), ("student",), ("prune",), ("export", "onnx"), ("bench",)]


@pytest.mark.parametrize("path", [*WRITERS, ("pipeline",)], ids=" ".join)
def test_out_is_the_output_flag_everywhere_a_file_is_written(path):
    out = options(path)["--out"]
    assert set(out.opts) == {"-o", "--out"}
    names = {flag for p in COMMANDS[path].params for flag in getattr(p, "opts", [])}
    assert not names & {"--output", "--save", "--out-file"}


def test_device_defaults_to_auto_except_where_documented():
    for path in LEAVES:
        opt = options(path).get("--device")
        if opt is None:
            continue
        if path == ("predict",):  # the exception, and its reason, are in its help
            assert opt.default == "cpu" and "The CPU unless told otherwise" in opt.help
        elif opt.default is None:  # a settings flag: the library's default, shown as such
            assert "auto" in str(opt.show_default), path
        else:
            assert opt.default == "auto", path


# ---------------------------------------------------------------------------------------------
# A training run


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One decoded-data cache for the module: each run then skips decoding the PNGs."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tiny_image_folder, tmp_path_factory, cache):
    """A teacher trained through the CLI with the GPU recipe, on a CPU, with the CPU warning's
    threshold lowered so this tiny run counts as GPU-sized."""
    out = tmp_path_factory.mktemp("cli") / "t.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill.progress, "CPU_WARN_IMAGE_PASSES", 100)
        mp.setattr(distill.progress, "FEW_STEPS", 0)  # its own test below
        args = teacher_args(
            tiny_image_folder, out, "--recipe", "standard", cache=cache, epochs=2, quiet=False
        )
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_a_run_prints_its_plan_a_warning_and_one_line_per_epoch(trained):
    out, output = trained
    shown = lines(output)
    plan = shown[0]
    assert re.fullmatch(
        r"training on 140 images at 32x32, cifar stem \(val 20\): standard recipe, 2 epochs x "
        r"4 steps of 32 images, "
        r"peak lr \S+, cpu, (bf16|fp32)",
        plan,
    ), plan
    assert len(plan) > 80  # not a terminal: a long line stays one line
    warnings = [ln for ln in shown if "warning" in ln]
    assert "--recipe quick" in warnings[0]
    assert shown.index(warnings[0]) == 1
    # Eight steps may end at chance (bf16 numerics make it likelier): then the result line is
    # followed by the louder warning, and by nothing else.
    late = warnings[1:]
    assert all("learned nothing" in w for w in late), output
    epochs = [ln for ln in shown if ln.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/2", "2/2"]
    saved = shown[-1 - len(late)]
    assert saved.startswith(f"saved {out}: resnet18-quarter") and "top-5" in saved
    assert len(shown) == 5 + len(late)


def test_a_run_too_short_to_learn_says_so(tiny_image_folder, tmp_path, cache):
    out = tmp_path / "t.pt"
    args = teacher_args(tiny_image_folder, out, cache=cache, epochs=2, quiet=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in lines(result.output) if ln.startswith("warning")]
    said = r"only \d+ optimizer steps .*raise --epochs or lower --batch-size"
    assert re.search(said, warnings[0])
    # Eight steps may end at chance: then the result line is followed by a louder warning.
    assert all("learned nothing" in w for w in warnings[1:]), result.output


def test_a_run_that_learned_nothing_says_so_with_the_likely_causes():
    from distill.progress import failure_warning

    recipe = {"lr": 0.2, "lr_batch": 256, "batch_size": 32, "epochs": 2}
    ckpt = {
        "classes": ["a", "b", "c", "d"],
        "recipe": recipe,
        "data": {"train_size": 140},
        "metrics": {"val_accuracy": 0.25, "val_loss": 1.39, "epochs_run": 2, "peak_lr": 0.025},
    }
    said = failure_warning(ckpt)
    assert "chance for 4 classes" in said and "8 steps here" in said
    assert "peak 0.025 at 32" in said and "BatchNorm" in said  # the lr the optimizer was given
    diverged = failure_warning(ckpt | {"metrics": {"val_accuracy": 0.6, "val_loss": math.nan}})
    assert "val loss is nan" in diverged
    assert failure_warning(ckpt | {"metrics": {"val_accuracy": 0.6, "val_loss": 1.0}}) is None
    # Counted as the loader takes them: a set smaller than a batch is one step an epoch, and
    # two processes take two batches a step.
    small = ckpt | {"data": {"train_size": 90}, "recipe": recipe | {"batch_size": 256}}
    assert "2 steps here" in failure_warning(small)
    two = ckpt | {"metrics": ckpt["metrics"] | {"processes": 2}}
    assert "4 steps here" in failure_warning(two)


def test_a_run_writes_its_metrics_beside_the_checkpoint(trained):
    out, _ = trained
    history = load_checkpoint(out)["history"]
    with open(out.with_name("t.metrics.csv"), newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == (
            "epoch",
            "lr",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "images_per_s",
            "seconds",
        )
        rows = list(reader)
    assert len(rows) == len(history) == 2
    for row, epoch in zip(rows, history, strict=True):
        assert {k: float(v) for k, v in row.items()} == {k: float(epoch[k]) for k in COLUMNS}
    assert not out.with_name("t.last.pt").exists()  # removed after success without --keep-last


def test_quiet_prints_only_the_result_line_unwrapped(tiny_image_folder, tmp_path, cache):
    """A real process writing to a pipe: no progress, no epoch lines, no wrapping at 80."""
    out = tmp_path / ("a-long-folder-name-so-the-result-line-is-wider-than-a-terminal" * 2) / "t.pt"
    out.parent.mkdir()
    args = teacher_args(tiny_image_folder, out, cache=cache)  # with --quiet
    proc = subprocess.run(
        [sys.executable, "-m", "distill", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    shown = lines(proc.stdout)
    # One epoch may end at chance: the verdict on the result is part of the result.
    assert all("learned nothing" in ln for ln in shown[1:])
    assert shown[0].startswith(f"saved {out}: ") and len(shown[0]) > 160
    assert out.with_name("t.metrics.csv").is_file()


def test_keep_last_keeps_the_final_training_state(tiny_image_folder, tmp_path, cache):
    out = tmp_path / "t.pt"
    result = runner.invoke(app, teacher_args(tiny_image_folder, out, "--keep-last", cache=cache))
    assert result.exit_code == 0, result.output
    state = load_checkpoint(out.with_name("t.last.pt"))["train_state"]
    assert state["epoch"] == 1 and len(state["history"]) == 1


def test_eval_shows_top5_next_to_top1(trained, cache):
    out, _ = trained
    cached = ["--cache-dir", str(cache)]
    result = runner.invoke(app, ["eval", str(out), *cached])
    assert result.exit_code == 0, result.output
    assert re.search(r"top-1 \d+\.\d\d%\s+top-5 \d+\.\d\d%", lines(result.output)[-1])
    as_json = runner.invoke(app, ["eval", str(out), *cached, "--json"])
    record = json.loads(as_json.output)
    assert 0 <= record["accuracy"] <= record["top5"] <= 1


def test_training_without_out_writes_a_new_numbered_run(
    trained, tiny_image_folder, tmp_path, monkeypatch, cache
):
    monkeypatch.chdir(tmp_path)
    teacher, _ = trained
    quick = ["--recipe", "quick", "--epochs", "1", "--steps", "1", "--cache-dir", str(cache)]
    quick += ["--val-size", str(TINY_VAL_SIZE), "--batch-size", str(TINY_BATCH_SIZE)]
    for _ in range(2):
        result = runner.invoke(app, ["prune", str(teacher), "--budget", "0.4M", *quick])
        assert result.exit_code == 0, result.output
    first = lines(result.output)[0]
    assert first == "no --out given: writing runs/pruned2/pruned.pt"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["pruned", "pruned2"]
    assert (tmp_path / "runs" / "pruned2" / "pruned.pt").is_file()


# ---------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_without_the_package_is_one_line(tiny_image_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    out = tmp_path / "t.pt"
    args = teacher_args(tiny_image_folder, out, "--tensorboard", str(tmp_path / "tb"), quiet=False)
    result = runner.invoke(app, args)
    one_line_error(result, "pip install 'distill[tensorboard]'")
    assert not list(tmp_path.iterdir())  # refused before the data was decoded


def test_tensorboard_logs_the_same_metrics(tiny_image_folder, tmp_path, cache):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "t.pt"
    args = teacher_args(
        tiny_image_folder, out, "--tensorboard", str(tmp_path / "tb"), cache=cache, epochs=2
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    history = load_checkpoint(out)["history"]
    for key, tag in (("train_loss", "train/loss"), ("val_accuracy", "val/accuracy"), ("lr", "lr")):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(h["epoch"], pytest.approx(h[key], rel=1e-6)) for h in history]


# ---------------------------------------------------------------------------------------------
# Pipeline settings


def pipeline(folder: Path, *args: str) -> list[str]:
    return ["pipeline", "--data", str(folder), *args]


@pytest.mark.parametrize("preset", ["quick", "standard"])
def test_print_config_reads_back_to_the_same_settings(tiny_image_folder, tmp_path, preset):
    printed = runner.invoke(app, pipeline(tiny_image_folder, "--preset", preset, "--print-config"))
    assert printed.exit_code == 0, printed.output
    (tmp_path / "p.toml").write_text(printed.output)
    data = {"data": {"source": str(tiny_image_folder)}}
    # Read back under the other preset too: the printed file is the whole configuration.
    for other in ("quick", "standard"):
        again = load_config(other, tmp_path / "p.toml", data)
        assert again.to_dict() == load_config(preset, None, data).to_dict()


@pytest.mark.parametrize(
    "toml,message",
    [
        (
            '[teacher]\nepochs = "three"',
            "teacher.epochs (bad.toml) must be an integer, got 'three'",
        ),
        ('epochs = "three"', "unknown pipeline setting epochs (bad.toml)"),
        ('[export]\nint8 = "no"', "export.int8 (bad.toml) must be true or false, got 'no'"),
        (
            '[bench]\nbatch_sizes = [1, "a"]',
            "bench.batch_sizes (bad.toml) item 2 must be an integer, got 'a'",
        ),
        ("[prune]\nsteps = 0", "prune.steps (bad.toml) must be greater than 0, got 0"),
        (
            '[prune]\nimportance = "random"',
            "prune.importance (bad.toml) must be one of magnitude, taylor, got 'random'",
        ),
        ("seed = " + "[" * 5000 + "]" * 5000, "bad.toml is not valid TOML: nested too deeply"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key(tiny_image_folder, tmp_path, toml, message):
    (tmp_path / "bad.toml").write_text(toml + "\n")
    config = ["--config", str(tmp_path / "bad.toml"), "--dry-run"]
    result = runner.invoke(app, pipeline(tiny_image_folder, *config))
    one_line_error(result, message)


def leaves(table: dict, prefix: str = ""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_every_key_is_type_checked(tiny_image_folder, tmp_path):
    from distill.errors import UserError

    printed = runner.invoke(app, pipeline(tiny_image_folder, "--print-config")).output
    keys = dict(leaves(tomllib.loads(printed)))
    assert len(keys) > 60
    for key, value in keys.items():
        wrong = '"x"' if isinstance(value, bool) else "true"  # no key takes both
        *tables, name = key.split(".")
        table = f"[{'.'.join(tables)}]\n" if tables else ""
        (tmp_path / "bad.toml").write_text(f"{table}{name} = {wrong}\n")
        data = {} if key == "data.source" else {"data": {"source": "x"}}  # flags win over files
        with pytest.raises(UserError) as e:
            load_config("quick", tmp_path / "bad.toml", data)
        assert str(e.value).startswith(f"{key} (bad.toml) must be "), str(e.value)


def test_prune_enabled_false_skips_the_prune_stage(tiny_image_folder, tmp_path):
    plan = runner.invoke(app, pipeline(tiny_image_folder, "--dry-run"))
    assert any(ln.startswith("prune ") for ln in lines(plan.output))
    (tmp_path / "p.toml").write_text("[prune]\nenabled = false\n")
    config = ["--config", str(tmp_path / "p.toml"), "--dry-run"]
    result = runner.invoke(app, pipeline(tiny_image_folder, *config))
    assert result.exit_code == 0, result.output
    stages = [ln.split()[0] for ln in lines(result.output)]
    assert "prune" not in stages and {"student", "export"} <= set(stages)


def test_one_epoch_and_one_step_are_singular(tiny_image_folder, tmp_path):
    toml = "[teacher]\nepochs = 1\n[student]\nepochs = 1\n[prune]\nsteps = 1\nepochs = 1\n"
    (tmp_path / "p.toml").write_text(toml)
    config = ["--config", str(tmp_path / "p.toml"), "--dry-run"]
    result = runner.invoke(app, pipeline(tiny_image_folder, *config))
    assert result.exit_code == 0, result.output
    plan = {ln.split()[0]: ln for ln in lines(result.output)}
    assert plan["teacher"].split(", ")[2] == "1 epoch"
    assert plan["baseline"].endswith(", 1 epoch")
    assert plan["prune"].endswith(" in 1 step + 1 recovery epoch")
    assert distill.progress.plural(2, "step") == "2 steps"


def test_readme_pipeline_settings_table_is_generated():
    readme = (ROOT / "README.md").read_text()
    assert generated_section(readme, "pipeline-settings") == pipeline_settings_table(), (
        "README.md's pipeline settings table is out of date: run python -m distill.docs"
    )


def test_readme_toml_examples_load(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert blocks
    for block in blocks:
        (tmp_path / "example.toml").write_text(block)
        load_config("quick", tmp_path / "example.toml", {"data": {"source": "cifar10"}})
