"""The runner's watcher against a real controller process on loopback: a run that does not end by
its deadline is stopped through POST /run/stop, and the watcher returns once the row is written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from dist_llm_train.experiments.runner import watch_run
from dist_llm_train.results import read_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def controller(tmp_path: Path):
    config = tmp_path / "run.yaml"
    # No worker will come: the run stays `running` until someone stops it.
    config.write_text(yaml.safe_dump({"name": "watched", "mode": "basic", "timeout_s": 600, "tasks": {"count": 3}}))
    port = free_port()
    env = {**os.environ, "RUN_TOKEN": "w" * 8 + "0123456789abcdef", "SIDECAR_TOKEN": "s" * 24, "PS_TOKEN": "p" * 24,
           "OPERATOR_TOKEN": "o" * 24, "CONFIG": str(config), "RUNS_DIR": str(tmp_path / "runs"),
           "STATE_DIR": str(tmp_path / "state"), "LINK_GATE": "0", "NETEM_PROFILE": "lan"}
    (tmp_path / "state").mkdir()
    process = subprocess.Popen([sys.executable, "-m", "dist_llm_train", "controller", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"controller never answered: {process.stdout.read().decode() if process.poll() is not None else ''}")
        yield url, env, tmp_path / "runs"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_run_past_its_deadline_is_stopped_and_its_row_written(controller, capsys, monkeypatch):
    url, env, runs = controller
    for name in ("RUN_TOKEN", "OPERATOR_TOKEN"):  # inside the controller's container, compose sets them
        monkeypatch.setenv(name, env[name])

    started = time.monotonic()
    watch_run(deadline_s=2.0, grace_s=10, url=url)
    took = time.monotonic() - started

    seen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen["stopped"] is True and seen["error"] is None
    assert (seen["run"]["state"], seen["run"]["row_written"]) == ("stopped", True)
    assert 2.0 <= took < 7
    (row,) = read_rows(runs / seen["run"]["id"] / "row.csv")
    assert (row["status"], row["reason"]) == ("stopped", "experiment runner: no end after 2 s")


def test_a_controller_that_never_answers_is_given_up_on(capsys, monkeypatch):
    monkeypatch.setenv("RUN_TOKEN", "x" * 24)
    monkeypatch.setenv("OPERATOR_TOKEN", "y" * 24)

    watch_run(deadline_s=0.5, grace_s=1, url=f"http://127.0.0.1:{free_port()}")

    seen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen["run"] is None and seen["stopped"] is True
    assert "refused" in seen["error"].lower()
