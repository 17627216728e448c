"""A PS killed (SIGKILL) mid-run and started again resumes at its newest checkpoint's version, the workers
reconnect on their own (HELLO again, dense parameters), and the run completes its budget."""

import signal

from ml_support import ml_run, row_of, wait_for_version

from dist_llm_train.ps import checkpoint


def test_ps_killed_mid_run_resumes_from_its_checkpoint(tmp_path, process_log):
    overrides = {"workers.speed": [0.15], "ml.budget.max_versions": 500, "ml.budget.checkpoint_every": 50,
                 "ml.budget.max_time_s": 150.0}
    with ml_run(tmp_path, process_log, overrides) as run:
        run.start()
        run_id = run.status()["run"]["id"]
        wait_for_version(run, 160, 120)
        run.kill(run.ps, signal.SIGKILL)
        saved, problems = checkpoint.newest(run.tmp / "checkpoints", run_id)
        run.ps = run.spawn("ps")
        final = run.wait_end(150)
        run.ps.wait(timeout=30)
        row = row_of(run, final)
    log = open(process_log.name).read()

    assert problems == [] and saved.version >= 150 and saved.version % 50 == 0
    assert f"resumed run {run_id} from its checkpoint of version {saved.version}" in log
    assert run.ps.returncode == 0
    assert final["run"]["state"] == "finished" and row["reason"] == "budget: max_versions 500 reached at version 500", row
    # every worker noticed the PS go and joined the new one
    for index in range(3):
        assert f"local-worker-{index} the PS at" in log and log.count(f"local-worker-{index} joined the PS") >= 2
    # counters continue from the checkpoint: the resumed PS applied the rest, up to the budget
    assert int(row["updates_accepted"]) >= 500
    assert float(row["final_val_loss"]) < float(row["initial_val_loss"]) - 2
