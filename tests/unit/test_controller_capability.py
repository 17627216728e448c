"""The capability scheduler through the controller's API: telemetry posted by the workers decides who
gets the biggest task, and a worker that reports itself faster takes the big work from then on."""

from controller_helpers import AUTH, Harness, make_config


def telemetry(h: Harness, worker_id: str, tokens_per_sec: float) -> None:
    answer = h.client.post(f"/workers/{worker_id}/telemetry", headers=h.auth(worker_id),
                           json={"tokens_per_sec": tokens_per_sec})
    assert answer.status_code == 200, answer.text


def test_a_worker_whose_telemetry_says_it_became_faster_gets_the_big_task(tmp_path):
    # Prepare: 4 tasks of different sizes; a measures twice b's speed.
    h = Harness(tmp_path, make_config({"controller.scheduler": "capability", "tasks.count": 4,
                                       "tasks.tokens": [1_000, 900_000]}))
    a, b = h.register("a", 0), h.register("b", 1)
    telemetry(h, a, 100_000)
    telemetry(h, b, 50_000)

    # Execute: one cycle (a's request leases both idle workers), both complete; then b reports
    # 300k tokens/s three times (EWMA alpha 0.5: 50k -> 269k) and the next cycle runs.
    first = {a: h.next_task(a)["task"], b: h.next_task(b)["task"]}
    for worker, task in first.items():
        assert h.complete(worker, task).status_code == 200
    for _ in range(3):
        telemetry(h, b, 300_000)
    second = {a: h.next_task(a)["task"], b: h.next_task(b)["task"]}

    # Assert: the bigger task went to the faster worker both times, which is b the second time.
    sizes = sorted(t["tokens"] for t in [*first.values(), *second.values()])
    assert first[a]["tokens"] > first[b]["tokens"]
    assert second[b]["tokens"] > second[a]["tokens"]
    assert len(set(sizes)) == 4  # four distinct tasks, none leased twice
