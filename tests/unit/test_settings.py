"""Process settings from the environment: unsafe tokens refused; the worker's health file."""

import os
import time

import pytest

from dist_llm_train.schema import ConfigError
from dist_llm_train.settings import from_env, touch

TOKEN = "a-long-enough-run-token-0123"


@pytest.mark.parametrize("env, field", [
    ({}, "RUN_TOKEN"),
    ({"RUN_TOKEN": "changeme"}, "RUN_TOKEN"),
    ({"RUN_TOKEN": TOKEN, "WORKERS": "0"}, "WORKERS"),
    ({"RUN_TOKEN": TOKEN, "WORKERS": "four"}, "WORKERS"),
    ({"RUN_TOKEN": TOKEN, "LOG_LEVEL": "loud"}, "LOG_LEVEL"),
])
def test_unsafe_or_malformed_settings_are_refused_naming_the_variable(env, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        from_env(env)


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
