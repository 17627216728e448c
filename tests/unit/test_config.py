"""Run configs: every shipped config loads; bad ones are refused with the file and the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dist_llm_train.config import load_run_config
from dist_llm_train.schema import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
GOOD = {"name": "t", "mode": "basic", "workers": {"count": 2}, "tasks": {"count": 4}}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_run_config(path)

    assert config.name


def test_good_config_loads_and_overrides_apply(tmp_path):
    config = load_run_config(write(tmp_path, GOOD), {"workers.count": 7, "controller.scheduler": "priority"})

    assert (config.workers.count, config.controller.scheduler) == (7, "priority")


@pytest.mark.parametrize("change, field, words", [
    ({"nmae": "x"}, "nmae", "extra inputs are not permitted"),
    ({"controller": {"schedular": "fifo"}}, "controller.schedular", "extra inputs"),
    ({"workers": {"count": "four"}}, "workers.count", "valid integer"),
    ({"timeout_s": "long"}, "timeout_s", "valid number"),
    ({"workers": {"count": 0}}, "workers.count", "greater than or equal to 1"),
    ({"tasks": {"count": -1}}, "tasks.count", "greater than or equal to 1"),
    ({"seed": -3}, "seed", "greater than or equal to 0"),
    ({"seed": 2**53}, "seed", "less than or equal to 9007199254740991"),
    ({"controller": {"scheduler": "round-robin"}}, "controller.scheduler", "'gale-shapley'"),
    ({"mode": "turbo"}, "mode", "'basic' or 'ml'"),
    ({"tasks": {"tokens": [50, 10]}}, "tasks.tokens", "low 50 is above high 10"),
    ({"tasks": {"input_kb": [1]}}, "tasks.input_kb", "[low, high]"),
    ({"tasks": {"memory_mb": [0, 10]}}, "tasks.memory_mb", "must be positive"),
    ({"workers": {"speed": [1.0, -0.5]}}, "workers.speed", "from 0.001 to 100"),
    ({"workers": {"speed": [1e-300]}}, "workers.speed", "from 0.001 to 100"),
    ({"workers": {"capacity": [0.0]}}, "workers.capacity", "> 0"),
    ({"workers": {"memory_mb": [2**63]}}, "workers.memory_mb", "at most"),
    ({"workers": {"base_tokens_per_sec": 1e300}}, "workers.base_tokens_per_sec", "less than or equal to"),
    ({"tasks": {"tokens": [1, 2**63]}}, "tasks.tokens", "is above"),
    ({"tasks": {"input_kb": [1, 2**40]}}, "tasks.input_kb", "is above"),
    ({"workers": {"speed": []}}, "workers.speed", "at least 1 item"),
    ({"controller": {"ewma_alpha": 0}}, "controller.ewma_alpha", "greater than 0"),
    ({"controller": {"ewma_alpha": 1.5}}, "controller.ewma_alpha", "less than or equal to 1"),
    ({"controller": {"heartbeat_interval_s": 2.0, "heartbeat_timeout_s": 3.0}}, "controller",
     "at least twice heartbeat_interval_s"),
    ({"controller": {"max_body_kb": 8}, "tasks": {"output_kb": [4, 16]}}, "(top level)",
     "tasks.output_kb high (16) is above controller.max_body_kb (8)"),
    ({"ml": {}}, "(top level)", "mode 'basic' takes no 'ml' section"),
    ({"mode": "ml"}, "(top level)", "mode 'ml' needs an 'ml' section"),
])
def test_bad_config_is_refused_naming_file_and_field(tmp_path, change, field, words):
    data = {**GOOD, **{k: ({**GOOD.get(k, {}), **v} if isinstance(v, dict) and k in GOOD else v)
                       for k, v in change.items()}}
    path = write(tmp_path, data)

    with pytest.raises(ConfigError) as refused:
        load_run_config(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert words.lower() in message.lower(), message


@pytest.mark.parametrize("text, words", [
    ("- just\n- a list\n", "expected a mapping at the top level"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_unreadable_config_is_refused_naming_the_file(tmp_path, text, words):
    path = tmp_path / "run.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=words) as refused:
        load_run_config(path)

    assert str(path) in str(refused.value)


def test_missing_config_file_is_refused_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="no such file") as refused:
        load_run_config(tmp_path / "absent.yaml")

    assert "absent.yaml" in str(refused.value)


def test_bad_override_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="workers.count"):
        load_run_config(write(tmp_path, GOOD), {"workers.count": -2})


@pytest.mark.parametrize("name", [
    "../../x", "../../../etc/cron.d/x", "..", ".", "...", "a/b", "/abs", "a\\b", "", "x" * 65, "a b", "naïve",
    "=cmd", "x\n", 7,
], ids=["parent-twice", "parent-thrice", "dot-dot", "dot", "dots", "slash", "absolute", "backslash", "empty",
        "65-chars", "space", "non-ascii", "formula", "newline", "number"])
def test_a_name_that_cannot_name_files_is_refused(tmp_path, name):
    path = write(tmp_path, {**GOOD, "name": name})

    with pytest.raises(ConfigError) as refused:
        load_run_config(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: name: "), message
    assert "cannot name files" in message or "valid string" in message, message


@pytest.mark.parametrize("name", ["basic_ci", "a.b-c_1", "x" * 64, "-x", "..x", "x.."])
def test_a_name_of_file_name_characters_loads(tmp_path, name):
    assert load_run_config(write(tmp_path, {**GOOD, "name": name})).name == name



def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    """`1e-5` is a float in YAML 1.2 and to any reader; PyYAML's default (1.1) read it as a string."""
    path = tmp_path / "run.yaml"
    path.write_text("name: t\nmode: ml\nml:\n  local: {steps: 4, inner_lr: 1e-4}\n  optimizer: {lr: 5E-1}\n")
    config = load_run_config(path)
    assert config.ml.local.inner_lr == 1e-4 and config.ml.optimizer.lr == 0.5
