"""Refusals seen from outside, with real processes: a bad config or a missing role credential stops the
controller before it serves, a worker with the wrong token exits 3, a worker that cannot learn its index exits 2, and a
chunked upload over the size cap is cut off with 413 by the real server."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys

from basic_support import REPO, ci_run

ENV = {**os.environ, "PYTHONPATH": str(REPO / "services"), "SIDECAR_TOKEN": "s" * 24, "PS_TOKEN": "p" * 24,
       "OPERATOR_TOKEN": "o" * 24}


def dlt(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dist_llm_train", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_controller_refuses_a_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nmode: basic\ncontroller: {scheduler: round-robin}\n")

    done = dlt("controller", "--port", "0", env={**ENV, "RUN_TOKEN": "a" * 32, "CONFIG": str(config),
                                                  "STATE_DIR": str(tmp_path / "state")})

    assert done.returncode == 2
    assert f"{config}: controller.scheduler:" in done.stderr
    assert not (tmp_path / "state").exists()


def test_controller_refuses_a_weak_token_with_exit_2(tmp_path):
    done = dlt("controller", env={**ENV, "RUN_TOKEN": "changeme"})

    assert done.returncode == 2
    assert "RUN_TOKEN" in done.stderr


def test_controller_without_a_role_credential_exits_2_naming_it(tmp_path):
    done = dlt("controller", "--port", "0", env={**ENV, "RUN_TOKEN": "a" * 32, "PS_TOKEN": "",
                                                  "STATE_DIR": str(tmp_path / "state")})

    assert done.returncode == 2
    assert "PS_TOKEN: not set" in done.stderr
    assert not (tmp_path / "state").exists()


def test_worker_with_the_wrong_token_exits_3_and_says_why(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start_controller()
        done = dlt("worker", "--index", "0", env={**run.env, "RUN_TOKEN": "b" * 32})

    assert done.returncode == 3
    assert "RUN_TOKEN refused by the controller" in done.stdout + done.stderr


def test_worker_without_an_index_outside_docker_exits_2(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "WORKER_INDEX"}

    done = dlt("worker", env={**env, "RUN_TOKEN": "c" * 32, "CONTROLLER_URL": "http://127.0.0.1:9"}, timeout=30)

    assert done.returncode == 2
    assert "--index" in done.stderr


def test_chunked_upload_over_the_cap_is_refused_by_the_real_server(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start_controller()
        host, port = run.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        chunks = (b"x" * 65536 for _ in range(8))  # 512 KiB, max_body_kb is 256
        connection.request("POST", "/tasks/task-00000/complete?worker_id=w.1&lease=l", body=chunks,
                           headers={"Authorization": f"Bearer {run.env['RUN_TOKEN']}"}, encode_chunked=True)
        answer = connection.getresponse()
        body = answer.read().decode()
        connection.close()
        alive = run.get("/healthz")

    assert answer.status == 413
    assert "max_body_kb" in body
    assert alive is not None and alive["ok"] is True


def test_demo_data_is_refused_before_anything_starts(tmp_path):
    missing = tmp_path / "no-such.txt"

    ml = dlt("demo-ml", "--config", str(REPO / "configs/ml_ci.yaml"), "--data", str(missing),
             "--runs-dir", str(tmp_path / "runs"), env=ENV)
    basic = dlt("demo-basic", "--config", str(REPO / "configs/basic_ci.yaml"), "--data", str(missing),
                "--runs-dir", str(tmp_path / "runs"), env=ENV)

    assert ml.returncode == 2 and f"data.path: {missing}: no such file" in ml.stderr
    assert basic.returncode == 2 and "--data: only demo-ml trains on text" in basic.stderr
    assert not (tmp_path / "runs").exists()


def test_a_worker_refuses_a_task_it_could_never_compute_and_stays_up(tmp_path, process_log):
    """A task whose compute time (tokens / rate) is more than a day: at speed 1.5e-300 it used to
    overflow the worker's wait (OverflowError, a traceback, exit 1); the config now refuses such a
    speed, but slowest speed x 1 token/s still gives 0.001 tokens/s. The task is refused, the worker
    holds it without computing, and the run ends `timeout` with it pending; the worker leaves cleanly."""
    overrides = {"workers.count": 1, "workers.speed": [0.001], "workers.base_tokens_per_sec": 1.0,
                 "tasks.count": 2, "timeout_s": 4.0}
    with ci_run(tmp_path, process_log, overrides) as run:
        run.start()
        final = run.wait_end(timeout_s=60)
        exits = run.wait_workers_exit(timeout_s=20)
    process_log.flush()
    log = (tmp_path / "processes.log").read_text()

    assert final["run"]["state"] == "timeout"
    assert (final["tasks"]["completed"], final["tasks"]["assigned"]) == (0, 1)
    assert exits == {0: 0}
    assert "task task-00000 refused: " in log and "would compute for" in log
    assert "(workers.base_tokens_per_sec 1 x speed 0.001); holding it" in log
    assert "Traceback" not in log
