"""Validated run configs (configs/*.yaml): the one place that refuses a bad config.

Each component owns the model of its own section (controller/config.py, worker/config.py,
ml/config.py); this module composes them into `RunConfig` and turns any validation failure into
a `ConfigError` that names the file and the dotted field, e.g.
`configs/x.yaml: controller.scheduler: input should be 'fifo', ... (got 'foo')`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from .controller.config import ControllerConfig
from .ml.config import MLConfig
from .results import check_name
from .schema import ConfigError, Section, validate
from .worker.config import TasksConfig, WorkersConfig


# The seed travels as JSON (GET /config, the sidecar's /links report): below 2**53 it is exact in
# every client, and seed + per-worker offsets stay inside torch's 64-bit seeds.
MAX_SEED = 2**53 - 1


class RunConfig(Section):
    name: str = Field(description="short name of the run, part of its run id (a folder under runs/) and of CSV rows: "
                                  "letters, digits, '.', '_', '-'")
    mode: Literal["basic", "ml"] = Field(description="basic: synthetic tasks; ml: LSTM training through the PS")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="seed of every random choice of the run (tasks, data, init, netem)")
    timeout_s: float = Field(600.0, gt=0, description="wall-clock budget of the run from its start (the wait for the links excluded); past it the run ends as 'timeout'")
    controller: ControllerConfig = ControllerConfig()
    workers: WorkersConfig = WorkersConfig()
    tasks: TasksConfig = TasksConfig()
    ml: MLConfig | None = Field(None, description="training settings; required when mode is ml")

    @field_validator("name")
    @classmethod
    def _file_name(cls, name: str) -> str:
        return check_name(name)

    @model_validator(mode="after")
    def _mode_sections(self) -> "RunConfig":
        if self.mode == "ml" and self.ml is None:
            raise ValueError("mode 'ml' needs an 'ml' section")
        if self.mode == "basic" and self.ml is not None:
            raise ValueError("mode 'basic' takes no 'ml' section (set mode: ml to train)")
        if self.mode == "basic" and self.tasks.output_kb[1] > self.controller.max_body_kb:
            raise ValueError(f"tasks.output_kb high ({self.tasks.output_kb[1]}) is above controller.max_body_kb "
                             f"({self.controller.max_body_kb}): the controller would refuse those results with 413")
        return self

    def digest(self) -> str:
        """Short stable hash of the resolved config (used to key runs and resume experiments)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: `1e-5` is a number, as any reader of the file
    expects (YAML 1.1, PyYAML's default, wants a dot: `1.0e-5`, and reads `1e-5` as a string)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Parse a YAML file that must hold a mapping; refuse anything else with the file named."""
    try:
        data = yaml.load(path.read_text(), Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`workers.count`, `ml.aggregation.rule`) in a copy of a config mapping."""
    result = json.loads(json.dumps(data))
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: '{part}' is not a section")
            node = child
        node[leaf] = value
    return result


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, override and validate a run config; raise ConfigError naming file and field."""
    path = Path(path)
    data = apply_overrides(read_yaml_mapping(path), overrides or {})
    return validate(RunConfig, data, str(path))
