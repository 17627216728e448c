"""Results on disk: run ids that may become folders, and text cells a spreadsheet must not evaluate."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from controller_helpers import Harness, make_config

from dist_llm_train.experiments.matrix import Matrix, expand
from dist_llm_train.experiments.groups import variant
from dist_llm_train.experiments.report import build_report
from dist_llm_train.experiments.runner import CellFailed, is_done, read_watch, record_failure
from dist_llm_train.results import merge_mode, read_rows, safe_run_id, write_run

GOOD_IDS = ["20261201T101112Z-basic_ci-a1b2c3", "20261201T101112Z-x.y-z_1-0f", "20261201T101112Z-..x-ab",
            f"20261201T101112Z-{'n' * 64}-failed-0123abcd"]
BAD_IDS = ["../../x", "..", ".", "", "/etc", "20261201T101112Z-../../x-ab", "20261201T101112Z-a/b-ab",
           "20261201T101112Z-x-ab/..", "x", "20261201T101112Z-x-ab\n", "20261201T101112Z-x-AB", None, 7, ["x"]]


@pytest.mark.parametrize("run_id", GOOD_IDS)
def test_a_run_id_is_safe(run_id):
    assert safe_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_anything_else_is_not_a_run_id(run_id):
    with pytest.raises(ValueError, match="is not a run id"):
        safe_run_id(run_id)


@pytest.mark.parametrize("name", ["x", "n" * 64, "-x", "..x", "a.b-c_d"])
def test_the_run_ids_of_every_config_name_are_run_ids(tmp_path, name):
    """The controller's and the runner's run ids pass the check the PS, the sidecar and the runner
    apply to a run id from the network."""
    config = make_config({"name": name})
    h = Harness(tmp_path, config)
    (tmp_path / "netem").mkdir()
    (tmp_path / "netem" / "lan.yaml").write_text("description: no impairment\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    (cell,) = expand(Matrix.model_validate({"studies": [{"name": "s", "configs": ["c.yaml"], "profiles": ["lan"]}]}),
                     "m.yaml", tmp_path, tmp_path / "netem")

    controller_id = h.status()["run"]["id"]
    runner_id = record_failure(tmp_path / "runs", cell, "why", datetime(2026, 1, 1, tzinfo=timezone.utc))

    assert safe_run_id(controller_id) == controller_id
    assert safe_run_id(runner_id) == runner_id


@pytest.mark.parametrize("run_id", [i for i in BAD_IDS if i is not None])
def test_the_runner_refuses_a_run_id_from_the_controller_that_is_not_one(run_id):
    line = json.dumps({"run": {"id": run_id, "state": "finished"}, "stopped": False, "error": None})

    with pytest.raises(CellFailed, match="the controller answered a bad run id") as refused:
        read_watch(line + "\n", "")

    assert refused.value.run_id is None  # the failure row gets an id of the runner's own


def test_the_runner_reads_a_good_run_id():
    line = json.dumps({"run": {"id": GOOD_IDS[0], "state": "finished"}, "stopped": False, "error": None})

    assert read_watch("noise\n" + line + "\n", "")[1:] == (GOOD_IDS[0], "finished")


@pytest.mark.parametrize("run_id", ["../outside", "..", "/tmp", "a/../../outside"])
def test_a_run_id_in_local_files_never_leads_outside_the_runs_folder(tmp_path, run_id):
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "row.csv").write_text("config\nx\n")
    (tmp_path / "outside" / "run.json").write_text(json.dumps({"config": {"name": "elsewhere"}}))

    assert not is_done({"run_id": run_id, "status": "finished"}, runs)
    assert variant(runs, {"run_id": run_id, "config_hash": "from-the-row"}) == "from-the-row"


# ---- text cells ---------------------------------------------------------------------------------

def basic_row(reason: str, **extra) -> dict:
    return {"config": "b", "mode": "basic", "profile": "lan", "status": "failed", "reason": reason,
            "run_id": "r1", "started_at": "2026-01-01T00:00:00+00:00", **extra}


def raw_cells(path: Path) -> dict[str, str]:
    """The one row of a CSV file as written, without read_rows' decoding."""
    (row,) = csv.DictReader(open(path, newline=""))
    return row


@pytest.mark.parametrize("text, written", [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
    ("-2+3+cmd", "'-2+3+cmd"),
    ("@SUM(1+1)", "'@SUM(1+1)"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("'already quoted", "''already quoted"),
    ("-", "'-"),
    ("stopped by request", "stopped by request"),
    ("a=b, c-d", "a=b, c-d"),
    ("line one\rline two", "line one\rline two"),
    ("", ""),
], ids=["equals", "plus", "minus", "at", "tab", "cr", "apostrophe", "lone-minus", "plain", "inner", "inner-cr",
        "empty"])
def test_a_text_cell_is_written_inert_and_read_back_as_it_was(tmp_path, text, written):
    runs = tmp_path / "runs"

    write_run(runs, "r1", basic_row(text), {})
    merge_mode(runs, "basic")  # read back and written again: no second mark

    assert raw_cells(runs / "r1" / "row.csv")["reason"] == written
    assert raw_cells(runs / "runs_basic.csv")["reason"] == written
    assert read_rows(runs / "r1" / "row.csv")[0]["reason"] == text
    assert read_rows(runs / "runs_basic.csv")[0]["reason"] == text


@pytest.mark.parametrize("value, written", [
    (-0.5, "-0.5"), (-3, "-3"), (1e-05, "1e-05"), (-1.5e-07, "-1.5e-07"), (1234567.0, "1.23457e+06"),
    (float("-inf"), "-inf"), ("-0.5", "-0.5"), ("+2", "+2"), ("-1.5e-07", "-1.5e-07"),
])
def test_a_number_stays_a_number(tmp_path, value, written):
    runs = tmp_path / "runs"

    write_run(runs, "r1", basic_row("ok", duration_s=value, mean_staleness=value), {})
    merge_mode(runs, "basic")

    for path in (runs / "r1" / "row.csv", runs / "runs_basic.csv"):
        assert raw_cells(path)["duration_s"] == written
        assert read_rows(path)[0]["mean_staleness"] == written


def test_the_report_shows_text_cells_as_they_were_in_one_table_row(tmp_path):
    runs = tmp_path / "runs"
    reason = "=cmd|' /C calc'!A0\nsecond line | with a bar"
    write_run(runs, "r1", basic_row(reason, config="-x"), {})

    build_report(runs, runs / "report", "dist-llm-train report")

    markdown = (runs / "report" / "results.md").read_text()
    (line,) = [line for line in markdown.splitlines() if line.startswith("| r1 |")]
    assert "=cmd\\|' /C calc'!A0 second line \\| with a bar" in line
    assert "| -x |" in line and "'=" not in line and "'-x" not in line
