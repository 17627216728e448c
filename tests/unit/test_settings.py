"""Process settings from the environment: unsafe tokens and role credentials refused; the worker's health file."""

import os
import time

import pytest

from dist_llm_train.schema import ConfigError
from dist_llm_train.settings import ROLE_TOKENS, from_env, require_role_tokens, touch

TOKEN = "a-long-enough-run-token-0123"


@pytest.mark.parametrize("env, field", [
    ({}, "RUN_TOKEN"),
    ({"RUN_TOKEN": "changeme"}, "RUN_TOKEN"),
    ({"RUN_TOKEN": TOKEN, "WORKERS": "0"}, "WORKERS"),
    ({"RUN_TOKEN": TOKEN, "WORKERS": "four"}, "WORKERS"),
    ({"RUN_TOKEN": TOKEN, "LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ({"RUN_TOKEN": TOKEN, "PS_TOKEN": "changeme"}, "PS_TOKEN"),
    ({"RUN_TOKEN": TOKEN, "OPERATOR_TOKEN": "short"}, "OPERATOR_TOKEN"),
    ({"RUN_TOKEN": TOKEN, "WORKER_INDEX": "-1"}, "WORKER_INDEX"),
    ({"RUN_TOKEN": TOKEN, "WORKER_INDEX": "first"}, "WORKER_INDEX"),
])
def test_unsafe_or_malformed_settings_are_refused_naming_the_variable(env, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        from_env(env)


def test_role_credentials_are_each_optional_until_a_role_requires_them():
    credentials = {name: f"{name.lower()}-0123456789abcdef" for name in ROLE_TOKENS.values()}
    partial = from_env({"RUN_TOKEN": TOKEN, "SIDECAR_TOKEN": credentials["SIDECAR_TOKEN"]})
    every = from_env({"RUN_TOKEN": TOKEN, **credentials})

    require_role_tokens(partial, "sidecar")
    with pytest.raises(ConfigError, match="^PS_TOKEN: not set"):
        require_role_tokens(partial, *ROLE_TOKENS)
    require_role_tokens(every, *ROLE_TOKENS)
    assert (every.sidecar_token, every.ps_token, every.operator_token) == tuple(credentials.values())


def test_the_health_file_is_off_unless_set_and_touch_renews_its_age(tmp_path):
    assert from_env({"RUN_TOKEN": TOKEN}).health_file is None
    touch(None)  # nothing to do, no error
    path = tmp_path / "alive"
    settings = from_env({"RUN_TOKEN": TOKEN, "WORKER_HEALTH_FILE": str(path)})
    assert settings.health_file == path

    touch(settings.health_file)
    os.utime(path, (time.time() - 100, time.time() - 100))
    touch(settings.health_file)

    assert time.time() - path.stat().st_mtime < 5


def test_worker_index_is_read_from_the_environment_as_documented():
    assert from_env({"RUN_TOKEN": TOKEN, "WORKER_INDEX": "0"}).worker_index == 0
    assert from_env({"RUN_TOKEN": TOKEN, "WORKER_INDEX": "7"}).worker_index == 7
    assert from_env({"RUN_TOKEN": TOKEN}).worker_index is None  # compose: the worker asks Docker's DNS
