"""/ui, /ui/state, /ui/events and /docs: open, read-only, served from the controller alone, and never
trusting the reports and files they show."""

from __future__ import annotations

import json
import re

import pytest
from controller_helpers import AUTH, BASIC, Harness, OPERATOR_AUTH, PS_AUTH, SIDECAR_AUTH, make_config

from dist_llm_train.controller.live import progress
from dist_llm_train.controller.routers import ui

ML = {k: v for k, v in BASIC.items() if k != "tasks"} | {
    "mode": "ml", "ml": {"budget": {"max_versions": 600, "max_time_s": 90}, "compression": {"codec": "topk"}}}
EMULATION = {"late_p99_ms": 1.5, "packets": 900, "late_over_tolerance": 0, "drops": 0, "within_tolerance": True,
             "problems": [], "containers": {"worker-0": {"late_p99_ms": 1.5, "packets": 900}}}
LINKS = {"profile": "lan", "backend": "userspace", "seed": 1, "ready": True, "healthy": True, "problems": [],
         "links": {"dlt-worker-1": {"role": "worker", "index": 0, "delay_ms": 5.0, "ecn_seen": 3,
                                    "tcp_in_force": {"congestion_control": "cubic"},
                                    "delayer": {"late_ms": {"p50": 0.1, "p99": 1.5}}}},
         "probe": None, "tcp_cc": "cubic", "missing": ["dlt-worker-2"], "emulation": EMULATION}
PS = {"version": 300, "updates_accepted": 310, "updates_rejected": 4, "updates_refused": {"stale": 3, "norm": 1},
      "mean_staleness": 1.5, "bytes_up": 10,
      "bytes_down": 20, "initial_val_loss": 5.5, "final_val_loss": None, "final_train_loss": 2.0,
      "time_to_target_s": None, "window": 1, "done": False, "reason": None}


def attributes(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


def events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]


def test_the_page_loads_only_the_controllers_own_files(tmp_path):
    h = Harness(tmp_path)

    page = h.client.get("/ui")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline: the CSP allows none
    files = [a for a in attributes(page.text) if a.startswith("/ui/static/")]
    assert len(files) == 4 and not [a for a in attributes(page.text) if "://" in a]
    for url in files:
        asset = h.client.get(url)
        assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]


@pytest.mark.parametrize("name", ["ui.html", "..%2Fapp.py", "%2e%2e%2f%2e%2e%2fsettings.py", "vendor", "nope.js"])
def test_only_the_named_files_are_served(tmp_path, name):
    assert Harness(tmp_path).client.get(f"/ui/static/{name}").status_code == 404


def test_an_unversioned_file_url_is_revalidated_not_kept(tmp_path):
    answer = Harness(tmp_path).client.get("/ui/static/chart.js?v=old")
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-cache"


def test_docs_work_without_internet(tmp_path):
    h = Harness(tmp_path)

    page = h.client.get("/docs")

    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = attributes(page.text)
    assert urls and all(u.startswith("/docs/static/") for u in urls), urls
    assert "https://" not in page.text and '"validatorUrl": null' in page.text
    for url in urls:
        assert h.client.get(url).status_code == 200
    assert h.client.get("/redoc").status_code == 404


def test_the_api_description_lists_the_live_data_not_the_page(tmp_path):
    paths = Harness(tmp_path).client.get("/openapi.json").json()["paths"]
    assert "/ui/state" in paths and "/ui/events" in paths
    assert not [p for p in paths if p in ("/ui", "/docs") or "static" in p]


def test_state_has_the_status_the_links_and_the_progress(tmp_path):
    h = Harness(tmp_path)
    worker = h.register("w0")
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)
    h.next_task(worker)

    state = h.client.get("/ui/state").json()

    assert state["status"]["workers"][0]["name"] == "w0" and state["status"]["run"]["state"] == "running"
    link = state["status"]["links"]["containers"]["dlt-worker-1"]
    assert link["ecn_seen"] == 3 and link["tcp_in_force"] == {"congestion_control": "cubic"}  # unknown fields pass
    report = state["links_report"]
    assert report["tcp_cc"] == "cubic" and report["missing"] == ["dlt-worker-2"] and report["emulation"] == EMULATION
    assert "links" not in report and "preset" not in report and "links" not in state  # per container once, in status
    assert state["progress"]["unit"] == "tasks" and state["progress"]["total"] == 3
    assert state["curve"] == {"rows": [], "last_seq": 0, "skipped": 0} and state["codec"] is None


def test_nan_in_a_report_becomes_null_not_an_error(tmp_path):
    h = Harness(tmp_path)
    body = json.dumps(LINKS).replace('"delay_ms": 5.0', '"delay_ms": NaN')
    posted = h.client.post("/links", content=body, headers={**SIDECAR_AUTH, "Content-Type": "application/json"})

    state = h.client.get("/ui/state")

    assert posted.status_code == 200
    assert state.status_code == 200 and state.json()["status"]["links"]["containers"]["dlt-worker-1"]["delay_ms"] is None


