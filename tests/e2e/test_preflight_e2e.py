"""`make up` on a Docker Engine or Compose older than we support stops before anything else, with
one line naming what it found, what it needs and what to install, and starts nothing.

No old engine can run here, so a stand-in `docker` first on PATH answers the two version queries
and records every call; the real engine and plugin pass the same check (the session fixture).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from .stack import REPO

STAND_IN = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$1 $2" in
  "version --format")
    [ -n "$ENGINE_VERSION" ] || { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
    echo "$ENGINE_VERSION" ;;
  "compose version")
    [ -n "$COMPOSE_VERSION" ] || { echo "docker: 'compose' is not a docker command." >&2; exit 1; }
    echo "$COMPOSE_VERSION" ;;
  *) exit 99 ;;
esac
"""


def make_with_docker(tmp_path, target: str, engine: str, compose: str) -> subprocess.CompletedProcess:
    stand_in = tmp_path / "docker"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "ENGINE_VERSION": engine, "COMPOSE_VERSION": compose, "ENV_FILE": str(tmp_path / ".env"),
           "COMPOSE_PROJECT_NAME": "e2e-preflight"}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("engine, compose, message", [
    ("19.03.13", "2.26.1", "Docker Engine 19.03.13 found, >= 20.10 needed: install docker.io"),
    ("20.10.24+dfsg1", "v2.20.1", "Docker Compose 2.20.1 found, >= 2.20.2 needed: install the Compose v2 plugin"),
    ("24.0.7", "", "no Compose v2 plugin"),
    ("", "2.26.1", "cannot reach the Docker Engine (Cannot connect to the Docker daemon): start dockerd"),
])
def test_make_up_on_too_old_docker_names_the_minimum_and_starts_nothing(tmp_path, engine, compose, message):
    done = make_with_docker(tmp_path, "up", engine, compose)

    assert done.returncode != 0
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("preflight: ")]
    assert message in line, line
    calls = (tmp_path / "calls").read_text().splitlines()
    assert all(call.startswith(("version", "compose version")) for call in calls), calls  # no build, no run
    assert not (tmp_path / ".env").exists()


def test_the_oldest_supported_versions_pass(tmp_path):
    done = make_with_docker(tmp_path, "preflight", "20.10.0", "2.20.2")

    assert done.returncode == 0 and done.stderr == "", done.stderr
