"""The run's lifecycle: the link gate, degraded links, the PS ending an ML run, stop, timeout, the row."""

from __future__ import annotations

import json

import pytest
from controller_helpers import AUTH, BASIC, Harness, OPERATOR_AUTH, PS_AUTH, SIDECAR_AUTH, make_config

from dist_llm_train import results
from dist_llm_train.controller import health

LINKS = {"profile": "cellular", "backend": "userspace", "seed": 5, "ready": True, "healthy": True, "problems": [],
         "links": {"dlt-worker-1": {"delay_ms": 40.0}},
         "probe": {"rtt_ms": 81.5, "rtt_stdev_ms": 2.0, "loss_pct": 0.5, "mbit": 9.5, "samples": 20}}
PS = {"version": 120, "updates_accepted": 400, "updates_rejected": 7, "mean_staleness": 1.5, "bytes_up": 1000,
      "bytes_down": 2000, "initial_val_loss": 5.5, "final_val_loss": 2.25, "final_train_loss": 2.0,
      "time_to_target_s": None, "window": 4, "done": True, "reason": "max_versions reached"}
ML = {k: v for k, v in BASIC.items() if k != "tasks"} | {"mode": "ml", "ml": {}}


def the_row(tmp_path) -> dict:
    (row_file,) = (tmp_path / "runs").glob("*/row.csv")
    (row,) = results.read_rows(row_file)
    return row


def finish_all(h: Harness, *workers: str) -> None:
    """Each worker completes what it holds until no one gets a task."""
    while tasks := [(w, t) for w in workers if (t := h.next_task(w)["task"]) is not None]:
        for worker, task in tasks:
            assert h.complete(worker, task).status_code == 200


def test_gate_holds_tasks_until_the_sidecar_reports_ready(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()

    waiting = h.next_task(worker)
    not_ready = h.client.post("/links", json={**LINKS, "ready": False}, headers=SIDECAR_AUTH)
    still = h.next_task(worker)
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)
    running = h.next_task(worker)

    assert not_ready.status_code == 200
    assert (waiting["task"], waiting["run_state"]) == (None, "waiting")
    assert (still["task"], still["run_state"]) == (None, "waiting")
    assert running["run_state"] == "running" and running["task"] is not None
    assert h.status()["links"]["profile"] == "cellular"


def test_without_the_gate_the_run_starts_at_once(tmp_path):
    assert Harness(tmp_path).status()["run"]["state"] == "running"


def test_a_waiting_run_resumed_without_the_gate_starts(tmp_path):
    gated = Harness(tmp_path, link_gate=True)
    run_id = gated.status()["run"]["id"]
    gated.ctl.store.close()

    resumed = Harness(tmp_path, link_gate=False).status()["run"]

    assert (resumed["id"], resumed["state"]) == (run_id, "running")


@pytest.mark.parametrize("body", [
    {**LINKS, "backend": "carrier-pigeon"},
    {**LINKS, "ready": "maybe"},
    {k: v for k, v in LINKS.items() if k != "probe"},
    {**LINKS, "probe": {"rtt_ms": 1.0}},
    {**LINKS, "surprise": 1},
], ids=["backend", "ready-type", "probe-missing", "probe-incomplete", "unknown-field"])
def test_bad_links_report_is_422_and_opens_nothing(tmp_path, body):
    h = Harness(tmp_path, link_gate=True)

    answer = h.client.post("/links", json=body, headers=SIDECAR_AUTH)

    assert answer.status_code == 422
    assert h.status()["run"]["state"] == "waiting"
    assert h.status()["links"] is None


