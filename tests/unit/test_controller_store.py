"""The store's transitions: leases, completion, requeue exactly once, re-registration, persistence."""

from __future__ import annotations

import pytest

from dist_llm_train.controller.store import NameHeld, StaleLease, Store
from dist_llm_train.controller.tasks import TaskSpec

NOW = 100.0


def spec(i: int, memory_mb: int = 100) -> TaskSpec:
    return TaskSpec(f"t{i}", i, "synthetic", 1000, 0, memory_mb, 1, 1)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "controller.db")
    s.create_run("run-1", "digest", {"mode": "basic"}, "running", [spec(0), spec(1)], NOW)
    yield s
    s.close()


def lease_states(store: Store, task_id: str) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT state FROM leases WHERE task_id = ? ORDER BY created_at, lease",
                                           (task_id,))]


def test_assign_then_complete_then_repeat(store):
    worker, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    lease = store.assign({worker: "t0"}, NOW)[worker]

    first = store.complete("t0", worker, lease, 10, NOW + 1)
    again = store.complete("t0", worker, lease, 10, NOW + 2)

    assert (first, again) == ("completed", "already_completed")
    assert store.task("t0")["state"] == "completed"
    assert store.held_task(worker) is None
    assert store.load_run()["bytes_received"] == 10  # the repeat is not counted
    assert lease_states(store, "t0") == ["completed"]


@pytest.mark.parametrize("who, lease", [("other", "right"), ("w.1", "wrong")])
def test_completion_needs_the_current_lease_and_its_holder(store, who, lease):
    worker, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    store.register_worker("other", 1, 1.0, 512, NOW, "h")
    granted = store.assign({worker: "t0"}, NOW)[worker]
    other_id = "other.1" if who == "other" else worker

    with pytest.raises(StaleLease):
        store.complete("t0", other_id, granted if lease == "right" else "not-a-lease", 10, NOW)

    assert store.task("t0")["state"] == "assigned"


def test_dead_worker_task_requeued_exactly_once_and_late_completion_refused(store):
    worker, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    lease = store.assign({worker: "t0"}, NOW)[worker]

    first = store.mark_dead(worker, NOW + 10)
    second = store.mark_dead(worker, NOW + 11)
    with pytest.raises(StaleLease):
        store.complete("t0", worker, lease, 10, NOW + 12)

    assert first == (True, "t0")
    assert second == (False, None)
    task = store.task("t0")
    assert (task["state"], task["requeues"], task["lease"]) == ("pending", 1, None)
    assert lease_states(store, "t0") == ["revoked"]
    assert store.worker(worker)["status"] == "dead"
    assert store.task_counts()["completed"] == 0


def test_requeued_task_completes_once_under_its_new_lease(store):
    dead, _ = store.register_worker("a", 0, 1.0, 512, NOW, "h")
    alive, _ = store.register_worker("b", 1, 1.0, 512, NOW, "h")
    old = store.assign({dead: "t0"}, NOW)[dead]
    store.mark_dead(dead, NOW + 5)
    new = store.assign({alive: "t0"}, NOW + 6)[alive]

    with pytest.raises(StaleLease):
        store.complete("t0", dead, old, 10, NOW + 7)
    status = store.complete("t0", alive, new, 10, NOW + 8)

    assert status == "completed"
    assert lease_states(store, "t0") == ["revoked", "completed"]
    assert store.task("t0")["worker_id"] == alive


def test_reregistration_is_a_new_incarnation_and_requeues_the_old_task(store):
    first, retired_none = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    store.assign({first: "t1"}, NOW)

    with pytest.raises(NameHeld):  # without proving to be w.1, nothing changes
        store.register_worker("w", 0, 1.0, 512, NOW + 1, "other-hash")
    assert store.worker(first)["status"] == "alive" and store.task("t1")["state"] == "assigned"

    second, retired = store.register_worker("w", 0, 1.0, 512, NOW + 1, "h2", proves=lambda h: h == "h")

    assert store.secret_hash(second) == "h2" and store.secret_hash(first) == "h"
    assert (first, second) == ("w.1", "w.2")
    assert retired_none == []
    assert retired == [("w.1", "t1")]
    assert store.worker(first)["status"] == "replaced"
    assert store.worker(second)["status"] == "alive"
    assert store.task("t1")["state"] == "pending"
    assert [v.worker_id for v in store.idle_worker_views()] == ["w.2"]


