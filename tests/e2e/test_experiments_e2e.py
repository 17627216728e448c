"""The quick matrix through real compose stacks, a restart that resumes, then the report.

Runs the commands a user runs (`dist-llm-train run-experiments`, `dist-llm-train report`) as
processes, with their own compose project and a runs folder inside the repository, so the bind
mounts resolve on the host's daemon (`make test-e2e` mounts the repository at its host path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import matplotlib.image
import pytest

from dist_llm_train.experiments.runner import OK_STATUS
from dist_llm_train.netem import helpers
from dist_llm_train.results import read_rows

from .stack import CREDENTIALS, REPO


def dlt(*args: str, timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "dist_llm_train", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout)
    print(result.stdout, result.stderr)  # shown when the test fails
    return result


def project_leftovers(project: str) -> list[str]:
    found = []
    for kind in ("container", "network", "volume"):
        listed = subprocess.run(["docker", kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter",
                                 f"label=com.docker.compose.project={project}"], capture_output=True, text=True)
        found += [f"{kind} {name}" for name in listed.stdout.split()]
    return found


@pytest.fixture
def workspace():
    project = f"e2e-exp-{uuid.uuid4().hex[:6]}"
    runs = REPO / ".e2e" / project / "runs"
    runs.mkdir(parents=True)
    yield project, runs
    # The runner tears every stack down itself; this only cleans up after a runner that crashed.
    helpers.sweep(project)
    subprocess.run(["docker", "compose", "-p", project, "--project-directory", str(REPO), "-f", str(REPO / "compose.yaml"),
                    "--profile", "ml", "down", "-v", "--remove-orphans", "--timeout", "10"],
                   env={**os.environ, **{name: "x" * 32 for name in CREDENTIALS}}, capture_output=True, timeout=180)
    shutil.rmtree(runs.parent, ignore_errors=True)


def test_quick_matrix_runs_each_cell_resumes_and_reports(workspace):
    project, runs = workspace
    command = ("run-experiments", "--matrix", "experiments/quick.yaml", "--runs", str(runs), "--project", project)

    first = dlt(*command, timeout=900)

    assert first.returncode == 0
    assert "[1/2] quick lan configs/basic_ci.yaml repeat=1" in first.stdout and "ETA" in first.stdout
    rows = read_rows(runs / "runs_basic.csv")
    by_profile = {r["profile"]: r for r in rows}
    assert sorted(by_profile) == ["high_rtt", "lan"] and len(rows) == 2
    for row in rows:
        # The runner is under test here, not the emulator's timing: a row the sidecar marked `degraded` because its
        # delayer ran late on a loaded machine is a right row (test_netem_e2e judges the emulation itself).
        late = row["status"] == "degraded" and "emulation out of tolerance" in row["reason"]
        assert (row["status"] == OK_STATUS or late) and row["repeat"] == "1", row
        assert int(row["num_completed_tasks"]) > 0 and row["num_pending_tasks"] == "0", row
        assert (runs / row["run_id"] / "run.json").is_file()
    # The preset puts 100 ms between any two containers; the sidecar's probe measured it.
    assert float(by_profile["high_rtt"]["measured_rtt_ms"]) > float(by_profile["lan"]["measured_rtt_ms"]) + 50
    assert project_leftovers(project) == []

    again = dlt(*command, timeout=120)

    assert again.returncode == 0
    assert "2 cells already done, 0 to run" in again.stdout
    assert read_rows(runs / "runs_basic.csv") == rows

    report = dlt("report", "--runs", str(runs), timeout=300)

    assert report.returncode == 0
    out = runs / "report"
    for name in ("duration.png", "completion_acceptance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / name).shape[0] > 200
    text = (out / "results.md").read_text()
    assert "| basic | lan | basic_ci |" in text and "| basic | high_rtt | basic_ci |" in text
    assert "dist-llm-train run-experiments --matrix experiments/quick.yaml" in text
    assert (out / "index.html").is_file()
