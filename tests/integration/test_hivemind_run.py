"""The hivemind trainer on loopback: LocalRun of configs/ml_hivemind_ci.yaml (controller, the PS role as the
initial peer, 2 hivemind peers as real processes). hivemind is installed in the hivemind image only, so this file
runs there (`make test` runs it in HIVEMIND_IMAGE) and is skipped in the main image's run.

A peer whose training diverges (server lr x1e6: the first averaged step makes the parameters huge) ends the run
`failed` with its words, as a builtin worker does (tests/integration/test_ml_divergence.py), instead of training
on to a `finished` row with the loss of an older epoch. A swarm short of a declared worker ends the run `failed`
after one workers.start_wait_s, naming what the start barrier found."""

import re

import pytest
from ml_support import REPO, row_of

from dist_llm_train.config import load_run_config
from dist_llm_train.demo import LocalRun

pytest.importorskip("hivemind", reason="hivemind is in the hivemind image (make test runs this file there)")

ML_HIVEMIND_CI = REPO / "configs" / "ml_hivemind_ci.yaml"


def test_a_hivemind_peer_that_diverges_ends_the_run_failed(tmp_path, process_log):
    overrides = {"workers.count": 2, "ml.optimizer.lr": 5e5, "ml.budget.max_versions": 10**6}
    with LocalRun(load_run_config(ML_HIVEMIND_CI, overrides), tmp_path / "runs", output=process_log) as run:
        run.env["TORCH_THREADS"] = "1"
        run.start()
        final = run.wait_end(180)
        row = row_of(run, final)
        exits = run.wait_workers_exit(60)
        run.ps.wait(timeout=30)

    assert row["status"] == "failed" and row["trainer"] == "hivemind", row
    assert re.match(r"failed: worker '[^']+' diverged at version \d+: (update norm \S+ is above ml.max_update_norm "
                    r"2234|training loss is (inf|nan)|the update holds NaN or Inf|its parameters are NaN or Inf "
                    r"after the step)$", row["reason"]), row
    assert row["final_val_loss"] == "" or float(row["final_val_loss"]) == float(row["final_val_loss"])
    assert exits == {0: 0, 1: 0} and run.ps.returncode == 0


def test_a_swarm_short_of_a_declared_worker_ends_the_run_failed_after_one_wait(tmp_path, process_log):
    overrides = {"workers.count": 2, "workers.start_wait_s": 5}
    with LocalRun(load_run_config(ML_HIVEMIND_CI, overrides), tmp_path / "runs", output=process_log) as run:
        run.env["TORCH_THREADS"] = "1"
        run.start_controller()
        run.ps = run.spawn("ps")
        run.start_worker(0)  # worker 1 never comes
        final = run.wait_end(120)
        row = row_of(run, final)
        exits = run.wait_workers_exit(60)
        run.ps.wait(timeout=30)

    assert row["status"] == "failed" and row["trainer"] == "hivemind", row
    assert re.match(r"failed: worker '[^']+' found 1 of 2 peers in the swarm after workers.start_wait_s = 5 s$",
                    row["reason"]), row
    # Nothing was trained: both are epoch 0's, the initial on the slice, the final on the final set (other batches).
    initial, final = float(row["initial_val_loss"]), float(row["final_val_loss"])
    assert abs(initial - final) < 0.02 and final > 5.0, (initial, final)
    assert exits == {0: 0} and run.ps.returncode == 0
