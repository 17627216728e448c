"""Building blocks of the controller tests: a settable clock, settings, configs and a client."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dist_llm_train.config import RunConfig, apply_overrides, validate
from dist_llm_train.controller.app import create_app
from dist_llm_train.controller.context import Controller
from dist_llm_train.controller.tasks import task_input, task_result
from dist_llm_train.settings import Settings, from_env

TOKEN = "unit-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROLE_TOKENS = {"SIDECAR_TOKEN": "unit-sidecar-credential-0123", "PS_TOKEN": "unit-ps-credential-0123456",
               "OPERATOR_TOKEN": "unit-operator-credential-01"}
# The run token and a role's credential: what the sidecar, the PS and the operator send.
SIDECAR_AUTH = {**AUTH, "X-Role-Token": ROLE_TOKENS["SIDECAR_TOKEN"]}
PS_AUTH = {**AUTH, "X-Role-Token": ROLE_TOKENS["PS_TOKEN"]}
OPERATOR_AUTH = {**AUTH, "X-Role-Token": ROLE_TOKENS["OPERATOR_TOKEN"]}

BASIC = {
    "name": "unit",
    "mode": "basic",
    "seed": 3,
    "timeout_s": 100.0,
    "controller": {"heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 5.0, "ewma_alpha": 0.5, "max_body_kb": 4},
    "workers": {"count": 2},
    "tasks": {"count": 3, "tokens": [1000, 2000], "memory_mb": [100, 200], "input_kb": [1, 2],
              "output_kb": [1, 2]},
}


class Clock:
    """Wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(overrides: dict[str, Any] | None = None, base: dict | None = None) -> RunConfig:
    return validate(RunConfig, apply_overrides(base or BASIC, overrides or {}), "test config")


def make_settings(tmp: Path, link_gate: bool = False) -> Settings:
    return from_env({"RUN_TOKEN": TOKEN, **ROLE_TOKENS, "STATE_DIR": str(tmp / "state"), "RUNS_DIR": str(tmp / "runs"),
                     "LINK_GATE": "1" if link_gate else "0", "NETEM_PROFILE": "lan"})


class Harness:
    """A controller app over a state folder, its TestClient, and worker-side shortcuts."""

    def __init__(self, tmp: Path, config: RunConfig | None = None, clock: Clock | None = None,
                 link_gate: bool = False):
        self.clock = clock or Clock()
        self.config = config or make_config()
        self.app = create_app(self.config, make_settings(tmp, link_gate), clock=self.clock,
                              log=logging.getLogger("controller.test"))
        self.client = TestClient(self.app)
        self.ctl: Controller = self.app.state.ctl
        self.secrets: dict[str, str] = {}  # worker_id -> the secret its registration answered

    def register(self, name: str = "w0", index: int = 0, memory_mb: int = 4096, proof: str | None = None) -> str:
        """Register `name`; `proof`: the worker_id of the live incarnation this call proves to be (its secret)."""
        answer = self.client.post("/workers/register", headers=AUTH if proof is None else self.auth(proof),
                                  json={"name": name, "index": index, "capacity": 1.0, "memory_mb": memory_mb})
        assert answer.status_code == 200, answer.text
        worker_id = answer.json()["worker_id"]
        self.secrets[worker_id] = answer.json()["secret"]
        return worker_id

    def auth(self, worker_id: str) -> dict[str, str]:
        """What worker `worker_id` sends: the run token and its own secret (none for a worker never registered)."""
        return {**AUTH, **({"X-Worker-Secret": self.secrets[worker_id]} if worker_id in self.secrets else {})}

    def heartbeat(self, worker_id: str, telemetry: dict | None = None):
        body = {} if telemetry is None else {"telemetry": telemetry}
        return self.client.post(f"/workers/{worker_id}/heartbeat", headers=self.auth(worker_id), json=body)

    def next_task(self, worker_id: str) -> dict:
        answer = self.client.post(f"/workers/{worker_id}/next-task", headers=self.auth(worker_id), json={})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def result_for(self, task: dict) -> bytes:
        return task_result(task_input(self.config.seed, task["task_id"], task["input_kb"]), task["output_kb"])

    def complete(self, worker_id: str, task: dict, body: bytes | None = None):
        body = self.result_for(task) if body is None else body
        return self.client.post(f"/tasks/{task['task_id']}/complete", headers=self.auth(worker_id), content=body,
                                params={"worker_id": worker_id, "lease": task["lease"]})

    def status(self) -> dict:
        return self.client.get("/status").json()
