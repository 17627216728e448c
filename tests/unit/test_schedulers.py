"""The four schedulers: hand-checkable instances, then invariants over random ones."""

from __future__ import annotations

import itertools
import math
import re
from typing import get_args

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from dist_llm_train.controller.config import SchedulerName
from dist_llm_train.controller.scheduling import SCHEDULERS, check_registry
from dist_llm_train.controller.scheduling.base import TaskView, WorkerView
from dist_llm_train.controller.scheduling.capability import CapabilityScheduler
from dist_llm_train.controller.scheduling.estimate import (
    DEFAULT_DOWN_MBIT,
    DEFAULT_RTT_MS,
    MIN_TOKENS_PER_SEC,
    NOMINAL_TOKENS_PER_SEC,
    WorkerEstimate,
    completion_s,
    estimate_workers,
)
from dist_llm_train.controller.scheduling.fifo import FifoScheduler
from dist_llm_train.controller.scheduling.gale_shapley import GaleShapleyScheduler, Preferences
from dist_llm_train.controller.scheduling.priority import PriorityScheduler


def task(task_id: str, seq: int, tokens: int = 1000, priority: int = 0, memory_mb: int = 100,
         input_kb: int = 0) -> TaskView:
    return TaskView(task_id, seq, tokens, priority, memory_mb, input_kb, output_kb=0)


def worker(worker_id: str, index: int, capacity: float = 1.0, memory_mb: int = 1000, idle_since: float = 0.0,
           tps: float | None = None, rtt_ms: float | None = None, down_mbit: float | None = None) -> WorkerView:
    return WorkerView(worker_id, index, capacity, memory_mb, idle_since, tps, rtt_ms, down_mbit)


# ---- registry ---------------------------------------------------------------------------------

def test_registry_has_exactly_the_config_names():
    assert set(SCHEDULERS) == set(get_args(SchedulerName))
    assert all(cls.name == key for key, cls in SCHEDULERS.items())


