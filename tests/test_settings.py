"""One home per setting: each main default is written once (in distill/settings.py), and flags,
TOML files and checkpoint records all build the same objects through the same typed code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import UserError
from distill.pipeline.config import PRESETS, load_config, parse, to_toml
from distill.recipes import RECIPES, make_recipe
from distill.settings import (
    BenchSettings,
    DataSettings,
    ExportSettings,
    KDSettings,
    PruneSettings,
    Recipe,
    RunSettings,
    data_for_model,
)
from distill.typed import build, to_dict

ROOT = Path(__file__).resolve().parents[1]

# (the default as settings.py writes it, a new value, how each place shows the new value)
CHANGED = [
    ("setting(5000,", "setting(4321,", "4321"),
    ('setting(4.0, "Softmax temperature T.")', 'setting(3.5, "Softmax temperature T.")', "3.5"),
    ("setting((1, 32, 256),", "setting((1, 16, 96),", "1,16,96"),
]  # fmt: skip

# Run in a copy of the code whose settings.py holds the new defaults: every place that shows or
# uses a default must show the new one, so none of them restates it.
PROBE = """
import json
from typer.testing import CliRunner
from distill.api import args as api_args
from distill.cli import app
from distill.docs import pipeline_settings_table
from distill.settings import KDSettings, resolve_kd

r, wide = CliRunner(), {"COLUMNS": "300"}
out = {
    "teacher --help": r.invoke(app, ["teacher", "train", "--help"], env=wide).output,
    "student --help": r.invoke(app, ["student", "--help"], env=wide).output,
    "bench --help": r.invoke(app, ["bench", "--help"], env=wide).output,
    "--print-config": r.invoke(
        app, ["pipeline", "--data", "x", "--preset", "standard", "--print-config"]
    ).output,
    "README table": pipeline_settings_table(),
    "API data": str(api_args.data_settings("x", {}).val_size),
    "API kd": str(resolve_kd(api_args.kd_settings(None), 10, 10).temperature),
}
print(json.dumps(out))
"""


def test_a_default_changed_in_the_settings_reaches_every_place_that_shows_or_uses_it(tmp_path):
    copy = tmp_path / "code"
    for package in ("distill", "export", "students", "teachers"):
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, copy / package, ignore=skip)
    (copy / "README.md").write_text((ROOT / "README.md").read_text())
    settings = copy / "distill" / "settings.py"
    text = settings.read_text()
    for old, new, _ in CHANGED:
        assert text.count(old) == 1, f"settings.py no longer writes {old!r}: update this test"
        text = text.replace(old, new)
    settings.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "300"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, cwd=copy, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    val_size, temperature, batches = (shown_as for _, _, shown_as in CHANGED)
    assert val_size in shown["teacher --help"] and val_size in shown["--print-config"]
    assert shown["API data"] == val_size and f"`{val_size}`" in shown["README table"]
    assert temperature in shown["student --help"] and shown["API kd"] == temperature
    assert f"temperature = {temperature}" in shown["--print-config"]
    assert batches in shown["bench --help"] and "[1, 16, 96]" in shown["--print-config"]


def test_flags_toml_and_records_build_the_same_settings():
    flags = {"method": "dkd", "beta": 2.0, "temperature": 3.0}
    from_flags = build(KDSettings, flags)
    from_toml = parse(
        {"teacher": {"arch": "resnet18-quarter", "recipe": "quick"},
         "student": {"arch": "resnet18-quarter", "recipe": "quick"},
         "data": {"source": "x"}, "kd": flags, "prune": {"enabled": False}}
    ).kd  # fmt: skip
    from_record = build(KDSettings, to_dict(from_flags))
    assert from_flags == from_toml == from_record
    recipe = make_recipe("quick", epochs=3)
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # a checkpoint's record rebuilds it


def test_types_are_checked_and_named_as_the_user_wrote_them():
    with pytest.raises(UserError, match="--val-size must be an integer, got 'many'"):
        build(DataSettings, {"val_size": "many"}, label=lambda n: "--" + n.replace("_", "-"))
    with pytest.raises(UserError, match="int8 must be true or false, got 'no'"):
        build(ExportSettings, {"int8": "no"})
    with pytest.raises(UserError, match="must be a finite number"):
        build(Recipe, {"lr": float("inf")})
    with pytest.raises(UserError, match="must be an integer, got 2.5"):
        build(PruneSettings, {"steps": 2.5})
    with pytest.raises(UserError, match="batch_sizes must be between 1 and 65,536"):
        build(BenchSettings, {"batch_sizes": [0]})
    # A list's item is named by the setting's own label and its place, so a flag reads as typed.
    with pytest.raises(UserError, match="^--batch-sizes item 2 must be an integer, got 'x'$"):
        build(BenchSettings, {"batch_sizes": [1, "x"]}, label=lambda n: "--batch-sizes")
    with pytest.raises(UserError, match="unknown setting colour"):
        build(RunSettings, {"colour": "blue"})


def test_every_seed_is_checked_where_it_is_set_against_what_seeds_it():
    from distill.sweep.settings import SweepSettings

    for cls, name, limit in [
        (RunSettings, "seed", 2**63 - 1),  # torch.Generator
        (DataSettings, "split_seed", 2**63 - 1),
        (SweepSettings, "sampler_seed", 2**32 - 1),  # numpy's legacy RandomState in Optuna
    ]:
        build(cls, {name: limit})
        for bad in (-1, limit + 1):
            with pytest.raises(UserError, match=f"{name} must be from 0 to {limit:,}"):
                build(cls, {name: bad})
    with pytest.raises(UserError, match="seed must be from 0"):  # the pipeline's, from TOML
        parse({**PRESETS["quick"], "seed": -1})


def test_a_models_split_is_the_default_and_another_is_refused():
    record = {"source": "/data/x", "val_size": 500, "split_seed": 3}
    data = data_for_model(record, {}, "teacher t.pt")
    assert (data.source, data.val_size, data.split_seed) == ("/data/x", 500, 3)
    with pytest.raises(UserError, match="--val-size 100 differs from teacher t.pt's 500"):
        data_for_model(record, {"val_size": 100}, "teacher t.pt")
    with pytest.raises(UserError, match="does not record its data source"):
        data_for_model({}, {}, "m.pt")


def test_every_named_recipe_and_preset_is_valid_and_round_trips_through_toml(tmp_path):
    assert all(isinstance(r, Recipe) for r in RECIPES.values())
    for preset in ("quick", "standard"):
        settings = load_config(preset, None, {"data": {"source": "cifar10"}})
        path = tmp_path / f"{preset}.toml"
        path.write_text(to_toml(settings))
        assert load_config(preset, path).to_dict() == settings.to_dict()


def test_help_shows_the_settings_defaults_and_choices():
    runner = CliRunner()
    wide = {"COLUMNS": "200"}
    out = runner.invoke(app, ["teacher", "train", "--help"], env=wide).output
    assert "Images held out for validation" in out and "5000" in out
    student = runner.invoke(app, ["student", "--help"], env=wide).output
    assert "hinton|dkd" in student and "the teacher's" in student
