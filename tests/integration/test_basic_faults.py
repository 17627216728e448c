"""Faults during a basic run, with real processes: a worker killed, a worker killed and started again at once
(a restarted container), a worker frozen past its timeout, the controller killed and restarted. Every task
still completes exactly once."""

from __future__ import annotations

import signal
import time

from basic_support import assert_each_task_completed_once, ci_run, the_row, truth


def holder(status: dict, index: int) -> dict | None:
    """The live incarnation of worker `index` if it holds a task."""
    for w in status["workers"]:
        if w["index"] == index and w["status"] == "alive" and w["task"]:
            return w
    return None


def freeze_holder(run, index: int, min_completed: int = 2) -> dict:
    """SIGSTOP worker `index` at a moment it holds a task, mid-run; its status row then.
    (Stopped first, then read: a worker read first could finish its task before the signal.)"""
    process = run.workers[index]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = run.status() or {"workers": [], "tasks": {"completed": 0}}
        if holder(status, index) and status["tasks"]["completed"] >= min_completed:
            process.send_signal(signal.SIGSTOP)
            frozen = holder(run.status() or {"workers": []}, index)
            if frozen:
                return frozen
            process.send_signal(signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f"worker {index} never held a task mid-run")


def test_killed_worker_task_is_requeued_and_completed_once(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start()
        victim = freeze_holder(run, 1)
        run.kill(run.workers[1], signal.SIGKILL)
        final = run.wait_end(timeout_s=90)
        db = truth(run.db_path)

    assert final["run"]["state"] == "finished"
    assert_each_task_completed_once(db)
    dead = {w["worker_id"]: w["status"] for w in db["workers"]}
    assert dead[victim["worker_id"]] == "dead"
    requeued = {t["task_id"]: t["requeues"] for t in db["tasks"] if t["requeues"]}
    assert requeued == {victim["task"]: 1}
    assert int(the_row(run.runs_dir, final["run"]["id"])["num_completed_tasks"]) == 24


def test_a_restarted_worker_takes_its_name_back_once_the_old_incarnation_is_dead(tmp_path, process_log):
    # The new process has lost the old one's secret (a restarted container's /tmp is empty): the controller
    # refuses the name while the old incarnation may still be alive, and gives it once that one is declared dead.
    with ci_run(tmp_path, process_log) as run:
        run.start()
        victim = freeze_holder(run, 1)
        run.kill(run.workers[1], signal.SIGKILL)
        run.start_worker(1)
        final = run.wait_end(timeout_s=90)
        exits = run.wait_workers_exit(timeout_s=10)
        db = truth(run.db_path)
    log = open(process_log.name).read()

    assert final["run"]["state"] == "finished"
    assert exits == {0: 0, 1: 0, 2: 0, 3: 0}
    assert_each_task_completed_once(db)
    assert f"is held by the live incarnation {victim['worker_id']}" in log  # refused at first ...
    incarnations = {w["worker_id"]: w["status"] for w in db["workers"] if w["idx"] == 1}
    assert incarnations == {victim["worker_id"]: "dead", victim["worker_id"][:-1] + "2": "alive"}  # ... then in
    assert {t["task_id"]: t["requeues"] for t in db["tasks"] if t["requeues"]} == {victim["task"]: 1}


def test_a_worker_restarted_after_the_run_ended_stops_as_after_the_run(tmp_path, process_log):
    # Nobody is declared dead once the run is over, so the name stays held: the new process has nothing to do.
    with ci_run(tmp_path, process_log) as run:
        run.start()
        final = run.wait_end(timeout_s=90)
        run.wait_workers_exit(timeout_s=10)
        started = time.monotonic()
        run.start_worker(1)
        exits = run.wait_workers_exit(timeout_s=30)
        took = time.monotonic() - started
        db = truth(run.db_path)

    assert final["run"]["state"] == "finished"
    assert exits[1] == 0 and took < 10  # at once, not after the 9 s a live run's wait may take
    assert "registration refused after the run ended: nothing to do" in open(process_log.name).read()
    assert [w["worker_id"] for w in db["workers"] if w["idx"] == 1] == ["local-worker-1.1"]


def test_frozen_worker_is_declared_dead_then_comes_back_as_a_new_incarnation(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start()
        victim = freeze_holder(run, 0)
        time.sleep(3.0)  # heartbeat_timeout_s is 2
        run.workers[0].send_signal(signal.SIGCONT)
        final = run.wait_end(timeout_s=90)
        exits = run.wait_workers_exit(timeout_s=10)
        db = truth(run.db_path)

    assert final["run"]["state"] == "finished"
    assert exits[0] == 0
    assert_each_task_completed_once(db)
    incarnations = {w["worker_id"]: w["status"] for w in db["workers"] if w["idx"] == 0}
    assert incarnations == {victim["worker_id"]: "dead", victim["worker_id"][:-1] + "2": "alive"}
    assert {t["task_id"]: t["requeues"] for t in db["tasks"] if t["requeues"]} == {victim["task"]: 1}


def test_controller_killed_and_restarted_mid_run_loses_nothing(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start()
        before = run.status()
        run.wait_until(lambda: (run.status() or {}).get("tasks", {}).get("completed", 0) >= 6, 60,
                       "six completed tasks")
        run.kill(run.controller, signal.SIGKILL)
        time.sleep(1.5)  # workers retry meanwhile
        run.start_controller()
        final = run.wait_end(timeout_s=90)
        exits = run.wait_workers_exit(timeout_s=10)
        db = truth(run.db_path)

    assert final["run"]["id"] == before["run"]["id"]
    assert final["run"]["state"] == "finished"
    assert exits == {0: 0, 1: 0, 2: 0, 3: 0}
    assert_each_task_completed_once(db)
    assert {w["worker_id"] for w in db["workers"]} == {f"local-worker-{i}.1" for i in range(4)}
    assert list(run.runs_dir.glob("*/row.csv")) == [run.runs_dir / final["run"]["id"] / "row.csv"]
    assert int(the_row(run.runs_dir, final["run"]["id"])["num_completed_tasks"]) == 24
