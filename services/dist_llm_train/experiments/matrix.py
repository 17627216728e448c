"""Experiment matrices (experiments/*.yaml) and their expansion into cells.

A matrix is a list of studies. A study crosses its configs x profiles x repeats x worker counts x
the values of each swept config field (dotted keys, cartesian). Every combination is a `Cell`:
one run of one resolved config under one WAN preset. Repeat r runs with seed = config seed + r - 1,
so the cells of one repeat share a seed across profiles and sweeps (paired comparisons), and the
repeats of one cell differ in every random choice.

A cell's key hashes what makes the run what it is (the resolved config's digest, which covers
every override, the profile, the repeat, the seed and the worker count). The runner names the
resolved config file after it and resumes by it; two studies that ask for the same run get one
cell.

Failure: a bad matrix, a missing or invalid config or preset, or a sweep value the config model
refuses raises ConfigError naming the matrix file, the study and the field.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..config import RunConfig, apply_overrides, read_yaml_mapping
from ..netem.preset import load_preset
from ..schema import ConfigError, Section, validate

# Keys a sweep may not set: the matrix has its own fields for them.
RESERVED_SWEEP_KEYS = {"seed": "repeats", "workers.count": "workers", "mode": "configs"}


class Study(Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="short name, shown in progress lines")
    configs: list[str] = Field(min_length=1, description="run configs, paths relative to the repository root; one mode per study")
    profiles: list[str] = Field(min_length=1, description="WAN presets, names of netem/<profile>.yaml")
    repeats: int = Field(1, ge=1, description="runs per combination; repeat r uses seed = config seed + r - 1")
    workers: list[int] | None = Field(None, min_length=1, description="worker counts; null = each config's workers.count")
    sweep: dict[str, list[Any]] = Field({}, description="dotted config key -> values; every combination is run")

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(w < 1 for w in value):
            raise ValueError("every worker count must be at least 1")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep_keys(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if key in RESERVED_SWEEP_KEYS:
                raise ValueError(f"'{key}' cannot be swept; use the study's '{RESERVED_SWEEP_KEYS[key]}' field")
            if not values:
                raise ValueError(f"'{key}' has no values")
        return value


class Matrix(Section):
    studies: list[Study] = Field(min_length=1, description="the studies, run in this order")

    @model_validator(mode="after")
    def _unique_names(self) -> "Matrix":
        names = [s.name for s in self.studies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"study names must be unique, repeated: {repeated}")
        return self


@dataclass(frozen=True)
class Cell:
    """One run of the matrix."""

    study: str
    config_path: str
    profile: str
    repeat: int
    sweep: tuple[tuple[str, Any], ...]  # the swept values of this cell, in the study's order
    config: RunConfig  # fully resolved: sweep, worker count and seed applied
    key: str

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def workers(self) -> int:
        return self.config.workers.count

    def label(self) -> str:
        swept = " ".join(f"{k}={v}" for k, v in self.sweep)
        return (f"{self.study} {self.profile} {self.config_path} repeat={self.repeat} "
                f"workers={self.workers}{' ' + swept if swept else ''}")


    def planned_work(self) -> str:
        """What the cell is asked to do and its safety nets, as the dry run prints it."""
        config, ml = self.config, self.config.ml
        if ml is None:
            return f"basic run, cap timeout_s {config.timeout_s:g} s"
        budget = ml.budget
        tokens = f"{budget.max_tokens:,} tokens" if budget.max_tokens is not None else "no token budget"
        target = f"target val loss {budget.target_val_loss:g}" if budget.target_val_loss is not None else "no target"
        return (f"{target}; budget {tokens}, {budget.max_versions:,} versions; cap max_time_s {budget.max_time_s:g} s "
                f"(timeout_s {config.timeout_s:g} s)")


def cell_key(config: RunConfig, profile: str, repeat: int) -> str:
    blob = json.dumps({"config": config.digest(), "profile": profile, "repeat": repeat,
                       "seed": config.seed, "workers": config.workers.count}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_matrix(path: str | Path) -> Matrix:
    path = Path(path)
    return validate(Matrix, read_yaml_mapping(path), str(path))


def with_overrides(matrix: Matrix, source: str, root: Path, profiles: list[str] | None = None,
                   configs: list[str] | None = None, pattern: str | None = None, repeats: int | None = None) -> Matrix:
    """The matrix with command-line overrides applied to every study.

    `profiles` and `repeats` replace each study's own. `configs` (and the files `pattern` matches,
    relative to `root`) replace the configs of every study of their mode, keeping its sweep; a
    study of a mode none of them has is dropped, and a config of a mode no study runs is refused.
    """
    if repeats is not None and repeats < 1:
        raise ConfigError(f"--repeats: must be at least 1, got {repeats}")
    chosen = list(configs or [])
    if pattern is not None:
        matched = sorted(str(Path(p).relative_to(root)) for p in globbing.glob(str(root / pattern)))
        if not matched:
            raise ConfigError(f"--glob {pattern}: no file matches (relative to {root})")
        chosen += [p for p in matched if p not in chosen]
    by_mode: dict[str, list[str]] = {}
    for path in chosen:
        by_mode.setdefault(_read_config(root, path, f"--configs {path}").mode, []).append(path)
    studies = []
    for study in matrix.studies:
        update: dict[str, Any] = {}
        if profiles:
            update["profiles"] = list(profiles)
        if repeats is not None:
            update["repeats"] = repeats
        if chosen:
            mode = study_mode(study, root, source)
            if mode not in by_mode:
                continue
            update["configs"] = by_mode[mode]
        studies.append(study.model_copy(update=update))
    kept = {study_mode(s, root, source) for s in studies} if chosen else set()
    for mode, paths in by_mode.items():
        if mode not in kept:
            raise ConfigError(f"--configs {' '.join(paths)}: mode '{mode}', but no study of {source} runs mode '{mode}'")
    return Matrix.model_validate({"studies": [s.model_dump() for s in studies]})


def study_mode(study: Study, root: Path, source: str) -> str:
    """The one mode of a study's configs; mixing modes is refused (sweep keys are mode-specific)."""
    modes = {path: _read_config(root, path, f"{source}: study {study.name}").mode for path in study.configs}
    if len(set(modes.values())) > 1:
        raise ConfigError(f"{source}: study {study.name}: configs of different modes {modes}; "
                          "put basic and ml configs in separate studies")
    return next(iter(modes.values()))


