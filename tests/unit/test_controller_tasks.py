"""Task generation from the config and seed, task inputs and the result a worker must upload."""

from __future__ import annotations

from controller_helpers import BASIC, make_config

from dist_llm_train.controller.tasks import generate_tasks, task_input, task_result


def test_same_config_and_seed_give_the_same_tasks():
    config = make_config({"tasks.count": 50})

    assert generate_tasks(config) == generate_tasks(make_config({"tasks.count": 50}))


def test_another_seed_gives_other_tasks():
    assert generate_tasks(make_config({"seed": 1})) != generate_tasks(make_config({"seed": 2}))


def test_tasks_respect_the_configured_ranges():
    config = make_config({"tasks.count": 200, "tasks.priorities": 4, "tasks.tokens": [10, 20],
                          "tasks.memory_mb": [5, 6], "tasks.input_kb": [0, 3], "tasks.output_kb": [2, 2]})

    tasks = generate_tasks(config)

    assert [t.seq for t in tasks] == list(range(200))
    assert len({t.task_id for t in tasks}) == 200
    assert {t.kind for t in tasks} == {"synthetic"}
    assert {t.priority for t in tasks} == {0, 1, 2, 3}
    assert {t.tokens for t in tasks} <= set(range(10, 21))
    assert {t.memory_mb for t in tasks} == {5, 6}
    assert {t.input_kb for t in tasks} == {0, 1, 2, 3}
    assert {t.output_kb for t in tasks} == {2}


def test_ml_mode_has_one_shard_task_per_worker():
    config = make_config({"mode": "ml", "ml": {}, "workers.count": 3}, base={k: v for k, v in BASIC.items()
                                                                            if k != "tasks"})

    tasks = generate_tasks(config)

    assert [(t.task_id, t.kind, t.shard) for t in tasks] == [
        ("shard-0", "shard", 0), ("shard-1", "shard", 1), ("shard-2", "shard", 2)]
    assert all(t.memory_mb == 0 for t in tasks)  # any worker may take any shard


def test_input_is_deterministic_per_task_and_sized_in_kib():
    first = task_input(3, "task-00001", 2)

    assert first == task_input(3, "task-00001", 2)
    assert len(first) == 2048
    assert first != task_input(3, "task-00002", 2)
    assert first != task_input(4, "task-00001", 2)
    assert task_input(3, "task-00001", 0) == b""


def test_result_is_shake256_of_the_input_sized_in_kib():
    data = task_input(3, "task-00001", 1)

    result = task_result(data, 2)

    assert len(result) == 2048
    assert result == task_result(data, 2)
    assert result != task_result(data[:-1] + bytes([data[-1] ^ 1]), 2)
    assert task_result(data, 0) == b""
