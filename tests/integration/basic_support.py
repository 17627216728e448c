"""Helpers of the basic-mode integration tests: start a LocalRun, read the database's truth."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from dist_llm_train import results
from dist_llm_train.config import load_run_config
from dist_llm_train.demo import LocalRun

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "basic_ci.yaml"


def ci_run(tmp_path: Path, log, overrides: dict[str, Any] | None = None) -> LocalRun:
    return LocalRun(load_run_config(CI_CONFIG, overrides), tmp_path / "runs", output=log)


def truth(db_path: Path) -> dict[str, Any]:
    """What the controller's database says about tasks, leases, workers and bytes."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        tasks = db.execute(
            "SELECT t.task_id, t.state, t.requeues, t.input_kb, t.output_kb,"
            " (SELECT COUNT(*) FROM leases l WHERE l.task_id = t.task_id AND l.state = 'completed') AS done"
            " FROM tasks t").fetchall()
        workers = db.execute("SELECT * FROM workers LEFT JOIN telemetry USING (worker_id)").fetchall()
        run = dict(db.execute("SELECT * FROM run").fetchone())
    finally:
        db.close()
    return {"tasks": [dict(t) for t in tasks], "workers": [dict(w) for w in workers], "run": run}


def assert_each_task_completed_once(db: dict[str, Any]) -> None:
    assert db["tasks"], "the run had no tasks"
    assert [t["task_id"] for t in db["tasks"] if t["state"] != "completed"] == []
    assert [t["task_id"] for t in db["tasks"] if t["done"] != 1] == []
    # each accepted result counted exactly once: received bytes = the sum of the outputs
    assert db["run"]["bytes_received"] == sum(t["output_kb"] * 1024 for t in db["tasks"])


def the_row(runs_dir: Path, run_id: str) -> dict[str, str]:
    (row,) = results.read_rows(runs_dir / run_id / "row.csv")
    merged = [r for r in results.read_rows(runs_dir / "runs_basic.csv") if r["run_id"] == run_id]
    assert merged == [row]
    return row