def expand(matrix: Matrix, source: str, root: Path, netem_dir: Path) -> list[Cell]:
    """Every cell of the matrix in run order, each key once (the first study that asks for it wins)."""
    cells: dict[str, Cell] = {}
    for index, study in enumerate(matrix.studies):
        where = f"{source}: studies.{index} ({study.name})"
        study_mode(study, root, source)
        for profile in study.profiles:
            try:
                load_preset(profile, netem_dir)
            except ConfigError as exc:
                raise ConfigError(f"{where}: profiles: {exc}") from None
        keys = list(study.sweep)
        combos = [tuple(zip(keys, values)) for values in itertools.product(*study.sweep.values())]
        for path in study.configs:
            raw = read_yaml_mapping(root / path)
            for combo in combos:
                for workers in study.workers or [None]:
                    overrides = dict(combo) | ({} if workers is None else {"workers.count": workers})
                    swept = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                    base = _resolve(raw, overrides, f"{where}: {path}" + (f" with {swept}" if swept else ""))
                    for profile in study.profiles:
                        for repeat in range(1, study.repeats + 1):
                            config = base.model_copy(update={"seed": base.seed + repeat - 1})
                            key = cell_key(config, profile, repeat)
                            cells.setdefault(key, Cell(study.name, path, profile, repeat, combo, config, key))
    return list(cells.values())


def _resolve(raw: dict[str, Any], overrides: dict[str, Any], source: str) -> RunConfig:
    return validate(RunConfig, apply_overrides(raw, overrides), source)


def _read_config(root: Path, path: str, source: str) -> RunConfig:
    try:
        return validate(RunConfig, read_yaml_mapping(root / path), path)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
