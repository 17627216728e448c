"""The controller's part of data-plane authentication: workers register their data key, the PS announces its
public key and lists the live workers' keys (dead and replaced ones drop out)."""

import pytest
from controller_helpers import AUTH, BASIC, Harness, PS_AUTH, make_config

from dist_llm_train.dataplane import new_credential

ML = {k: v for k, v in BASIC.items() if k != "tasks"} | {"mode": "ml", "ml": {}}


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path, make_config(base=ML))


def register(h, name, key, index=0, proof=None):
    return h.client.post("/workers/register", headers=AUTH if proof is None else h.auth(proof),
                         json={"name": name, "index": index, "capacity": 1.0, "memory_mb": 1, "data_key": key})


def test_the_ps_lists_exactly_the_live_workers_keys(h):
    a, b, a2 = (new_credential("curve").public for _ in range(3))
    first = register(h, "a", a).json()
    h.secrets[first["worker_id"]] = first["secret"]
    register(h, "b", b, 1)
    assert h.client.get("/ps/workers", headers=PS_AUTH).json() == {"keys": {"a": a, "b": b}}

    register(h, "a", a2, proof=first["worker_id"])  # a restarted: its old incarnation is replaced, its old key no longer admitted
    assert h.client.get("/ps/workers", headers=PS_AUTH).json() == {"keys": {"a": a2, "b": b}}



def test_a_dead_workers_key_drops_out(h):
    key = new_credential("curve").public
    worker = register(h, "a", key).json()["worker_id"]
    h.ctl.store.mark_dead(worker, h.clock())
    assert h.client.get("/ps/workers", headers=PS_AUTH).json() == {"keys": {}}


def test_another_live_workers_key_is_409(h):
    key = new_credential("curve").public
    register(h, "a", key)
    answer = register(h, "thief", key, 1)
    assert answer.status_code == 409 and "another live worker" in answer.text
    assert h.client.get("/ps/workers", headers=PS_AUTH).json() == {"keys": {"a": key}}


@pytest.mark.parametrize("key", ["short", "x" * 41, "bad key with spaces and more than forty chars"[:40].ljust(40)])
def test_a_malformed_data_key_is_422(h, key):
    assert register(h, "a", key).status_code == 422


def test_the_registration_answer_carries_the_ps_key_once_announced(h):
    assert register(h, "a", new_credential("curve").public).json()["ps_key"] is None
    assert h.client.get("/ps/key", headers=AUTH).status_code == 404
    ps = new_credential("curve")
    assert h.client.post("/ps/key", headers=PS_AUTH, json={"mode": "curve", "public_key": ps.public}).status_code == 200
    expected = {"mode": "curve", "public_key": ps.public}
    assert register(h, "b", new_credential("curve").public, 1).json()["ps_key"] == expected
    assert h.client.get("/ps/key", headers=AUTH).json() == expected


@pytest.mark.parametrize("body", [
    {"mode": "plain", "public_key": None},  # not the run's mode
    {"mode": "curve", "public_key": None},  # curve needs the key
    {"mode": "curve", "public_key": "x" * 12},
])
def test_a_wrong_ps_key_is_refused(h, body):
    assert h.client.post("/ps/key", headers=PS_AUTH, json=body).status_code == 422


def test_key_routes_need_the_token(h):
    assert h.client.get("/ps/workers").status_code == 401
    assert h.client.get("/ps/key").status_code == 401
    assert h.client.post("/ps/key", json={"mode": "curve", "public_key": None}).status_code == 401
