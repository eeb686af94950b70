"""One home per setting: each main default is written once (in distill/settings.py), and flags,
TOML files and checkpoint records all build the same objects through the same typed code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.errors import UserError
from distill.pipeline.config import load_config, parse, to_toml
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
CODE = [p for d in ("distill", "export", "students", "teachers") for p in (ROOT / d).rglob("*.py")]
SETTINGS = ROOT / "distill" / "settings.py"

# (what, a pattern that writes that default as a literal)
DEFAULTS = [
    ("the cache directory", r"~/\.cache/distill"),
    ("val_size 5000", r"\b5_?000\b"),
    ("the KD temperature 4", r"temperature\b.*[:=(]\s*4\.0\b"),
    ("Hinton's alpha 0.9", r"alpha[\"']?\s*[:=]\s*0\.9\b"),
    ("DKD's beta 8 per 99 other classes", r"8\.0\s*/\s*99"),
    ("the prune steps", r"\bsteps\s*:\s*int\s*=\s*\S*\d"),
    ("the int8 accuracy drop 0.02", r"\b0\.02\b"),
    ("the bench batch sizes", r"\(1,\s*32,\s*256\)"),
]


@pytest.mark.parametrize("what,pattern", DEFAULTS, ids=[w for w, _ in DEFAULTS])
def test_each_main_default_is_written_once(what, pattern):
    where = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in CODE
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(pattern, line) and not line.lstrip().startswith("#")
    ]
    assert where and all(w.startswith("distill/settings.py") for w in where), (what, where)


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
    with pytest.raises(UserError, match="batch_sizes must be between 1 and 65536"):
        build(BenchSettings, {"batch_sizes": [0]})
    with pytest.raises(UserError, match="unknown setting colour"):
        build(RunSettings, {"colour": "blue"})


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