def test_an_ml_run_shows_its_curve_incrementally_and_its_codec(tmp_path):
    h = Harness(tmp_path, config=make_config(base=ML))
    h.clock.advance(30)
    h.client.post("/ps/report", json=PS, headers=PS_AUTH)
    run_id = h.status()["run"]["id"]
    curve = tmp_path / "runs" / run_id / "curve.csv"
    curve.parent.mkdir(parents=True)
    curve.write_text("t_s,version,train_loss,val_loss,updates_accepted,updates_rejected,mean_staleness,bytes_up,"
                     "bytes_down\n0,0,,5.5,0,0,0,0,0\n1.5,1,5.4,,1,0,0,100,200\n")

    first = h.client.get("/ui/state").json()
    with open(curve, "a") as fh:
        fh.write("3.0,2,5.3,,2,0,0,200,400\n")
    ui_feed = h.app.state.live
    ui_feed.cached = None  # the next snapshot reads the file again at once, not after MIN_PERIOD_S
    later = h.client.get(f"/ui/state?since={first['curve']['last_seq']}").json()

    assert [r["version"] for r in first["curve"]["rows"]] == [0, 1] and first["curve"]["rows"][0]["val_loss"] == 5.5
    assert [r["version"] for r in later["curve"]["rows"]] == [2]
    assert first["codec"] == {"codec": "topk", "ratio": 0.01, "downlink": "same"}
    assert first["status"]["ps"]["updates_refused"] == {"stale": 3, "norm": 1}
    assert first["progress"] == {"unit": "versions", "done": 300, "total": 600, "fraction": 0.5, "eta_s": 30.0,
                                 "bound": "rate so far (versions)", "note": None}


def test_the_event_stream_of_an_ended_run_sends_it_once_and_ends(tmp_path):
    h = Harness(tmp_path)
    h.client.post("/run/stop", json={"reason": "enough"}, headers=OPERATOR_AUTH)

    with h.client.stream("GET", "/ui/events") as answer:
        text = "".join(answer.iter_text())

    assert answer.headers["content-type"].startswith("text/event-stream")
    assert text.startswith("retry: ")
    (update,) = events(text)
    assert update["ended"] is True and update["status"]["run"]["state"] == "stopped"
    assert h.app.state.live.streams == 0


def test_a_reconnecting_stream_resumes_after_its_last_event_id(tmp_path):
    h = Harness(tmp_path, config=make_config(base=ML))
    run_id = h.status()["run"]["id"]
    (tmp_path / "runs" / run_id).mkdir(parents=True)
    (tmp_path / "runs" / run_id / "curve.csv").write_text(
        "t_s,version\n" + "".join(f"{v},{v}\n" for v in range(5)))
    h.client.post("/run/stop", json={}, headers=OPERATOR_AUTH)

    with h.client.stream("GET", "/ui/events", headers={"Last-Event-ID": "3"}) as answer:
        (update,) = events("".join(answer.iter_text()))

    assert [r["seq"] for r in update["curve"]["rows"]] == [4, 5]


def test_too_many_streams_are_refused_so_the_page_polls(tmp_path):
    h = Harness(tmp_path)
    h.app.state.live.streams = ui.MAX_STREAMS

    answer = h.client.get("/ui/events")

    assert answer.status_code == 503 and "poll /ui/state" in answer.json()["detail"]


def status(state="running", elapsed=10.0, completed=5, total=20, version=None):
    return {"run": {"state": state, "elapsed_s": elapsed}, "tasks": {"completed": completed, "total": total},
            "ps": None if version is None else {"version": version}}


@pytest.mark.parametrize("config, st, eta, bound", [
    (BASIC, status(), 30.0, "rate so far (tasks)"),                           # 15 left at 0.5/s
    ({**BASIC, "timeout_s": 20.0}, status(completed=1), 10.0, "timeout_s"),   # the timeout comes first
    (BASIC, status(completed=0), 90.0, "timeout_s"),                          # no rate yet: only the timeout
    (BASIC, status(state="waiting", elapsed=None), None, None),
    (BASIC, status(state="finished", completed=20), None, None),
    (ML, status(elapsed=30.0, version=300), 30.0, "rate so far (versions)"),
    (ML, status(elapsed=80.0, version=300), 10.0, "budget.max_time_s"),
])
def test_progress_estimates_the_time_left_by_the_soonest_end(config, st, eta, bound):
    out = progress(make_config(base=config), st)
    assert (out["eta_s"], out["bound"]) == (eta, bound)


def test_a_stream_is_counted_but_not_timed_as_request_handling(tmp_path):
    h = Harness(tmp_path)
    h.client.post("/run/stop", json={}, headers=OPERATOR_AUTH)
    timed = h.ctl.metrics.request_seconds.count

    with h.client.stream("GET", "/ui/events") as answer:
        answer.read()
    h.client.get("/ui/state")

    assert h.ctl.metrics.requests[("GET", "/ui/events", 200)] == 1
    assert h.ctl.metrics.request_seconds.count == timed + 1  # /ui/state only


def test_a_token_budget_counts_progress_in_tokens():
    config = make_config(base={**ML, "ml": {**ML["ml"], "budget": {**ML["ml"]["budget"], "max_tokens": 4000}}})
    st = {"run": {"state": "running", "elapsed_s": 20.0}, "tasks": {"completed": 0, "total": 0},
          "ps": {"version": 5, "tokens_trained": 1000}}

    out = progress(config, st)

    assert (out["unit"], out["done"], out["total"], out["fraction"]) == ("tokens", 1000, 4000, 0.25)
    assert (out["eta_s"], out["bound"]) == (60.0, "rate so far (tokens)")  # 3000 left at 50/s