@pytest.mark.parametrize("change, where", [
    ({"compute_speed": [1e-300]}, ["body", "compute_speed", 0]),  # made basic workers' compute time overflow
    ({"compute_speed": [1.0, 0.0005]}, ["body", "compute_speed", 1]),
    ({"compute_speed": [101.0]}, ["body", "compute_speed", 0]),
    ({"seed": 2**63}, ["body", "seed"]),
    ({"seed": -1}, ["body", "seed"]),
    ({"probe": {**LINKS["probe"], "rtt_ms": 1.7e308}}, ["body", "probe", "rtt_ms"]),
    ({"probe": {**LINKS["probe"], "rtt_ms": -1.0}}, ["body", "probe", "rtt_ms"]),
    ({"probe": {**LINKS["probe"], "loss_pct": 101.0}}, ["body", "probe", "loss_pct"]),
    ({"probe": {**LINKS["probe"], "mbit": 1e300}}, ["body", "probe", "mbit"]),
], ids=["speed-1e-300", "speed-below-bound", "speed-above-bound", "seed-2**63", "seed-negative", "rtt-huge",
        "rtt-negative", "loss-over-100", "mbit-huge"])
def test_out_of_range_links_report_is_422_naming_the_field(tmp_path, change, where):
    h = Harness(tmp_path, link_gate=True)

    answer = h.client.post("/links", json={**LINKS, **change}, headers=SIDECAR_AUTH)

    assert answer.status_code == 422, answer.text
    assert [e["loc"] for e in answer.json()["detail"]] == [where]
    assert h.status()["links"] is None and h.ctl.speed_factor(0) == 1.0


@pytest.mark.parametrize("speeds", [[0.001], [100.0], [0.001, 1.0, 100.0]])
def test_compute_speed_at_the_presets_bounds_is_accepted(tmp_path, speeds):
    h = Harness(tmp_path, link_gate=True)

    answer = h.client.post("/links", json={**LINKS, "compute_speed": speeds}, headers=SIDECAR_AUTH)

    assert answer.status_code == 200, answer.text
    assert [h.ctl.speed_factor(i) for i in range(len(speeds))] == speeds


def test_links_row_columns_and_unhealthy_links_make_the_run_degraded(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)
    h.client.post("/links", json={**LINKS, "healthy": False, "problems": ["delayer for dlt-worker-1 died"]},
                  headers=SIDECAR_AUTH)
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)  # healthy again: the run stays marked

    finish_all(h, worker)
    row = the_row(tmp_path)

    assert h.status()["run"]["state"] == "finished"
    assert row["status"] == "degraded"
    assert "delayer for dlt-worker-1 died" in row["reason"]
    assert (row["profile"], row["netem_profile"], row["netem_seed"], row["backend"]) == ("cellular", "cellular", "5",
                                                                                     "userspace")
    assert (row["measured_rtt_ms"], row["measured_loss_pct"], row["measured_mbit"]) == ("81.5", "0.5", "9.5")


def test_profile_is_the_preset_the_run_started_under_and_netem_profile_the_latest(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)
    h.client.post("/links", json={**LINKS, "profile": "high_rtt"}, headers=SIDECAR_AUTH)  # make up PROFILE=high_rtt mid-run

    finish_all(h, worker)
    row = the_row(tmp_path)

    assert (row["profile"], row["netem_profile"]) == ("cellular", "high_rtt")


def test_the_presets_compute_speed_reaches_each_worker_by_index(tmp_path):
    h = Harness(tmp_path, config=make_config({"workers.count": 3}), link_gate=True)
    workers = [h.register(name=f"w{i}", index=i) for i in range(3)]
    before = h.client.post(f"/workers/{workers[0]}/heartbeat", json={}, headers=h.auth(workers[0])).json()
    h.client.post("/links", json={**LINKS, "compute_speed": [0.25, 1.0]}, headers=SIDECAR_AUTH)

    beats = [h.client.post(f"/workers/{w}/heartbeat", json={}, headers=h.auth(w)).json() for w in workers]
    asked = h.next_task(workers[2])

    assert before["speed_factor"] == 1.0
    assert [b["speed_factor"] for b in beats] == [0.25, 1.0, 0.25]  # entry i mod 2
    assert asked["speed_factor"] == 0.25


