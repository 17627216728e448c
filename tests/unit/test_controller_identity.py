"""One identity per worker, and a credential per role: who may call what (controller/deps.py).

Every worker route refuses a caller that is not the worker it acts for (403), a name is taken over only by its
live incarnation's secret or after that one was declared dead (409 otherwise), the role routes open only to their
own credential, and no secret reaches the log.
"""

from __future__ import annotations

import logging

import pytest
from controller_helpers import AUTH, BASIC, OPERATOR_AUTH, PS_AUTH, ROLE_TOKENS, SIDECAR_AUTH, Harness, make_config

from dist_llm_train.controller import health

LINKS = {"profile": "lan", "backend": "userspace", "seed": 5, "ready": True, "healthy": True, "problems": [],
         "links": {}, "probe": None}
PS_REPORT = {"version": 1, "updates_accepted": 1, "updates_rejected": 0, "mean_staleness": 0.0, "bytes_up": 1,
             "bytes_down": 1, "initial_val_loss": 5.0, "final_val_loss": None, "final_train_loss": None,
             "time_to_target_s": None, "window": 2, "done": False, "reason": None}
ML = {k: v for k, v in BASIC.items() if k != "tasks"} | {"mode": "ml", "ml": {}}


@pytest.fixture
def two(tmp_path):
    """A running basic run with workers A (holding a task) and B."""
    h = Harness(tmp_path)
    a, b = h.register("a", 0), h.register("b", 1)
    return h, a, b, h.next_task(a)["task"]


# Every route a worker calls about itself: (what it is, how to call it as `caller` acting for worker `target`
# holding `task`). The same table runs three ways: with the target's own secret (allowed), with another live
# worker's (403), without any (403).
WORKER_ROUTES = {
    "heartbeat": lambda h, target, task, headers: h.client.post(f"/workers/{target}/heartbeat", json={},
                                                                headers=headers),
    "telemetry": lambda h, target, task, headers: h.client.post(f"/workers/{target}/telemetry",
                                                                json={"tokens_per_sec": 5.0}, headers=headers),
    "next-task": lambda h, target, task, headers: h.client.post(f"/workers/{target}/next-task", json={},
                                                                headers=headers),
    "task input": lambda h, target, task, headers: h.client.get(f"/tasks/{task['task_id']}/input",
                                                                params={"lease": task["lease"]}, headers=headers),
    "completion": lambda h, target, task, headers: h.client.post(
        f"/tasks/{task['task_id']}/complete", content=h.result_for(task),
        params={"worker_id": target, "lease": task["lease"]}, headers=headers),
}


@pytest.mark.parametrize("route", WORKER_ROUTES)
def test_acting_for_another_worker_is_403_on_every_worker_route(two, route):
    h, a, b, task = two
    before = h.status()

    answer = WORKER_ROUTES[route](h, a, task, h.auth(b))

    assert answer.status_code == 403, answer.text
    assert answer.json()["detail"] == f"X-Worker-Secret is not {a}'s: a worker may act only for itself"
    after = h.status()
    assert after["tasks"] == before["tasks"]  # nothing completed, nothing requeued
    assert after["workers"] == before["workers"]  # no telemetry recorded for A


@pytest.mark.parametrize("route", WORKER_ROUTES)
def test_a_worker_route_without_a_secret_is_403(two, route):
    h, a, _, task = two

    answer = WORKER_ROUTES[route](h, a, task, AUTH)

    assert answer.status_code == 403
    assert answer.json()["detail"].startswith("missing X-Worker-Secret")


@pytest.mark.parametrize("route", WORKER_ROUTES)
def test_every_worker_route_opens_to_the_worker_itself(two, route):
    h, a, _, task = two

    assert WORKER_ROUTES[route](h, a, task, h.auth(a)).status_code == 200


@pytest.mark.parametrize("route", WORKER_ROUTES)
def test_the_secret_does_not_replace_the_run_token(two, route):
    h, a, _, task = two

    answer = WORKER_ROUTES[route](h, a, task, {"X-Worker-Secret": h.secrets[a]})

    assert answer.status_code == 401


def test_a_secret_is_one_incarnations_only(tmp_path):
    h = Harness(tmp_path)
    first = h.register("w")
    second = h.register("w", proof=first)

    old_secret_on_new_id = h.client.post(f"/workers/{second}/heartbeat", json={},
                                         headers={**AUTH, "X-Worker-Secret": h.secrets[first]})

    assert old_secret_on_new_id.status_code == 403
    assert h.secrets[first] != h.secrets[second]
    assert h.heartbeat(second).status_code == 200


def test_a_live_name_is_not_taken_over_without_its_secret(two):
    h, a, b, task = two

    plain = h.client.post("/workers/register", headers=AUTH, json={"name": "a", "index": 0, "capacity": 1.0,
                                                                   "memory_mb": 1})
    with_b_secret = h.client.post("/workers/register", headers=h.auth(b), json={"name": "a", "index": 0,
                                                                                "capacity": 1.0, "memory_mb": 1})

    for answer in (plain, with_b_secret):
        assert answer.status_code == 409
        detail = answer.json()["detail"]
        assert detail.startswith(f"name 'a' is held by the live incarnation {a}")
        assert "heartbeat_timeout_s = 5 s" in detail
    assert h.ctl.store.worker(a)["status"] == "alive"
    assert h.ctl.store.task(task["task_id"])["state"] == "assigned" and h.heartbeat(a).status_code == 200
    assert [w["worker_id"] for w in h.status()["workers"]] == [a, b]


