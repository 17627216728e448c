"""Identities through the real stack, as a user starts it (`make up`): `.env` holds the run token and one
credential per role, each service gets only its own, a worker container's credentials open no role route and
no other worker's route, and a restarted worker container takes its name back once its old incarnation is
declared dead, while the run goes on to finish every task once."""

from __future__ import annotations

import json
import subprocess

ROLE_CREDENTIALS = ("SIDECAR_TOKEN", "PS_TOKEN", "OPERATOR_TOKEN")
DEMO_TASKS = 40  # tasks.count of configs/basic_demo.yaml

# Runs in a container of the stack: one request to the controller with that container's own run token, and
# `role` (the name of an environment variable of that container) as X-Role-Token; prints the status code.
CALL = """
import json, os, sys, urllib.error, urllib.request
method, path, body, role = json.loads(sys.argv[1])
headers = {"Authorization": "Bearer " + os.environ["RUN_TOKEN"], "Content-Type": "application/json"}
if role:
    headers["X-Role-Token"] = os.environ[role]
request = urllib.request.Request("http://controller:8000" + path, data=json.dumps(body).encode(), headers=headers,
                                 method=method)
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def call(container: str, method: str, path: str, body: dict, role: str | None = None) -> int:
    done = subprocess.run(["docker", "exec", container, "python3", "-c", CALL, json.dumps([method, path, body, role])],
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.strip())


def environment(container: str) -> dict[str, str]:
    done = subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", container], capture_output=True,
                          text=True, timeout=30, check=True)
    return dict(entry.split("=", 1) for entry in json.loads(done.stdout))


def test_each_role_holds_its_own_credential_and_a_restarted_worker_takes_its_name_back(make_stack):
    stack = make_stack(config="configs/basic_demo.yaml", workers=2)
    stack.make("up")
    running = stack.wait_for(lambda s: s["run"]["state"] == "running", 120, "the run to start")
    written = dict(line.split("=", 1) for line in stack.env_file.read_text().splitlines())
    [controller], [netem] = stack.containers("controller"), stack.containers("netem")
    first, second = f"{stack.project}-worker-1", f"{stack.project}-worker-2"
    ids = {w["name"]: w["worker_id"] for w in running["workers"] if w["status"] == "alive"}

    # .env: the run token and every role's credential, distinct, private; each service gets only its own
    assert set(written) == {"RUN_TOKEN", *ROLE_CREDENTIALS} and len(set(written.values())) == 4
    assert stack.env_file.stat().st_mode & 0o777 == 0o600
    held = {name: {k for k in ROLE_CREDENTIALS if k in environment(c)}
            for name, c in (("controller", controller), ("netem", netem), ("worker", first))}
    assert held == {"controller": set(ROLE_CREDENTIALS), "netem": {"SIDECAR_TOKEN"}, "worker": set()}

    # a worker container's credentials open no role route, and no route of another worker
    refused = {path: call(first, "POST", path, body, role="RUN_TOKEN") for path, body in (
        ("/run/stop", {"reason": "a worker"}), ("/links", {}), ("/ps/report", {}))}
    refused["heartbeat of the other worker"] = call(first, "POST", f"/workers/{ids[second]}/heartbeat", {})
    assert refused == dict.fromkeys(refused, 403), refused
    assert stack.status()["run"]["state"] == "running"

    # a restarted container lost its secret: it registers once the old incarnation is declared dead
    subprocess.run(["docker", "restart", "-t", "0", first], check=True, capture_output=True, timeout=60)
    back = stack.wait_for(lambda s: any(w["worker_id"] == f"{first}.2" and w["status"] == "alive"
                                        for w in s["workers"]), 60, "the restarted worker's new incarnation")
    assert {w["worker_id"]: w["status"] for w in back["workers"] if w["name"] == first} == {
        f"{first}.1": "dead", f"{first}.2": "alive"}
    assert "registration refused" in stack.logs("worker")

    status = stack.wait_end(timeout=240)
    assert status["run"]["state"] == "finished", status["run"]
    assert status["tasks"]["completed"] == DEMO_TASKS and status["tasks"]["requeues"] <= 1
    assert call(controller, "POST", "/run/stop", {"reason": "the operator"}, role="OPERATOR_TOKEN") == 200
    for credential in written.values():  # nothing of them in the logs or the run's files
        assert credential not in stack.logs()
        for path in stack.runs_dir.rglob("*"):
            assert not path.is_file() or credential not in path.read_text(errors="replace")
    stack.make("down")