def test_reregistration_after_death_keeps_the_requeue_count(store):
    first, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    store.assign({first: "t0"}, NOW)
    store.mark_dead(first, NOW + 5)

    second, retired = store.register_worker("w", 0, 1.0, 512, NOW + 6, "h")

    assert retired == []  # the dead incarnation had nothing left to requeue
    assert store.task("t0")["requeues"] == 1
    assert second == "w.2"


def test_bad_pair_rolls_back_the_whole_cycle(store):
    a, _ = store.register_worker("a", 0, 1.0, 512, NOW, "h")
    b, _ = store.register_worker("b", 1, 1.0, 512, NOW, "h")

    with pytest.raises(ValueError):
        store.assign({a: "t0", b: "t0"}, NOW)  # one task to two workers

    assert store.task_counts()["assigned"] == 0
    assert [t.task_id for t in store.pending_views()] == ["t0", "t1"]
    assert store.held_task(a) is None
    assert store.db.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0


def test_nested_transaction_rolls_back_with_the_outer_one(store):
    worker, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")

    with pytest.raises(RuntimeError):
        with store.transaction():
            store.assign({worker: "t0"}, NOW)
            raise RuntimeError("after the inner transaction")

    assert store.task("t0")["state"] == "pending"


def test_views_show_pending_tasks_and_idle_live_workers(store):
    busy, _ = store.register_worker("busy", 0, 1.0, 512, NOW, "h")
    idle, _ = store.register_worker("idle", 1, 2.0, 256, NOW + 1, "h")
    dead, _ = store.register_worker("dead", 2, 1.0, 512, NOW, "h")
    store.mark_dead(dead, NOW + 2)
    store.assign({busy: "t0"}, NOW)
    store.put_telemetry(idle, {"samples": 1, "ewma_tokens_per_sec": 5.0, "rtt_ms": 2.0, "down_mbit": 9.0}, NOW)

    tasks = store.pending_views()
    workers = store.idle_worker_views()

    assert [t.task_id for t in tasks] == ["t1"]
    assert len(workers) == 1
    view = workers[0]
    assert (view.worker_id, view.index, view.capacity, view.memory_mb, view.idle_since) == (idle, 1, 2.0, 256, NOW + 1)
    assert (view.ewma_tokens_per_sec, view.rtt_ms, view.down_mbit) == (5.0, 2.0, 9.0)


def test_state_survives_reopening(tmp_path):
    path = tmp_path / "controller.db"
    first = Store(path)
    first.create_run("run-1", "digest", {"mode": "basic"}, "running", [spec(0)], NOW)
    worker, _ = first.register_worker("w", 0, 1.0, 512, NOW, "h")
    lease = first.assign({worker: "t0"}, NOW)[worker]
    first.close()

    second = Store(path)

    assert second.load_run()["run_id"] == "run-1"
    assert second.held_task(worker)["lease"] == lease
    assert [t.task_id for t in second.pending_views()] == []
    assert second.complete("t0", worker, lease, 1, NOW + 1) == "completed"
    second.close()


def test_create_run_replaces_everything(store):
    worker, _ = store.register_worker("w", 0, 1.0, 512, NOW, "h")
    store.assign({worker: "t0"}, NOW)
    store.save_report("links", {"ready": True}, NOW)

    store.create_run("run-2", "other", {"mode": "basic"}, "waiting", [spec(5)], NOW + 1)

    assert store.load_run()["run_id"] == "run-2"
    assert store.worker(worker) is None
    assert store.report("links") is None
    assert [t.task_id for t in store.pending_views()] == ["t5"]
