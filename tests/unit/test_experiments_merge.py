"""Merged CSVs: stable columns, one row per run, failed cells as rows; the resume state."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from dist_llm_train.experiments.matrix import Matrix, expand
from dist_llm_train.experiments.runner import (FAILED_STATUS, OK_STATUS, done_path, failure_row, is_done, read_done,
                                               record_failure, sole_runner)
from dist_llm_train.results import COLUMNS, merge_mode, read_rows, write_run
from dist_llm_train.schema import ConfigError


@pytest.fixture
def cells(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "b.yaml").write_text(yaml.safe_dump({"name": "b", "mode": "basic"}))
    (tmp_path / "configs" / "m.yaml").write_text(yaml.safe_dump({"name": "m", "mode": "ml", "ml": {}}))
    (tmp_path / "netem").mkdir()
    (tmp_path / "netem" / "lan.yaml").write_text("description: no impairment\n")
    matrix = Matrix.model_validate({"studies": [
        {"name": "basic", "configs": ["configs/b.yaml"], "profiles": ["lan"], "repeats": 2},
        {"name": "ml", "configs": ["configs/m.yaml"], "profiles": ["lan"], "sweep": {"ml.compression.codec": ["topk"]}}]})
    return expand(matrix, "m.yaml", tmp_path, tmp_path / "netem")


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)


def controller_row(run_id: str, started_at: str, mode: str = "basic") -> dict:
    return {"config": "b", "mode": mode, "profile": "lan", "repeat": 1, "duration_s": 12.5, "num_workers": 4,
            "num_completed_tasks": 40, "num_pending_tasks": 0, "status": OK_STATUS, "run_id": run_id,
            "started_at": started_at}


def test_merged_csv_has_the_fixed_columns_and_one_row_per_run(tmp_path, cells):
    runs = tmp_path / "runs"
    write_run(runs, "r1", controller_row("r1", "2026-01-01T00:00:01+00:00"), {})
    write_run(runs, "r2", controller_row("r2", "2026-01-01T00:00:02+00:00"), {})
    failed = record_failure(runs, cells[1], "stack never healthy: controller is unhealthy", at("2026-01-01T00:00:03"))

    first = (runs / "runs_basic.csv").read_text()
    merge_mode(runs, "basic")
    write_run(runs, "r2", controller_row("r2", "2026-01-01T00:00:02+00:00"), {})  # the same run written again

    assert (runs / "runs_basic.csv").read_text() == first
    assert first.splitlines()[0] == ",".join(COLUMNS)
    rows = read_rows(runs / "runs_basic.csv")
    assert [r["run_id"] for r in rows] == ["r1", "r2", failed]
    assert not (runs / "runs_ml.csv").exists()


def test_a_failed_cell_row_says_what_the_cell_was_and_why(tmp_path, cells):
    runs = tmp_path / "runs"
    ml_cell = cells[2]

    context = {"preset": {"name": "lan", "default": {}}, "image_id": "sha256:abc", "versions": {"python": "3.13"}}
    run_id = record_failure(runs, ml_cell, "run did not end within timeout_s + 120 s", at("2026-01-01T10:00:00"),
                            context=context)

    (row,) = read_rows(runs / "runs_ml.csv")
    assert run_id == f"20260101T100000Z-m-failed-{ml_cell.key[:8]}" == row["run_id"]
    assert row["started_at"] == "2026-01-01T10:00:00+00:00"
    assert (row["status"], row["reason"]) == (FAILED_STATUS, "run did not end within timeout_s + 120 s")
    assert (row["mode"], row["profile"], row["repeat"], row["num_workers"]) == ("ml", "lan", "1", "4")
    assert (row["config_hash"], row["codec"], row["protocol"]) == (ml_cell.config.digest(), "topk", "async")
    assert row["duration_s"] == "" and row["final_val_loss"] == ""
    provenance = json.loads((runs / run_id / "run.json").read_text())
    assert provenance["cell"]["key"] == ml_cell.key and provenance["config"]["ml"]["compression"]["codec"] == "topk"
    assert (provenance["preset"], provenance["image_id"], provenance["versions"]) == \
        (context["preset"], "sha256:abc", {"python": "3.13"})


def test_failure_rows_use_only_known_columns(cells):
    for cell in cells:
        assert set(failure_row(cell, "x", "why", "t")) <= set(COLUMNS)


def test_a_cell_is_done_only_with_a_row_of_its_own(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "r1", controller_row("r1", "t"), {})

    assert is_done({"run_id": "r1", "status": OK_STATUS}, runs)
    assert is_done({"run_id": "r1", "status": "degraded"}, runs)
    assert is_done({"run_id": "r1", "status": "timeout"}, runs)
    assert not is_done({"run_id": "r1", "status": FAILED_STATUS}, runs)  # retried on restart
    assert not is_done({"run_id": "gone", "status": OK_STATUS}, runs)  # its folder was deleted: run again
    assert not is_done(None, runs)


def test_resume_state_reads_back_and_a_corrupt_file_is_refused(tmp_path):
    runs = tmp_path / "runs"
    assert read_done(runs) == {}
    done_path(runs).parent.mkdir(parents=True)
    done_path(runs).write_text(json.dumps({"k": {"run_id": "r1", "status": "ok"}}))
    assert read_done(runs) == {"k": {"run_id": "r1", "status": "ok"}}

    done_path(runs).write_text("{not json")
    with pytest.raises(ConfigError, match=r"done\.json: not valid JSON .* fix or delete it"):
        read_done(runs)


def test_a_second_runner_on_the_same_runs_folder_is_refused(tmp_path):
    with sole_runner(tmp_path):
        with pytest.raises(ConfigError, match="another experiment runner is using this runs folder"):
            with sole_runner(tmp_path):
                pass
    with sole_runner(tmp_path):  # released with the first
        pass
