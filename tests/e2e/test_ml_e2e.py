"""ML mode through the real compose stack (`make up MODE=ml PROFILE=lan`, configs/ml_ci.yaml): the PS
becomes healthy, 3 workers train through it, the run finishes at its version budget and leaves its row,
curve, staleness histogram and checkpoints on the host."""

from __future__ import annotations

import csv
import subprocess

from dist_llm_train.ps import checkpoint


def test_ml_run_trains_and_leaves_row_curve_and_checkpoints(make_stack):
    stack = make_stack(config="configs/ml_ci.yaml", workers=3, mode="ml")
    stack.up()
    status = stack.wait_end(timeout=300)

    run = status["run"]
    assert run["state"] == "finished" and run["reason"] == "budget: max_versions 600 reached at version 600", run
    assert status["ps"]["version"] == 600 and status["ps"]["done"] is True
    run_dir = stack.runs_dir / run["id"]
    (row,) = csv.DictReader(open(run_dir / "row.csv", newline=""))
    assert row["status"] == "finished" and row["protocol"] == "async" and row["codec"] == "none"
    assert row["backend"] in ("netem", "userspace") and row["num_workers"] == "3"
    assert float(row["final_val_loss"]) < 2.4 < float(row["initial_val_loss"])  # ml_ci's fitted threshold
    assert int(row["updates_accepted"]) >= 600 and int(row["bytes_up"]) >= 600 * 4 * 49_920
    assert 0 < float(row["compute_utilization"]) <= 1
    curve = list(csv.DictReader(open(run_dir / "curve.csv", newline="")))
    sliced = [int(r["version"]) for r in curve if r["val_loss"] and r["val_set"] == "slice"]
    assert set(range(0, 601, 50)) <= set(sliced)  # every eval_every versions, and by time (eval_every_s)
    assert curve[-1]["val_set"] == "final" and float(curve[-1]["val_loss"]) == float(row["final_val_loss"])
    assert (run_dir / "staleness.csv").read_text().startswith("staleness,count\n")
    ckpt, problems = checkpoint.newest(stack.runs_dir.parent / "checkpoints", run["id"])
    assert problems == [] and ckpt.version == 600
    (ps,) = stack.compose("ps", "-a", "-q", "ps").stdout.split()
    state = subprocess.run(["docker", "wait", ps], capture_output=True, text=True, timeout=60).stdout.strip()
    assert state == "0", stack.logs("ps")  # the PS told every worker to stop, then left cleanly
