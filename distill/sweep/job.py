"""A sweep as one plain record: what every worker (a process here, under torchrun, or on another
node) needs to run its trials, and the identity two sweeps on one folder must share."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from distill.errors import UserError
from distill.files import loads_toml
from distill.sweep.settings import SweepSettings
from distill.sweep.space import SearchSpace, parse_space
from distill.typed import build, flag_of, to_dict

PRESETS = Path(__file__).resolve().parent / "presets"
Say = Callable[[str], Any]  # where a sweep's progress lines go (a console's print)


@dataclass(frozen=True)
class SweepJob:
    out: Path
    space_file: str  # as given: a path or a preset name
    space: SearchSpace
    settings: SweepSettings
    data: dict[str, Any]  # DataSettings fields as given (the teacher's split fills the rest)
    teachers: tuple[str, ...] = ()
    device: str = "auto"
    nproc_per_node: int = 1
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def storage_url(self) -> str:
        from distill.sweep.study import storage_url

        return storage_url(self.settings, self.out)

    def to_json(self) -> str:
        return json.dumps(
            {
                "out": str(self.out),
                "space_file": self.space_file,
                "settings": to_dict(self.settings),
                "data": {k: str(v) if isinstance(v, Path) else v for k, v in self.data.items()},
                "teachers": list(self.teachers),
                "device": self.device,
                "nproc_per_node": self.nproc_per_node,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SweepJob:
        d = json.loads(text)
        return make_job(
            Path(d["out"]),
            d["space_file"],
            d["settings"],
            d["data"],
            d["teachers"],
            d["device"],
            d["nproc_per_node"],
            from_file=False,
        )


def space_path(name: str) -> Path:
    """A space file, or a preset's name (`cpu`, `gpu`)."""
    preset = PRESETS / f"{name}.toml"
    if preset.is_file() and not Path(name).exists():
        return preset
    path = Path(name).expanduser()
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
        raise UserError(f"--space {name}: no such file; give a TOML file or a preset ({presets})")
    return path


def read_space_file(name: str) -> tuple[SearchSpace, dict[str, Any]]:
    """The `[space]` and the `[sweep]` settings of a space file."""
    path = space_path(name)
    try:
        doc = loads_toml(path.read_text())
    except ValueError as e:  # TOML's errors, undecodable bytes, nesting past the stack
        raise UserError(f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"space", "sweep"})
    if unknown:
        raise UserError(
            f"{path}: unknown table [{unknown[0]}]; a space file has [space] and [sweep]"
        )
    sweep = doc.get("sweep", {})
    if not isinstance(sweep, dict):
        raise UserError(f"{path}: sweep must be a table, [sweep]")
    return parse_space(doc.get("space"), str(path)), sweep


def make_job(
    out: Path,
    space_file: str,
    given: dict[str, Any],
    data: dict[str, Any],
    teachers: list[str] | tuple[str, ...],
    device: str,
    nproc_per_node: int,
    *,
    from_file: bool = True,
) -> SweepJob:
    """Read and check everything a sweep needs, before any trial: the space file, its
    `[sweep]` table under the flags the user typed (`given`), the teachers."""
    space, table = read_space_file(space_file)
    values = {**table, **given} if from_file else dict(given)
    where = space_path(space_file)
    flags = {f.name: flag_of(f) for f in fields(SweepSettings)}
    settings = build(
        SweepSettings,
        values,
        label=lambda n: flags.get(n, n) if n in given else f"{where}: [sweep] {n}",
    )
    searched_kd = [d.name for d in space.dims if d.name.startswith("kd.")]
    if searched_kd and not teachers:
        raise UserError(
            f"{where}: space {searched_kd[0]} is a distillation setting and no --teacher is given; "
            "pass --teacher t.pt, or drop [space.kd] to search label-only models"
        )
    job = SweepJob(
        out=Path(out),
        space_file=space_file,
        space=space,
        settings=settings,
        data=dict(data),
        teachers=tuple(str(t) for t in teachers),
        device=device,
        nproc_per_node=nproc_per_node,
    )
    return _with_identity(job)


# Data settings that say where things are on this machine, not what the trials learn from.
WHERE_ONLY = ("cache_dir", "data_root")


def _place(value: Any) -> Any:
    """A path that exists, resolved: the same folder named from two directories is one sweep."""
    if isinstance(value, (str, Path)) and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def _with_identity(job: SweepJob) -> SweepJob:
    from distill.files import file_sha256, not_a_file

    s = job.settings
    teachers = []
    for t in job.teachers:
        if why := not_a_file(t):
            raise UserError(f"--teacher {t} {why}; pass a checkpoint written by distill")
        teachers.append(file_sha256(t))
    identity = {
        "space": job.space.to_record(),
        "objective": s.objective,
        "pruner": s.pruner,
        "budget": s.budget_params,
        "mac_ceiling": s.mac_limit,
        "teachers": teachers,
        "data": {k: _place(v) for k, v in sorted(job.data.items()) if k not in WHERE_ONLY},
        "max_epochs": job.space.max_epochs(),
    }
    return replace(job, identity=identity)
