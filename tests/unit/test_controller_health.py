"""Failure detection with a hand-moved clock: dead workers, requeue exactly once, late completions,
re-registration, and the fresh timeout a restarted controller gives every live worker."""

from __future__ import annotations

from controller_helpers import AUTH, Clock, Harness, OPERATOR_AUTH, make_config

from dist_llm_train.controller import health


def test_silent_worker_dies_its_task_is_requeued_once_and_its_late_completion_refused(tmp_path):
    h = Harness(tmp_path)
    slow, fast = h.register("slow", 0), h.register("fast", 1)
    task = h.next_task(slow)["task"]  # the cycle also leased the next task to fast
    h.clock.advance(6.0)  # past heartbeat_timeout_s = 5
    h.heartbeat(fast)

    health.check(h.ctl, h.clock())
    health.check(h.ctl, h.clock())  # a second pass changes nothing
    late = h.complete(slow, task)
    beat = h.heartbeat(slow)
    h.complete(fast, h.next_task(fast)["task"])
    retaken = h.next_task(fast)["task"]  # the oldest pending task again
    done = h.complete(fast, retaken)

    assert late.status_code == 409
    assert beat.status_code == 410
    assert retaken["task_id"] == task["task_id"] and retaken["lease"] != task["lease"]
    assert done.json() == {"status": "completed"}
    row = h.ctl.store.task(task["task_id"])
    assert (row["requeues"], row["attempts"], row["worker_id"]) == (1, 2, fast)
    assert h.ctl.metrics.events["requeues"] == 1
    assert h.ctl.metrics.events["workers_dead"] == 1
    assert h.ctl.metrics.events["stale_completions"] == 1
    assert {w["worker_id"]: w["status"] for w in h.status()["workers"]} == {"slow.1": "dead", "fast.1": "alive"}


def test_missed_heartbeats_are_noted_once_before_death(tmp_path):
    h = Harness(tmp_path)
    worker = h.register()

    h.clock.advance(2.5)  # more than two intervals of 1 s
    health.check(h.ctl, h.clock())
    health.check(h.ctl, h.clock())
    noted = h.ctl.metrics.events["heartbeats_missed"]
    h.heartbeat(worker)
    h.clock.advance(4.0)
    health.check(h.ctl, h.clock())

    assert noted == 1
    assert h.ctl.store.worker(worker)["status"] == "alive"  # heard 4 s ago: not dead yet
    assert h.ctl.metrics.events["heartbeats_missed"] == 2  # a new silence is a new episode


def test_dead_worker_comes_back_as_a_new_incarnation(tmp_path):
    h = Harness(tmp_path)
    first = h.register("w")
    h.clock.advance(6.0)
    health.check(h.ctl, h.clock())

    second = h.register("w")
    beat = h.heartbeat(second)
    task = h.next_task(second)["task"]

    assert (first, second) == ("w.1", "w.2")
    assert beat.json()["alive"] is True
    assert task is not None


def test_restarted_worker_replaces_its_live_incarnation_and_frees_its_task(tmp_path):
    h = Harness(tmp_path)
    first = h.register("w")
    task = h.next_task(first)["task"]

    second = h.register("w", proof=first)  # the same process, registering again: it proves the name is its
    old_beat = h.heartbeat(first)
    again = h.next_task(second)["task"]

    assert old_beat.status_code == 410
    assert again["task_id"] == task["task_id"] and again["lease"] != task["lease"]
    assert h.ctl.store.task(task["task_id"])["requeues"] == 1


def test_restarted_controller_gives_each_live_worker_one_fresh_timeout(tmp_path):
    clock = Clock()
    before = Harness(tmp_path, clock=clock)
    worker = before.register()
    task = before.next_task(worker)["task"]
    run_id = before.status()["run"]["id"]
    before.ctl.store.close()
    clock.advance(60.0)  # the controller was down for a minute; nobody could heartbeat

    after = Harness(tmp_path, clock=clock)
    health.check(after.ctl, clock())
    survived = after.ctl.store.worker(worker)["status"]
    clock.advance(6.0)
    health.check(after.ctl, clock())

    assert after.status()["run"]["id"] == run_id
    assert survived == "alive"
    assert after.ctl.store.worker(worker)["status"] == "dead"
    assert after.ctl.store.task(task["task_id"])["state"] == "pending"


def test_restart_resumes_the_held_lease(tmp_path):
    clock = Clock()
    before = Harness(tmp_path, clock=clock)
    worker = before.register()
    task = before.next_task(worker)["task"]
    before.ctl.store.close()

    after = Harness(tmp_path, clock=clock)
    after.secrets = before.secrets  # the worker kept its secret; the controller, its hash
    held = after.next_task(worker)["task"]
    done = after.complete(worker, task)

    assert held == task
    assert done.json() == {"status": "completed"}


def test_another_config_starts_a_fresh_run(tmp_path):
    before = Harness(tmp_path)
    worker = before.register()
    old = before.status()["run"]["id"]
    before.ctl.store.close()

    after = Harness(tmp_path, config=make_config({"seed": 99}))
    status = after.status()

    assert status["run"]["id"] != old
    assert status["workers"] == []
    assert after.client.post(f"/workers/{worker}/heartbeat", json={}, headers=before.auth(worker)).status_code == 404


def test_no_one_is_judged_after_the_run_ended(tmp_path):
    h = Harness(tmp_path)
    worker = h.register()
    h.client.post("/run/stop", json={"reason": "enough"}, headers=OPERATOR_AUTH)

    h.clock.advance(60.0)
    health.check(h.ctl, h.clock())

    assert h.ctl.store.worker(worker)["status"] == "alive"
    assert h.ctl.metrics.events["workers_dead"] == 0
