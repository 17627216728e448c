"""ps/protocols.py: the registry, and each protocol's admit / add / due / close / deadline played by hand with
explicit times (no sockets, no sleeps)."""

from typing import get_args

from dist_llm_train.config import load_run_config
from dist_llm_train.ml.config import Protocol
from dist_llm_train.ps.protocols import PROTOCOLS, Adaptive, Admission, Async, Sync

ML_CI = "configs/ml_ci.yaml"


def protocol(name, version=0, min_window=1, **overrides):
    config = load_run_config(ML_CI, {"ml.staleness.protocol": name, **overrides})
    return PROTOCOLS[name](config.ml, min_window, version), config


def test_the_registry_is_keyed_by_the_config_names():
    assert list(PROTOCOLS) == list(get_args(Protocol))
    assert (PROTOCOLS["sync"], PROTOCOLS["async"], PROTOCOLS["adaptive"]) == (Sync, Async, Adaptive)


def test_the_window_is_the_workers_under_sync_and_aggregation_window_otherwise():
    for name, field, size in (("sync", "workers.count", 5), ("async", "ml.aggregation.window", 3),
                              ("adaptive", "ml.aggregation.window", 3)):
        _, config = protocol(name, **{"workers.count": 5, "ml.aggregation.window": 3})
        assert (PROTOCOLS[name].window_size(config), PROTOCOLS[name].window_field) == (size, field)


def test_sync_admits_one_fresh_update_per_session_and_closes_with_every_expected_worker():
    sync, _ = protocol("sync", version=7, **{"ml.staleness.sync_timeout_s": 10.0})
    sync.expect("a")
    sync.expect("b")
    assert sync.deadline() is None and not sync.due(0.0)
    assert sync.admit("a", 0, None) == Admission(None)
    sync.add("a", "row a", 100.0)
    assert sync.admit("a", 0, None) == Admission(None, "second_in_round", "staleness 0, round of version 7")
    assert sync.admit("b", 2, 0.5) == Admission(None, "stale", "staleness 2, round of version 7")
    assert sync.deadline() == 110.0 and not sync.due(100.0)
    sync.add("b", "row b", 101.0)
    assert sync.due(101.0)
    closed = sync.close(103.0, 8)
    assert (closed.pairs, closed.stragglers, closed.took_s) == ([("a", "row a"), ("b", "row b")], set(), 3.0)
    assert sync.deadline() is None and sync.admit("a", 0, None) == Admission(None)  # the round of version 8


def test_sync_drops_stragglers_at_the_deadline_and_owes_the_held_acks_at_the_end():
    sync, _ = protocol("sync", **{"ml.staleness.sync_timeout_s": 2.0})
    for session in "abc":
        sync.expect(session)
    sync.add("a", 1, 10.0)
    sync.forget("c")  # left: no longer waited for
    assert not sync.due(11.9) and sync.due(12.0)
    assert sync.close(12.0, 1).stragglers == {"b"}
    sync.add("b", 2, 13.0)
    assert sync.drop(1) == [("b", 2)] and sync.drop(1) == [] and sync.holds_acks


def test_async_admits_up_to_the_bound_and_closes_a_full_window():
    window, _ = protocol("async", **{"ml.staleness.bound": 2, "ml.aggregation.window": 2})
    assert window.admit("a", 2, 0.1) == Admission(2)
    assert window.admit("a", 3, 0.1) == Admission(2, "stale", "staleness 3 > bound 2")
    window.add("a", "row a", 0.0)
    assert not window.due(0.0) and window.deadline() is None
    window.add("b", "row b", 1.0)
    assert window.due(1.0)
    closed = window.close(1.0, 1)
    assert (closed.pairs, closed.stragglers) == ([("a", "row a"), ("b", "row b")], set())
    assert not window.due(2.0) and window.drop(1) == [] and not window.holds_acks


def test_adaptive_judges_each_worker_by_its_own_bound_from_the_version_rate():
    adaptive, _ = protocol("adaptive", **{"ml.staleness.min_bound": 1, "ml.staleness.max_bound": 8})
    first = adaptive.admit("far", 1, 0.6)  # no version rate yet: min_bound
    assert (first.bound, first.refused) == (1, None) and first.note.startswith("staleness bound now 1 (round 0.600 s")
    for version in range(21):  # 20 versions/s
        adaptive.stepped(version / 20, version)
    # rate 20/s, round 0.6 s, deviation 0.3 s: ceil(20 * (0.6 + 1.2)) = 36, capped at max_bound 8
    judged = adaptive.admit("far", 8, 0.6)
    assert (judged.bound, judged.refused) == (8, None) and "20.00 versions/s" in judged.note
    assert adaptive.admit("far", 8, 0.6) == Admission(8)  # unchanged bound: no note to log
    near = adaptive.admit("near", 3, None)  # nothing measured for it: min_bound
    assert (near.bound, near.refused, near.detail) == (1, "stale", "staleness 3 > bound 1")
    adaptive.forget("far")
    assert "far" not in adaptive.bounds.estimates
