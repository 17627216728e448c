"""What the sidecar's report puts in the row: the TCP congestion control in force, the emulation's
lateness and unasked-for drops (a run outside tolerance is `degraded`), and a preset that cannot be
applied (the run ends `failed` before it starts)."""

from __future__ import annotations

import json

from controller_helpers import AUTH, Harness, SIDECAR_AUTH, make_config
from test_controller_run import LINKS, ML, finish_all, the_row

from dist_llm_train.controller import runstate

WITHIN = {"late_p99_ms": 0.42, "packets": 12000, "late_over_tolerance": 3, "drops": 0, "within_tolerance": True,
          "problems": [], "containers": {"worker-0": {"late_p99_ms": 0.42}}}


def test_tcp_and_emulation_figures_reach_the_row_and_run_json(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()
    h.client.post("/links", json={**LINKS, "tcp_cc": "cubic", "emulation": WITHIN}, headers=SIDECAR_AUTH)
    finish_all(h, worker)
    row = the_row(tmp_path)
    provenance = json.loads((tmp_path / "runs" / row["run_id"] / "run.json").read_text())

    assert (row["status"], row["tcp_cc"], row["emulation_late_p99_ms"], row["emulation_drops"]) == (
        "finished", "cubic", "0.42", "0")
    assert provenance["links_report"]["emulation"]["containers"]["worker-0"] == {"late_p99_ms": 0.42}


def test_emulation_out_of_tolerance_makes_a_finished_run_degraded_with_the_reason(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()
    late = {**WITHIN, "late_p99_ms": 7.9, "late_over_tolerance": 600, "drops": 12, "within_tolerance": False,
            "problems": ["worker-0: 5.0 % of 12000 packets released later than the tolerance",
                         "worker-0: 12 packets dropped that the preset did not ask for (NFQUEUE)"]}
    h.client.post("/links", json={**LINKS, "tcp_cc": "bbr+cubic", "emulation": late}, headers=SIDECAR_AUTH)
    finish_all(h, worker)
    row = the_row(tmp_path)

    assert (row["status"], row["tcp_cc"], row["emulation_drops"]) == ("degraded", "bbr+cubic", "12")
    assert "emulation out of tolerance: worker-0: 5.0 % of 12000 packets" in row["reason"]
    assert "12 packets dropped that the preset did not ask for" in row["reason"]


def test_a_preset_the_sidecar_cannot_apply_fails_the_waiting_run_with_the_reason(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    h.register()
    why = "cannot set TCP congestion control cubic in dlt-worker-1: Operation not permitted"
    answer = h.client.post("/links", json={**LINKS, "ready": False, "healthy": False, "problems": [why],
                                           "failed": why}, headers=SIDECAR_AUTH)
    row = the_row(tmp_path)

    assert answer.status_code == 200
    assert h.status()["run"]["state"] == "failed"
    assert row["status"] == "failed" and why in row["reason"]


def test_without_a_sidecar_the_row_records_this_namespaces_algorithm(tmp_path, monkeypatch):
    cc_file = tmp_path / "tcp_congestion_control"
    cc_file.write_text("reno\n")
    monkeypatch.setattr(runstate, "TCP_CC_FILE", cc_file)
    h = Harness(tmp_path, link_gate=False)
    finish_all(h, h.register())
    assert the_row(tmp_path)["tcp_cc"] == "reno"


def test_nonsense_emulation_figures_are_422(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    for bad in ({**WITHIN, "drops": -1}, {**WITHIN, "late_p99_ms": float("inf")}, {**WITHIN, "packets": 2**63},
                {k: v for k, v in WITHIN.items() if k != "within_tolerance"}):
        body = json.dumps({**LINKS, "emulation": bad}, allow_nan=True)
        answer = h.client.post("/links", content=body, headers={**SIDECAR_AUTH, "Content-Type": "application/json"})
        assert answer.status_code == 422, bad
    assert h.status()["run"]["state"] == "waiting"


def test_a_run_started_without_a_declared_worker_says_so(tmp_path):
    h = Harness(tmp_path, link_gate=True)
    worker = h.register()
    h.client.post("/links", json={**LINKS, "missing": ["worker-1"]}, headers=SIDECAR_AUTH)
    h.client.post("/links", json={**LINKS, "missing": []}, headers=SIDECAR_AUTH)  # later reports do not change the start
    finish_all(h, worker)
    row = the_row(tmp_path)
    assert row["status"] == "finished"
    assert "started with 1 of 2 workers (no running container after workers.start_wait_s: worker-1)" in row["reason"]


def test_a_hivemind_run_without_a_declared_worker_fails_when_the_sidecar_gives_up_waiting(tmp_path):
    """Every worker of a hivemind run is a peer the swarm waits for: once the sidecar has waited
    workers.start_wait_s for a missing one, the run ends `failed` naming it instead of starting."""
    config = make_config({"ml.trainer": "hivemind", "ml.staleness.protocol": "sync", "workers.count": 2,
                          "workers.start_wait_s": 20}, base=ML)
    h = Harness(tmp_path, config=config, link_gate=True)
    worker = h.register()
    h.client.post("/links", json={**LINKS, "missing": ["worker-1"]}, headers=SIDECAR_AUTH)
    row = the_row(tmp_path)

    assert h.status()["run"]["state"] == "failed" and h.next_task(worker)["task"] is None
    assert (row["status"], row["trainer"]) == ("failed", "hivemind")
    assert row["reason"] == ("ml.trainer hivemind needs every declared worker as a peer; no running container after "
                             "workers.start_wait_s = 20 s: worker-1")


def test_a_hivemind_run_with_every_worker_starts(tmp_path):
    config = make_config({"ml.trainer": "hivemind", "ml.staleness.protocol": "sync", "workers.count": 1}, base=ML)
    h = Harness(tmp_path, config=config, link_gate=True)
    h.register()
    h.client.post("/links", json={**LINKS, "missing": []}, headers=SIDECAR_AUTH)
    assert h.status()["run"]["state"] == "running"
