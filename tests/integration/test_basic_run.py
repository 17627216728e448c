"""A basic run as real processes on loopback: every task exactly once, and the row says what the
database says."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from basic_support import CI_CONFIG, REPO, assert_each_task_completed_once, ci_run, the_row, truth

from dist_llm_train.controller.runstate import latest_incarnations, mean


def test_four_workers_complete_every_task_once_and_the_row_matches_the_database(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start()
        final = run.wait_end(timeout_s=90)
        exits = run.wait_workers_exit(timeout_s=10)
        db = truth(run.db_path)

    assert final["run"]["state"] == "finished"
    assert exits == {0: 0, 1: 0, 2: 0, 3: 0}
    assert_each_task_completed_once(db)
    row = the_row(run.runs_dir, final["run"]["id"])
    latest = latest_incarnations(db["workers"])
    assert (row["status"], row["mode"], row["config"], row["scheduler"]) == ("finished", "basic", "basic_ci", "fifo")
    assert int(row["num_workers"]) == len(latest) == 4
    assert int(row["num_completed_tasks"]) == len(db["tasks"]) == 24
    assert int(row["num_pending_tasks"]) == 0
    assert int(row["bytes_up"]) == db["run"]["bytes_received"]
    assert int(row["bytes_down"]) == db["run"]["bytes_served"] >= sum(t["input_kb"] * 1024 for t in db["tasks"])
    assert float(row["mean_ewma_tokens_per_sec"]) == pytest.approx(
        mean(w["ewma_tokens_per_sec"] for w in latest), rel=1e-5)
    assert float(row["mean_ewma_step_time_s"]) == pytest.approx(mean(w["ewma_step_time_s"] for w in latest), rel=1e-5)
    assert float(row["duration_s"]) == pytest.approx(db["run"]["ended_at"] - db["run"]["started_at"], rel=1e-5)
    # the workers' own measurements: nominal 50 k tokens/s, the straggler (speed 0.5) half that
    speeds = {w["idx"]: w["ewma_tokens_per_sec"] for w in latest}
    assert speeds[3] == pytest.approx(25_000, rel=0.25)
    assert all(speeds[i] == pytest.approx(50_000, rel=0.25) for i in (0, 1, 2))
    assert all(w["rtt_ms"] is not None and w["down_mbit"] is not None for w in latest)


def test_demo_command_exits_0_and_prints_the_row_path(tmp_path):
    runs = tmp_path / "runs"

    done = subprocess.run([sys.executable, "-m", "dist_llm_train", "demo-basic", "--config", str(CI_CONFIG),
                           "--runs-dir", str(runs), "--set", "tasks.count=6", "--set", "tasks.tokens=[5000, 10000]"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "services")})

    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    (row_file,) = runs.glob("*/row.csv")
    assert f"row: {row_file}" in done.stdout
    assert "6 completed of 6" in done.stdout


def test_demo_refuses_a_bad_override_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dist_llm_train", "demo-basic", "--config", str(CI_CONFIG),
                           "--runs-dir", str(tmp_path), "--set", "tasks.count=-1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO / "services")})

    assert done.returncode == 2
    assert "tasks.count" in done.stderr and str(CI_CONFIG) in done.stderr
