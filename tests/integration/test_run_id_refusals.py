"""A run id that comes over HTTP becomes a folder under RUNS_DIR (and CHECKPOINT_DIR) only when it
is one: the PS and the sidecar, given a controller on loopback that answers a path as its run id,
refuse it and write nothing, anywhere."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from basic_support import REPO

from dist_llm_train.config import load_run_config
from dist_llm_train.netem.backends.userspace import UserspaceBackend
from dist_llm_train.netem.preset import load_preset
from dist_llm_train.netem.sidecar import Sidecar
from dist_llm_train.settings import from_env

BAD_IDS = ["../escaped", "20261201T101112Z-../../escaped-ab", "/proc/dlt-escaped"]
TOKEN = "run-id-refusal-token-0123456789"


class Controller:
    """Just enough of a controller: /config (a valid ML config) and /status naming `run_id`."""

    def __init__(self, run_id: str):
        config = load_run_config(REPO / "configs" / "ml_ci.yaml").model_dump(mode="json")
        answers = {"/config": config, "/status": {"run": {"id": run_id, "state": "running", "elapsed_s": 0.0}},
                   "/healthz": {"ok": True, "run_state": "running"}}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the name http.server calls
                body = json.dumps(answers.get(self.path.split("?")[0], {})).encode()
                self.send_response(200 if self.path.split("?")[0] in answers else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Controller":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_the_ps_refuses_a_run_id_that_is_a_path(tmp_path, run_id):
    work = tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO / "services"), "RUN_TOKEN": TOKEN, "RUNS_DIR": str(work / "runs"),
           "CHECKPOINT_DIR": str(work / "checkpoints"), "PS_ADDRESS": "tcp://127.0.0.1:0"}
    with Controller(run_id) as controller:
        done = subprocess.run([sys.executable, "-m", "dist_llm_train", "ps"], capture_output=True, text=True,
                              env={**env, "CONTROLLER_URL": controller.url}, timeout=60, cwd=tmp_path)

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"ps: refused: {controller.url}/status: {run_id!r} is not a run id" in done.stderr
    assert files_under(tmp_path) == [] and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("run_id", BAD_IDS)
def test_the_sidecar_writes_no_link_json_for_a_run_id_that_is_a_path(tmp_path, caplog, run_id):
    runs = tmp_path / "work" / "runs"
    settings = from_env({"RUN_TOKEN": TOKEN, "RUNS_DIR": str(runs)})
    with Controller(run_id) as controller, httpx.Client(base_url=controller.url, timeout=5) as http:
        sidecar = Sidecar(load_preset("lan", REPO / "netem"), UserspaceBackend(), settings, "dlt-test", None, http)
        with caplog.at_level(logging.ERROR):
            sidecar.write_link_json({"profile": "lan", "ready": True})

    assert sidecar.run_id is None
    assert f"link.json not written: the controller's {run_id!r} is not a run id" in caplog.text
    assert files_under(tmp_path) == [] and not (tmp_path / "escaped").exists()