def test_probe_figures_it_could_not_measure_are_empty_in_the_row(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    probe = {**LINKS["probe"], "rtt_ms": None, "rtt_stdev_ms": None, "verdict": {"rtt_ms": False}}

    answer = h.client.post("/links", json={**LINKS, "probe": probe}, headers=SIDECAR_AUTH)
    h.client.post("/run/stop", json={}, headers=OPERATOR_AUTH)
    row = the_row(tmp_path)

    assert answer.status_code == 200
    assert (row["measured_rtt_ms"], row["measured_loss_pct"]) == ("", "0.5")


def test_silent_sidecar_makes_the_run_degraded(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)

    h.clock.advance(10.0)
    health.check(h.ctl, h.clock())
    quiet_enough = h.status()["run"]["degraded"]
    h.clock.advance(6.0)
    health.check(h.ctl, h.clock())

    assert quiet_enough is None
    assert "netem sidecar silent for 16 s" in h.status()["run"]["degraded"]


def test_sidecar_silence_does_not_count_without_the_gate(tmp_path):
    h = Harness(tmp_path)

    h.clock.advance(30.0)
    health.check(h.ctl, h.clock())

    assert h.status()["run"]["degraded"] is None


def test_timeout_ends_the_run_and_writes_its_row(tmp_path):
    h = Harness(tmp_path)
    worker = h.register()
    task = h.next_task(worker)["task"]
    h.complete(worker, task)

    h.clock.advance(101.0)  # timeout_s is 100
    h.heartbeat(worker)
    health.check(h.ctl, h.clock())
    row = the_row(tmp_path)

    assert h.status()["run"]["state"] == "timeout"
    assert h.heartbeat(worker).json()["stop"] is True
    assert (row["status"], row["num_completed_tasks"], row["num_pending_tasks"]) == ("timeout", "1", "2")
    assert float(row["duration_s"]) == pytest.approx(101.0)


def test_waiting_for_the_links_does_not_count_against_timeout_s(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    h.clock.advance(150.0)  # a slow probe: longer than timeout_s (100), shorter than the gate's budget
    health.check(h.ctl, h.clock())
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)

    h.clock.advance(99.0)
    health.check(h.ctl, h.clock())

    assert h.status()["run"]["state"] == "running"


def test_links_never_ready_fail_the_run_after_the_gate_budget(tmp_path):
    h = Harness(tmp_path, link_gate=True)

    h.clock.advance(health.GATE_TIMEOUT_S + 1)
    health.check(h.ctl, h.clock())
    row = the_row(tmp_path)

    assert h.status()["run"]["state"] == "failed"
    assert row["status"] == "failed" and "never reported the links ready" in row["reason"]


def test_stop_ends_the_run_once_and_late_completions_are_refused(tmp_path):
    h = Harness(tmp_path)
    worker = h.register()
    task = h.next_task(worker)["task"]

    first = h.client.post("/run/stop", json={"reason": "operator"}, headers=OPERATOR_AUTH).json()
    second = h.client.post("/run/stop", json={"reason": "again"}, headers=OPERATOR_AUTH).json()
    late = h.complete(worker, task)

    assert first["run"]["state"] == "stopped" and first["run"]["reason"] == "operator"
    assert second["run"]["reason"] == "operator"
    assert late.status_code == 409
    assert the_row(tmp_path)["status"] == "stopped"


def test_ps_report_ends_an_ml_run_with_its_figures(tmp_path):
    h = Harness(tmp_path, config=make_config(base=ML))
    worker = h.register()
    shard = h.next_task(worker)["task"]
    h.client.post("/ps/report", json={**PS, "done": False}, headers=PS_AUTH)
    running = h.status()["run"]["state"]

    h.client.post("/ps/report", json=PS, headers=PS_AUTH)
    row = the_row(tmp_path)

    assert (shard["kind"], shard["shard"], shard["num_shards"]) == ("shard", 0, 2)
    assert running == "running"
    assert h.status()["run"]["state"] == "finished"
    assert (row["status"], row["reason"], row["window"]) == ("finished", "max_versions reached", "4")
    assert (row["updates_accepted"], row["updates_rejected"], row["mean_staleness"]) == ("400", "7", "1.5")
    assert (row["bytes_up"], row["bytes_down"]) == ("1000", "2000")
    assert (row["initial_val_loss"], row["final_val_loss"], row["final_train_loss"]) == ("5.5", "2.25", "2")
    assert row["time_to_target_s"] == ""
    assert (row["protocol"], row["codec"], row["aggregation"]) == ("async", "none", "mean")


@pytest.mark.parametrize("reason", ["failed: diverged (loss is nan)", "error: checkpoint unwritable"])
def test_ps_failure_reason_ends_the_run_as_failed(tmp_path, reason):
    h = Harness(tmp_path, config=make_config(base=ML))

    h.client.post("/ps/report", json={**PS, "reason": reason}, headers=PS_AUTH)

    assert h.status()["run"]["state"] == "failed"
    assert the_row(tmp_path)["reason"] == reason


@pytest.mark.parametrize("field, value", [
    ("version", 2**63), ("updates_accepted", 2**63), ("updates_rejected", 2**63), ("bytes_up", 2**63),
    ("bytes_down", 2**63), ("window", 2**63), ("version", 2**53), ("mean_staleness", 1.7e308),
])
def test_out_of_range_ps_report_is_422_naming_the_field(tmp_path, field, value):
    h = Harness(tmp_path, config=make_config(base=ML))

    answer = h.client.post("/ps/report", json={**PS, field: value}, headers=PS_AUTH)

    assert answer.status_code == 422, answer.text
    assert [e["loc"] for e in answer.json()["detail"]] == [["body", field]]
    assert (h.status()["ps"], h.status()["run"]["state"]) == (None, "running")


def test_ps_report_in_a_basic_run_is_409(tmp_path):
    h = Harness(tmp_path)

    answer = h.client.post("/ps/report", json=PS, headers=PS_AUTH)

    assert answer.status_code == 409
    assert h.status()["run"]["state"] == "running"


def test_basic_row_matches_the_database(tmp_path):
    h = Harness(tmp_path)
    a, b = h.register("a", 0), h.register("b", 1)
    h.client.post(f"/workers/{a}/telemetry", json={"tokens_per_sec": 100.0, "step_time_s": 0.5,
                                                   "compute_utilization": 0.5}, headers=h.auth(a))
    h.client.post(f"/workers/{b}/telemetry", json={"tokens_per_sec": 300.0, "step_time_s": 1.5,
                                                   "compute_utilization": 1.0}, headers=h.auth(b))
    finish_all(h, a, b)

    row = the_row(tmp_path)
    db = h.ctl.store.db
    served, received = db.execute("SELECT bytes_served, bytes_received FROM run").fetchone()
    inputs, outputs = db.execute("SELECT SUM(input_kb) * 1024, SUM(output_kb) * 1024 FROM tasks").fetchone()
    provenance = json.loads((tmp_path / "runs" / row["run_id"] / "run.json").read_text())

    assert (row["config"], row["mode"], row["scheduler"], row["repeat"]) == ("unit", "basic", "fifo", "0")
    assert (row["num_workers"], row["num_completed_tasks"], row["num_pending_tasks"]) == ("2", "3", "0")
    assert (float(row["mean_ewma_tokens_per_sec"]), float(row["mean_ewma_step_time_s"])) == (200.0, 1.0)
    assert float(row["compute_utilization"]) == 0.75
    assert (int(row["bytes_down"]), int(row["bytes_up"])) == (served, received)
    assert (served, received) == (0, outputs)  # nobody downloaded an input in this test
    assert inputs > 0
    assert row["config_hash"] == h.config.digest()
    assert provenance["config"] == json.loads(h.config.model_dump_json())
    assert "run_token" not in provenance["settings"]
    assert provenance["row"]["run_id"] == row["run_id"]
