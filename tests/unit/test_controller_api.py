"""The HTTP contract: auth, bad input (401, 404, 409, 410, 413, 422), the task flow, telemetry."""

from __future__ import annotations

import json

import pytest
from controller_helpers import AUTH, Harness, OPERATOR_AUTH

from dist_llm_train.results import read_rows


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


PROTECTED = [
    ("POST", "/workers/register", {"name": "w", "index": 0, "capacity": 1.0, "memory_mb": 1}),
    ("POST", "/workers/w.1/heartbeat", {}),
    ("POST", "/workers/w.1/telemetry", {}),
    ("POST", "/workers/w.1/next-task", {}),
    ("GET", "/tasks/task-00000/input?lease=x", None),
    ("POST", "/tasks/task-00000/complete?worker_id=w.1&lease=x", None),
    ("GET", "/config", None),
    ("POST", "/links", {}),
    ("POST", "/ps/report", {}),
    ("POST", "/run/stop", {}),
]


@pytest.mark.parametrize("method, path, body", PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-of-some-length"},
                                     {"Authorization": AUTH["Authorization"].replace("Bearer", "Basic")},
                                     {"Authorization": "Bearer"}],
                         ids=["missing", "wrong", "other-scheme", "empty"])
def test_every_protected_route_refuses_without_the_token(h, method, path, body, headers):
    answer = h.client.request(method, path, json=body, headers=headers)

    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert h.ctl.store.worker("w.1") is None  # nothing happened


@pytest.mark.parametrize("path", ["/healthz", "/status", "/metrics", "/docs", "/openapi.json"])
def test_open_routes_need_no_token(h, path):
    assert h.client.get(path).status_code == 200


def test_openapi_declares_the_bearer_scheme(h):
    spec = h.client.get("/openapi.json").json()

    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "/workers/{worker_id}/next-task" in spec["paths"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/workers/nobody.1/heartbeat"),
    ("POST", "/workers/nobody.1/telemetry"),
    ("POST", "/workers/nobody.1/next-task"),
])
def test_unknown_worker_is_404(h, method, path):
    answer = h.client.request(method, path, json={}, headers=AUTH)

    assert answer.status_code == 404
    assert "nobody.1" in answer.json()["detail"]


def test_completion_from_unknown_worker_or_of_unknown_task_is_404(h):
    worker = h.register()
    task = h.next_task(worker)["task"]

    unknown_worker = h.complete("nobody.1", task)
    unknown_task = h.complete(worker, {**task, "task_id": "task-99999"})
    unknown_input = h.client.get("/tasks/task-99999/input", params={"lease": "x"}, headers=AUTH)

    assert [unknown_worker.status_code, unknown_task.status_code, unknown_input.status_code] == [404, 404, 404]


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[1, 2]",
    b'{"name": "w", "index": 0, "capacity": 1.0}',  # memory_mb missing
    b'{"name": "w", "index": "zero", "capacity": 1.0, "memory_mb": 1}',
    b'{"name": "w", "index": -1, "capacity": 1.0, "memory_mb": 1}',
    b'{"name": "w", "index": 0, "capacity": 0, "memory_mb": 1}',
    b'{"name": "../etc", "index": 0, "capacity": 1.0, "memory_mb": 1}',
    b'{"name": "w", "index": 0, "capacity": 1.0, "memory_mb": 1, "extra": 1}',
    b'{"name": "w", "index": 0, "capacity": NaN, "memory_mb": 1}',
], ids=["malformed", "not-an-object", "missing-field", "wrong-type", "negative", "zero-capacity", "bad-name",
        "unknown-field", "nan"])
def test_bad_registration_is_422_and_registers_nobody(h, body):
    answer = h.client.post("/workers/register", content=body,
                           headers={**AUTH, "Content-Type": "application/json"})

    assert answer.status_code == 422
    assert h.ctl.store.workers() == []


@pytest.mark.parametrize("telemetry", [
    {"tokens_per_sec": -1}, {"compute_utilization": 1.5}, {"epoch": "one"}, {"nonsense": 1},
])
def test_bad_telemetry_is_422_and_changes_nothing(h, telemetry):
    worker = h.register()

    answer = h.client.post(f"/workers/{worker}/telemetry", json=telemetry, headers=h.auth(worker))

    assert answer.status_code == 422
    assert h.ctl.store.telemetry(worker) == {}