@pytest.mark.parametrize("registry, message", [
    ({"fifo": FifoScheduler}, "missing ['capability', 'gale-shapley', 'priority']"),
    ({**SCHEDULERS, "random": FifoScheduler}, "unknown ['random']"),
])
def test_registry_check_refuses_a_mismatch(registry, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        check_registry(registry, get_args(SchedulerName))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_empty_inputs_give_no_assignment(name):
    scheduler = SCHEDULERS[name]()
    assert scheduler.assign([], []) == {}
    assert scheduler.assign([task("t0", 0)], []) == {}
    assert scheduler.assign([], [worker("a", 0)]) == {}


# ---- estimates --------------------------------------------------------------------------------

def test_completion_time_adds_download_rtt_and_compute():
    # Prepare: 128 KiB input over 8 Mbit/s, 20 ms RTT, 50k tokens at 25k tokens/s
    estimate = WorkerEstimate(tokens_per_sec=25_000, down_mbit=8.0, rtt_ms=20.0)
    # Execute
    seconds = completion_s(task("t", 0, tokens=50_000, input_kb=128), estimate)
    # Assert: 128 * 1024 * 8 / 8e6 = 0.131072 s + 0.020 s + 2 s
    assert seconds == pytest.approx(2.151072)


def test_unmeasured_worker_takes_the_fleet_median_scaled_by_its_capacity():
    # Prepare: a measures 30k at capacity 1 (30k per unit), c 20k at capacity 0.5 (40k per unit)
    workers = [worker("a", 0, capacity=1.0, tps=30_000, rtt_ms=0.0, down_mbit=10.0),
               worker("b", 1, capacity=2.0),
               worker("c", 2, capacity=0.5, tps=20_000, rtt_ms=100.0, down_mbit=30.0)]
    # Execute
    a, b, c = estimate_workers(workers)
    # Assert: measured figures are used as is; b gets 2 x median(30k, 40k) and the median link
    assert (a.tokens_per_sec, c.tokens_per_sec) == (30_000, 20_000)
    assert b == WorkerEstimate(tokens_per_sec=70_000, down_mbit=20.0, rtt_ms=50.0)


def test_without_any_telemetry_the_stated_defaults_apply():
    (estimate,) = estimate_workers([worker("a", 0, capacity=0.5)])
    assert estimate == WorkerEstimate(0.5 * NOMINAL_TOKENS_PER_SEC, DEFAULT_DOWN_MBIT, DEFAULT_RTT_MS)


@pytest.mark.parametrize("field, bad", [
    *[(field, value) for field in ("tps", "down_mbit") for value in (float("nan"), float("inf"), -1.0, 0.0)],
    *[("rtt_ms", value) for value in (float("nan"), float("inf"), -1.0)],
])
def test_garbled_telemetry_counts_as_unmeasured(field, bad):
    (estimate,) = estimate_workers([worker("a", 0, capacity=1.0, **{field: bad})])
    assert estimate == WorkerEstimate(NOMINAL_TOKENS_PER_SEC, DEFAULT_DOWN_MBIT, DEFAULT_RTT_MS)


def test_capacity_zero_ranks_last_instead_of_dividing_by_zero():
    (estimate,) = estimate_workers([worker("a", 0, capacity=0.0)])
    assert estimate.tokens_per_sec == MIN_TOKENS_PER_SEC


# ---- fifo -------------------------------------------------------------------------------------

def test_fifo_gives_the_oldest_task_to_the_longest_idle_worker():
    # Prepare: tasks given out of order; b has waited since t=2, a since t=5
    tasks = [task("t2", 2), task("t0", 0), task("t1", 1)]
    workers = [worker("a", 0, idle_since=5.0), worker("b", 1, idle_since=2.0)]
    # Execute
    assignment = FifoScheduler().assign(tasks, workers)
    # Assert
    assert assignment == {"b": "t0", "a": "t1"}


def test_fifo_skips_a_worker_whose_memory_does_not_fit():
    # Prepare: the longest-idle worker b has 1000 MiB, the oldest task needs 2000
    tasks = [task("t0", 0, memory_mb=2000), task("t1", 1, memory_mb=100)]
    workers = [worker("a", 0, memory_mb=4000, idle_since=5.0), worker("b", 1, memory_mb=1000, idle_since=2.0)]
    # Execute
    assignment = FifoScheduler().assign(tasks, workers)
    # Assert
    assert assignment == {"a": "t0", "b": "t1"}


def test_fifo_leaves_a_task_that_fits_nobody_pending():
    assert FifoScheduler().assign([task("t0", 0, memory_mb=5000)], [worker("a", 0, memory_mb=4000)]) == {}


# ---- priority ---------------------------------------------------------------------------------

def test_priority_runs_the_highest_level_first_and_fifo_within_it():
    # Prepare: two tasks at level 2 (seq 1 and 3), one at 1, one at 0; three workers
    tasks = [task("t0", 0, priority=0), task("t1", 1, priority=2), task("t2", 2, priority=1),
             task("t3", 3, priority=2)]
    workers = [worker("w3", 2, idle_since=3.0), worker("w1", 0, idle_since=1.0), worker("w2", 1, idle_since=2.0)]
    # Execute
    assignment = PriorityScheduler().assign(tasks, workers)
    # Assert
    assert assignment == {"w1": "t1", "w2": "t3", "w3": "t2"}


# ---- capability -------------------------------------------------------------------------------

def test_capability_gives_the_largest_tasks_to_the_fastest_declared_workers():
    tasks = [task("10k", 0, tokens=10_000), task("30k", 1, tokens=30_000), task("20k", 2, tokens=20_000),
             task("5k", 3, tokens=5_000)]
    workers = [worker("a", 0, capacity=1.0), worker("b", 1, capacity=3.0), worker("c", 2, capacity=2.0)]
    assert CapabilityScheduler().assign(tasks, workers) == {"b": "30k", "c": "20k", "a": "10k"}


def test_capability_moves_work_to_a_worker_whose_telemetry_shows_it_became_faster():
    # Prepare: a declared twice b's capacity and at first measures twice b's speed
    tasks = [task("big", 0, tokens=80_000), task("small", 1, tokens=20_000)]
    before = [worker("a", 0, capacity=2.0, tps=100_000), worker("b", 1, capacity=1.0, tps=50_000)]
    after = [before[0], worker("b", 1, capacity=1.0, tps=150_000)]
    # Execute
    first, second = CapabilityScheduler().assign(tasks, before), CapabilityScheduler().assign(tasks, after)
    # Assert: b's measurement overrules a's larger declaration
    assert first == {"a": "big", "b": "small"}
    assert second == {"b": "big", "a": "small"}


def test_capability_puts_an_unmeasured_worker_on_the_measured_scale():
    # a: capacity 1 measuring 30k; b: capacity 2, unmeasured, so 2 x 30k = 60k
    tasks = [task("big", 0, tokens=80_000), task("small", 1, tokens=20_000)]
    workers = [worker("a", 0, capacity=1.0, tps=30_000), worker("b", 1, capacity=2.0)]
    assert CapabilityScheduler().assign(tasks, workers) == {"b": "big", "a": "small"}


def test_capability_sends_the_largest_task_to_the_fastest_worker_it_fits():
    tasks = [task("big", 0, tokens=80_000, memory_mb=3000), task("small", 1, tokens=20_000)]
    workers = [worker("fast", 0, capacity=4.0, memory_mb=2000), worker("roomy", 1, capacity=1.0, memory_mb=4000)]
    assert CapabilityScheduler().assign(tasks, workers) == {"roomy": "big", "fast": "small"}


# ---- gale-shapley -----------------------------------------------------------------------------

LAN = dict(rtt_ms=10.0, down_mbit=100.0)


def test_gale_shapley_fast_worker_takes_the_large_task_slow_one_the_small():
    # Prepare (no input, 10 ms RTT): seconds = 0.01 + tokens / speed
    #   big 100k:  F (100k/s) 1.01,  S (25k/s) 4.01;   small 25k: F 0.26, S 1.01
    #   target = median(0.26, 1.01, 1.01, 4.01) = 1.01; F's mismatch: big 0, small |ln(0.26/1.01)| = 1.36;
    #   S's: big |ln(4.01/1.01)| = 1.38, small 0. Both tasks propose to F first; F keeps big.
    tasks = [task("big", 0, tokens=100_000), task("small", 1, tokens=25_000)]
    workers = [worker("F", 0, tps=100_000, **LAN), worker("S", 1, tps=25_000, **LAN)]
    # Execute
    assignment = GaleShapleyScheduler().assign(tasks, workers)
    # Assert
    assert assignment == {"F": "big", "S": "small"}


def test_gale_shapley_priority_decides_which_tasks_run():
    # Prepare: as above plus an urgent small task; F keeps urgent (priority), big and small both
    # fall back to S, which keeps small (mismatch 0 against 1.38); big stays pending.
    tasks = [task("big", 0, tokens=100_000), task("small", 1, tokens=25_000),
             task("urgent", 2, tokens=25_000, priority=1)]
    workers = [worker("F", 0, tps=100_000, **LAN), worker("S", 1, tps=25_000, **LAN)]
    assert GaleShapleyScheduler().assign(tasks, workers) == {"F": "urgent", "S": "small"}


def test_gale_shapley_keeps_heavy_inputs_off_the_slow_link():
    # Prepare: same speed (50k/s, 50k tokens = 1 s compute); N on 100 Mbit/s + 10 ms, R on 1 Mbit/s + 300 ms
    #   heavy (1000 KiB): N 0.08192 + 0.01 + 1 = 1.09192,   R 8.192 + 0.3 + 1 = 9.492
    #   light (10 KiB):   N 0.00082 + 0.01 + 1 = 1.01082,   R 0.08192 + 0.3 + 1 = 1.38192
    #   target = (1.09192 + 1.38192) / 2 = 1.23692; N: heavy 0.125, light 0.202, so N keeps heavy.
    tasks = [task("heavy", 0, tokens=50_000, input_kb=1000), task("light", 1, tokens=50_000, input_kb=10)]
    workers = [worker("N", 0, tps=50_000, rtt_ms=10.0, down_mbit=100.0),
               worker("R", 1, tps=50_000, rtt_ms=300.0, down_mbit=1.0)]
    assert GaleShapleyScheduler().assign(tasks, workers) == {"N": "heavy", "R": "light"}


def test_gale_shapley_never_uses_a_worker_without_enough_memory():
    # big prefers F but does not fit it; it takes S; "huge" fits nobody
    tasks = [task("big", 0, tokens=100_000, memory_mb=3000), task("huge", 1, memory_mb=9000)]
    workers = [worker("F", 0, tps=100_000, memory_mb=2000, **LAN), worker("S", 1, tps=25_000, memory_mb=4000, **LAN)]
    assert GaleShapleyScheduler().assign(tasks, workers) == {"S": "big"}


def test_gale_shapley_ties_break_by_seq_then_index():
    # identical tasks and workers: the lowest seq gets the lowest index
    tasks = [task("x", 1), task("y", 0)]
    workers = [worker("b", 1, **LAN), worker("a", 0, **LAN)]
    assert GaleShapleyScheduler().assign(tasks, workers) == {"a": "y", "b": "x"}


# ---- random instances -------------------------------------------------------------------------

# One draw per task or worker (from every combination of a few values, so ties are common):
# drawing field by field made hypothesis's own bookkeeping most of each test's time.
TASK_FIELDS = st.sampled_from(list(itertools.product(
    [1000, 2000, 4000], [0, 1, 2], [100, 200, 300, 400], [0, 64, 1024])))  # tokens, priority, memory, input_kb
WORKER_FIELDS = st.sampled_from(list(itertools.product(
    [0.5, 1.0, 2.0], [100, 200, 300, 400], [0, 1, 2, 3],  # capacity, memory, idle_since
    [None, 500.0, 1000.0, 2000.0], [None, 0.0, 10.0, 300.0], [None, 1.0, 100.0])))  # tps, rtt_ms, down_mbit


@st.composite
def instances(draw, max_tasks=8, max_workers=6):
    """Small instances with many ties (few distinct values) and unique ids, seqs and indexes."""
    task_fields = draw(st.lists(TASK_FIELDS, max_size=max_tasks))
    worker_fields = draw(st.lists(WORKER_FIELDS, max_size=max_workers))
    seqs, indexes = draw(st.permutations(range(len(task_fields)))), draw(st.permutations(range(len(worker_fields))))
    tasks = [TaskView(f"t{i}", seqs[i], tokens, priority, memory, input_kb, 8)
             for i, (tokens, priority, memory, input_kb) in enumerate(task_fields)]
    workers = [WorkerView(f"w{j}", indexes[j], capacity, memory, float(idle), tps, rtt, down)
               for j, (capacity, memory, idle, tps, rtt, down) in enumerate(worker_fields)]
    return tasks, workers


def check_contract(tasks, workers, assignment):
    """The Scheduler protocol's contract, plus maximality."""
    task_by_id = {t.task_id: t for t in tasks}
    worker_by_id = {w.worker_id: w for w in workers}
    assert set(assignment) <= set(worker_by_id)
    assert set(assignment.values()) <= set(task_by_id)
    assert len(set(assignment.values())) == len(assignment)
    for worker_id, task_id in assignment.items():
        assert worker_by_id[worker_id].memory_mb >= task_by_id[task_id].memory_mb
    taken = set(assignment.values())
    for w in workers:
        if w.worker_id not in assignment:
            assert all(t.memory_mb > w.memory_mb for t in tasks if t.task_id not in taken)


# Each random instance goes through every scheduler: drawing instances costs more than scheduling them.
@settings(max_examples=100, deadline=None)
@given(instance=instances())
def test_every_scheduler_keeps_the_contract_and_leaves_no_fitting_pair_idle(instance):
    tasks, workers = instance
    for name, scheduler in SCHEDULERS.items():
        note(f"scheduler {name}")
        check_contract(tasks, workers, scheduler().assign(tasks, workers))


@settings(max_examples=50, deadline=None)
@given(instance=instances(), data=st.data())
def test_every_scheduler_ignores_the_order_of_its_inputs(instance, data):
    tasks, workers = instance
    shuffled_tasks, shuffled_workers = data.draw(st.permutations(tasks)), data.draw(st.permutations(workers))
    for name, scheduler in SCHEDULERS.items():
        assert scheduler().assign(shuffled_tasks, shuffled_workers) == scheduler().assign(tasks, workers), name


def longest_idle(workers):
    return lambda w: (w.idle_since, w.index, w.worker_id)


def fastest(workers):
    speed = {w.worker_id: e.tokens_per_sec for w, e in zip(workers, estimate_workers(workers))}
    return lambda w: (-speed[w.worker_id], w.index, w.worker_id)


GREEDY_ORDERS = {  # scheduler -> (task order, worker order of these workers), as their docstrings state
    "fifo": (lambda t: (t.seq, t.task_id), longest_idle),
    "priority": (lambda t: (-t.priority, t.seq, t.task_id), longest_idle),
    "capability": (lambda t: (-t.tokens, t.seq, t.task_id), fastest),
}


@settings(max_examples=75, deadline=None)
@given(instance=instances())
def test_greedy_schedulers_follow_their_orders(instance):
    for name in GREEDY_ORDERS:
        note(f"scheduler {name}")
        check_greedy_order(name, *instance)


def check_greedy_order(name, tasks, workers):
    """A task earlier in the task order beats a later one to any worker that fits it, and every
    assigned task got the first fitting worker in the worker order that no earlier task took."""
    task_order, worker_order = GREEDY_ORDERS[name][0], GREEDY_ORDERS[name][1](workers)
    assignment = SCHEDULERS[name]().assign(tasks, workers)
    holder = {task_id: worker_id for worker_id, task_id in assignment.items()}
    task_of = {w.worker_id: next((t for t in tasks if t.task_id == assignment.get(w.worker_id)), None)
               for w in workers}
    for t in sorted(tasks, key=task_order):
        free_at_turn = [w for w in sorted(workers, key=worker_order)
                        if task_of[w.worker_id] is None or task_order(task_of[w.worker_id]) >= task_order(t)]
        fitting = [w for w in free_at_turn if w.memory_mb >= t.memory_mb]
        assert holder.get(t.task_id) == (fitting[0].worker_id if fitting else None)


def blocking_pairs(prefs: Preferences, match: dict[int, int]) -> list[tuple[int, int]]:
    """(task, worker) pairs, both acceptable, that prefer each other to their partners in `match`
    ({worker: task}); being unmatched is worse than any acceptable partner."""
    partner_of_task = {t: w for w, t in match.items()}
    pairs = []
    for t, w in itertools.product(range(len(prefs.tasks)), range(len(prefs.workers))):
        if not prefs.acceptable(t, w) or match.get(w) == t:
            continue
        task_wants = t not in partner_of_task or prefs.task_key(t, w) < prefs.task_key(t, partner_of_task[t])
        worker_wants = w not in match or prefs.worker_key(w, t) < prefs.worker_key(w, match[w])
        if task_wants and worker_wants:
            pairs.append((t, w))
    return pairs


def as_positions(tasks, workers, assignment) -> dict[int, int]:
    task_pos = {t.task_id: i for i, t in enumerate(tasks)}
    worker_pos = {w.worker_id: j for j, w in enumerate(workers)}
    return {worker_pos[w]: task_pos[t] for w, t in assignment.items()}


@settings(max_examples=150, deadline=None)
@given(instance=instances(max_tasks=10, max_workers=7))
def test_gale_shapley_leaves_no_blocking_pair(instance):
    tasks, workers = instance
    assignment = GaleShapleyScheduler().assign(tasks, workers)
    if not tasks or not workers:
        assert assignment == {}
        return
    assert blocking_pairs(Preferences(tasks, workers), as_positions(tasks, workers, assignment)) == []


def all_matchings(prefs: Preferences):
    """Every one-to-one matching over acceptable pairs, as {worker: task}."""
    n_tasks, n_workers = len(prefs.tasks), len(prefs.workers)
    for size in range(min(n_tasks, n_workers) + 1):
        for chosen_workers in itertools.combinations(range(n_workers), size):
            for chosen_tasks in itertools.permutations(range(n_tasks), size):
                if all(prefs.acceptable(t, w) for w, t in zip(chosen_workers, chosen_tasks)):
                    yield dict(zip(chosen_workers, chosen_tasks))


@settings(max_examples=50, deadline=None)
@given(instance=instances(max_tasks=4, max_workers=3).filter(lambda i: i[0] and i[1]))
def test_gale_shapley_gives_every_task_its_best_stable_partner(instance):
    # Brute force: among all stable matchings, each task weakly prefers the one returned.
    tasks, workers = instance
    prefs = Preferences(tasks, workers)
    result = as_positions(tasks, workers, GaleShapleyScheduler().assign(tasks, workers))
    unmatched = (math.inf,)

    def rank(match, t):
        partner = {task: w for w, task in match.items()}.get(t)
        return unmatched if partner is None else prefs.task_key(t, partner)

    stable = [m for m in all_matchings(prefs) if not blocking_pairs(prefs, m)]
    assert result in stable
    for other in stable:
        assert all(rank(result, t) <= rank(other, t) for t in range(len(tasks)))