def test_the_old_secret_takes_a_live_name_over_at_once(two):
    h, a, _, task = two

    new = h.register("a", proof=a)

    assert h.ctl.store.worker(a)["status"] == "replaced"
    assert h.ctl.store.task(task["task_id"])["state"] == "pending"
    assert h.heartbeat(a).status_code == 410
    assert h.next_task(new)["task"]["task_id"] == task["task_id"]


def test_a_name_is_free_once_its_incarnation_is_declared_dead(two):
    h, a, b, task = two
    refused = h.client.post("/workers/register", headers=AUTH, json={"name": "a", "index": 0, "capacity": 1.0,
                                                                      "memory_mb": 1})
    h.clock.advance(6.0)  # past heartbeat_timeout_s (5 s): a restarted container's old incarnation falls silent
    h.heartbeat(b)
    health.check(h.ctl, h.clock())

    new = h.register("a")

    assert refused.status_code == 409
    assert h.ctl.store.worker(a)["status"] == "dead" and h.ctl.store.worker(b)["status"] == "alive"
    assert new == "a.2"
    assert h.ctl.store.task(task["task_id"])["requeues"] == 1  # requeued once, by the death


# The role routes, each with the credential that opens it and a valid body.
ROLE_ROUTES = {
    "POST /links": ("SIDECAR_TOKEN", "POST", "/links", LINKS),
    "POST /ps/report": ("PS_TOKEN", "POST", "/ps/report", PS_REPORT),
    "POST /ps/key": ("PS_TOKEN", "POST", "/ps/key", {"mode": "plain", "public_key": None}),
    "GET /ps/workers": ("PS_TOKEN", "GET", "/ps/workers", None),
    "POST /run/stop": ("OPERATOR_TOKEN", "POST", "/run/stop", {"reason": "test"}),
}


@pytest.fixture
def ml(tmp_path):
    h = Harness(tmp_path, make_config({"ml.data_plane_auth": "plain"}, base=ML), link_gate=True)
    worker = h.register("w", 0)
    return h, worker


@pytest.mark.parametrize("route", ROLE_ROUTES)
@pytest.mark.parametrize("who", ["a worker", "the run token alone", "another role", "a wrong credential"])
def test_role_routes_refuse_anything_but_their_own_credential(ml, route, who):
    h, worker = ml
    credential, method, path, body = ROLE_ROUTES[route]
    other = next(value for name, value in ROLE_TOKENS.items() if name != credential)
    headers = {"a worker": h.auth(worker), "the run token alone": AUTH,
               "another role": {**AUTH, "X-Role-Token": other},
               "a wrong credential": {**AUTH, "X-Role-Token": ROLE_TOKENS[credential][:-1] + "x"}}[who]
    before = h.status()

    answer = h.client.request(method, path, json=body, headers=headers)

    assert answer.status_code == 403, answer.text
    assert answer.json()["detail"].startswith("X-Role-Token: not the ")
    assert credential in answer.json()["detail"]
    after = h.status()
    assert (after["run"], after["links"], after["ps"]) == (before["run"], before["links"], before["ps"])


@pytest.mark.parametrize("route", ROLE_ROUTES)
def test_role_routes_open_to_their_own_credential(ml, route):
    h, _ = ml
    credential, method, path, body = ROLE_ROUTES[route]

    answer = h.client.request(method, path, json=body, headers={**AUTH, "X-Role-Token": ROLE_TOKENS[credential]})

    assert answer.status_code == 200, answer.text


def test_a_role_credential_does_not_replace_the_run_token(ml):
    h, _ = ml

    answer = h.client.post("/run/stop", json={}, headers={"X-Role-Token": ROLE_TOKENS["OPERATOR_TOKEN"]})

    assert answer.status_code == 401


def test_a_role_credential_is_no_worker_identity(two):
    h, a, _, _ = two

    answer = h.client.post(f"/workers/{a}/heartbeat", json={}, headers={**OPERATOR_AUTH, **PS_AUTH, **SIDECAR_AUTH})

    assert answer.status_code == 403


def test_in_a_hivemind_run_worker_0_reports_as_the_ps_and_no_other_worker_does(tmp_path):
    h = Harness(tmp_path, make_config({"ml.trainer": "hivemind", "ml.staleness.protocol": "sync"}, base=ML))
    zero, one = h.register("w0", 0), h.register("w1", 1)

    by_one = h.client.post("/ps/report", json=PS_REPORT, headers=h.auth(one))
    by_zero = h.client.post("/ps/report", json=PS_REPORT, headers=h.auth(zero))

    assert by_one.status_code == 403
    assert by_zero.status_code == 200 and h.status()["ps"]["version"] == 1


def test_no_secret_or_credential_reaches_the_log(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    h = Harness(tmp_path)
    a, b = h.register("a", 0), h.register("b", 1)
    task = h.next_task(a)["task"]
    h.heartbeat(a)
    WORKER_ROUTES["completion"](h, a, task, h.auth(b))  # refused: logged without either secret
    h.client.post("/workers/register", headers=h.auth(b), json={"name": "a", "index": 0, "capacity": 1.0,
                                                                "memory_mb": 1})
    h.register("a", proof=a)
    h.client.post("/links", json=LINKS, headers=SIDECAR_AUTH)
    h.client.post("/run/stop", json={}, headers=OPERATOR_AUTH)

    logged = caplog.text + repr(h.status()) + (tmp_path / "runs").joinpath(
        h.status()["run"]["id"], "run.json").read_text()
    assert "registration as a refused" in logged  # the refusals were logged ...
    for secret in [*h.secrets.values(), *ROLE_TOKENS.values()]:
        assert secret not in logged  # ... and nothing of what proves an identity
    assert "secret_hash" not in logged and h.ctl.store.secret_hash(a) not in logged