TOO_BIG_INT = 2**63  # one past SQLite's INTEGER: a 500 (OverflowError) before the bounds
REGISTRATION = {"name": "w", "index": 0, "capacity": 1.0, "memory_mb": 1}


@pytest.mark.parametrize("field, value", [
    ("index", TOO_BIG_INT), ("index", 2**53), ("memory_mb", TOO_BIG_INT), ("memory_mb", 10**30),
    ("capacity", 1.7e308), ("capacity", 1e13),
])
def test_out_of_range_registration_is_422_naming_the_field(h, field, value):
    answer = h.client.post("/workers/register", json={**REGISTRATION, field: value}, headers=AUTH)

    assert answer.status_code == 422, answer.text
    assert [e["loc"] for e in answer.json()["detail"]] == [["body", field]]
    assert h.ctl.store.workers() == []


@pytest.mark.parametrize("field, value", [
    ("epoch", TOO_BIG_INT), ("batch", TOO_BIG_INT), ("bytes_up", TOO_BIG_INT), ("bytes_down", TOO_BIG_INT),
    ("epoch", 2**53), ("tokens_per_sec", 1.7e308), ("step_time_s", 1.7e308), ("rtt_ms", 1.7e308),
    ("down_mbit", 1.7e308), ("staleness", 1.7e308), ("tokens_per_sec", 1e13),
])
@pytest.mark.parametrize("route", ["telemetry", "heartbeat"])
def test_out_of_range_telemetry_is_422_naming_the_field(h, route, field, value):
    worker = h.register()
    body, where = ({field: value}, ["body", field]) if route == "telemetry" else \
        ({"telemetry": {field: value}}, ["body", "telemetry", field])

    answer = h.client.post(f"/workers/{worker}/{route}", json=body, headers=h.auth(worker))

    assert answer.status_code == 422, answer.text
    assert [e["loc"] for e in answer.json()["detail"]] == [where]
    assert h.ctl.store.telemetry(worker) == {}


def test_figures_at_their_bounds_are_accepted_and_the_row_stays_finite(h, tmp_path):
    workers = [h.register(f"w{i}", i, memory_mb=2**53 - 1) for i in range(2)]
    biggest = {"tokens_per_sec": 1e12, "step_time_s": 1e12, "rtt_ms": 1e12, "down_mbit": 1e12, "epoch": 2**53 - 1,
               "batch": 2**53 - 1, "bytes_up": 2**53 - 1, "bytes_down": 2**53 - 1, "staleness": 2**53 - 1}

    answers = [h.client.post(f"/workers/{w}/telemetry", json=biggest, headers=h.auth(w)) for w in workers]
    stopped = h.client.post("/run/stop", json={}, headers=OPERATOR_AUTH)

    assert [a.status_code for a in answers] == [200, 200]
    assert stopped.status_code == 200
    assert h.status()["workers"][0]["epoch"] == 2**53 - 1
    (row_file,) = (tmp_path / "runs").glob("*/row.csv")
    (row,) = read_rows(row_file)
    assert (float(row["mean_ewma_tokens_per_sec"]), float(row["mean_ewma_step_time_s"])) == (1e12, 1e12)


def test_body_over_the_limit_is_413_by_content_length(h):
    padding = "x" * (4 * 1024 + 1)  # max_body_kb is 4 in the test config

    answer = h.client.post("/workers/register", headers=AUTH,
                           json={"name": "w", "index": 0, "capacity": 1.0, "memory_mb": 1, "pad": padding})

    assert answer.status_code == 413
    assert "max_body_kb" in answer.json()["detail"]
    assert h.ctl.store.workers() == []


def test_streamed_body_over_the_limit_is_413_without_content_length(h):
    worker = h.register()
    task = h.next_task(worker)["task"]

    def chunks():
        for _ in range(5):
            yield b"z" * 1024

    answer = h.client.post(f"/tasks/{task['task_id']}/complete", content=chunks(), headers=AUTH,
                           params={"worker_id": worker, "lease": task["lease"]})

    assert answer.status_code == 413
    assert h.ctl.store.task(task["task_id"])["state"] == "assigned"


def test_task_flow_and_idempotent_completion(h):
    worker = h.register()
    answer = h.next_task(worker)
    task = answer["task"]
    data = h.client.get(f"/tasks/{task['task_id']}/input", params={"lease": task["lease"]}, headers=h.auth(worker))

    first = h.complete(worker, task)
    again = h.complete(worker, task)

    assert answer["run_state"] == "running"
    assert (task["task_id"], task["kind"]) == ("task-00000", "synthetic")
    assert len(data.content) == task["input_kb"] * 1024
    assert (first.json(), again.json()) == ({"status": "completed"}, {"status": "already_completed"})
    assert h.status()["tasks"]["completed"] == 1


def test_next_task_repeats_the_held_task(h):
    worker = h.register()

    first = h.next_task(worker)["task"]
    second = h.next_task(worker)["task"]

    assert first == second


def test_wrong_result_is_422_and_not_counted(h):
    worker = h.register()
    task = h.next_task(worker)["task"]
    good = h.result_for(task)

    short = h.complete(worker, task, body=good[:-1])
    flipped = h.complete(worker, task, body=bytes([good[0] ^ 1]) + good[1:])

    assert (short.status_code, flipped.status_code) == (422, 422)
    assert h.status()["tasks"]["completed"] == 0
    assert h.complete(worker, task).status_code == 200  # the lease is still good


def test_input_needs_the_current_lease(h):
    worker = h.register()
    task = h.next_task(worker)["task"]

    answer = h.client.get(f"/tasks/{task['task_id']}/input", params={"lease": "stale"}, headers=AUTH)

    assert answer.status_code == 409


def test_completion_with_another_workers_lease_is_409(h):
    a, b = h.register("a", 0), h.register("b", 1)
    task_a = h.next_task(a)["task"]

    answer = h.complete(b, task_a)

    assert answer.status_code == 409
    assert h.status()["tasks"]["completed"] == 0


def test_basic_run_finishes_when_every_task_is_done_and_writes_its_row(h, tmp_path):
    worker = h.register()
    while (task := h.next_task(worker)["task"]) is not None:
        assert h.complete(worker, task).status_code == 200

    status = h.status()
    beat = h.heartbeat(worker).json()
    rows = list((tmp_path / "runs").glob("*/row.csv"))

    assert status["run"]["state"] == "finished"
    assert status["run"]["row_written"] is True
    assert status["tasks"]["completed"] == 3
    assert beat == {"run_state": "finished", "alive": True, "stop": True, "speed_factor": 1.0}
    assert len(rows) == 1 and rows[0].parent.name == status["run"]["id"]


def test_telemetry_feeds_the_ewma_shown_in_status(h):
    worker = h.register()

    h.client.post(f"/workers/{worker}/telemetry", json={"tokens_per_sec": 100.0, "step_time_s": 1.0},
                  headers=h.auth(worker))
    h.client.post(f"/workers/{worker}/telemetry", json={"tokens_per_sec": 300.0, "epoch": 2}, headers=h.auth(worker))
    h.heartbeat(worker, {"rtt_ms": 4.0})
    h.heartbeat(worker, {"rtt_ms": 8.0})
    row = h.status()["workers"][0]

    assert row["ewma_tokens_per_sec"] == pytest.approx(200.0)  # alpha 0.5
    assert row["ewma_step_time_s"] == 1.0
    assert row["rtt_ms"] == pytest.approx(6.0)
    assert row["epoch"] == 2


def test_metrics_are_prometheus_text_with_help_and_type(h):
    h.client.post("/workers/register", json={})  # 401
    worker = h.register()
    h.next_task(worker)

    text = h.client.get("/metrics").text

    assert 'dlt_client_errors_total{code="401"} 1' in text
    assert 'dlt_tasks{state="assigned"} 1' in text
    assert 'dlt_workers{status="alive"} 1' in text
    assert 'dlt_run{state="running"} 1' in text
    assert "dlt_schedule_cycle_seconds_count 1" in text
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("gauge", "counter", "summary")
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    samples = {line.split("{")[0].split()[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert all(any(s == n or s.startswith(n + "_") for n in names) for s in samples)


def test_made_up_http_methods_do_not_grow_the_metrics(h):
    before = len(h.client.get("/metrics").text)
    for i in range(300):
        assert h.client.request(f"X{i}Y", "/status").status_code == 405

    text = h.client.get("/metrics").text

    assert 'dlt_requests_total{method="other",route="/status",code="405"} 300' in text
    assert "X1Y" not in text
    assert len(text) < before + 400  # one new sample line, not 300


def test_config_route_gives_the_resolved_config(h):
    answer = h.client.get("/config", headers=AUTH).json()

    assert answer == json.loads(h.config.model_dump_json())
