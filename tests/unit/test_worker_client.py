"""The worker's control-plane client against a real HTTP server on loopback: it waits out a
server that is not up yet, maps refusals to errors, and gives up when told to."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dist_llm_train.worker.client import (Conflict, ControlClient, ControlError, Forbidden, Gone, TokenRefused,
                                         Unreachable)

LOG = logging.getLogger("test-client")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = int(self.path.strip("/"))
        payload = {"detail": f"answered {code}", "echo": json.loads(body or b"{}"),
                   "auth": self.headers.get("Authorization"), "secret": self.headers.get("X-Worker-Secret"),
                   "role": self.headers.get("X-Role-Token")}
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_success_sends_the_token_and_the_body(server):
    client = ControlClient(server, "secret-token-of-length", LOG)

    answer = client.post_json("/200", {"a": 1})

    assert answer["echo"] == {"a": 1}
    assert answer["auth"] == "Bearer secret-token-of-length"
    assert (answer["secret"], answer["role"]) == (None, None)


def test_a_worker_sends_its_latest_secret_and_a_role_its_credential(server):
    worker = ControlClient(server, "t" * 20, LOG)
    ps = ControlClient(server, "t" * 20, LOG, role_token="ps-credential-0123456789")

    worker.identify("first-secret")
    worker.identify("second-secret")  # registered again

    assert (worker.post_json("/200")["secret"], worker.post_json("/200")["role"]) == ("second-secret", None)
    assert (ps.post_json("/200")["secret"], ps.post_json("/200")["role"]) == (None, "ps-credential-0123456789")


@pytest.mark.parametrize("code, error", [(401, TokenRefused), (403, Forbidden), (409, Conflict), (410, Gone),
                                         (422, ControlError)])
def test_refusals_raise_their_error_with_the_detail(server, code, error):
    client = ControlClient(server, "t" * 20, LOG)

    with pytest.raises(error) as raised:
        client.post_json(f"/{code}")

    assert raised.value.status == code
    assert raised.value.detail == f"answered {code}"


def test_a_server_that_comes_up_late_is_waited_for():
    port = free_port()
    httpd_box = []

    def start_later():
        time.sleep(0.4)
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        httpd_box.append(httpd)
        httpd.serve_forever(poll_interval=0.05)

    threading.Thread(target=start_later, daemon=True).start()
    client = ControlClient(f"http://127.0.0.1:{port}", "t" * 20, LOG, give_up_after_s=10)

    started = time.monotonic()
    answer = client.post_json("/200", {"late": True})
    waited = time.monotonic() - started
    httpd_box[0].shutdown()
    httpd_box[0].server_close()

    assert answer["echo"] == {"late": True}
    assert 0.3 < waited < 2.5  # backoff capped at 1 s: found within a second of coming up


def test_unreachable_after_give_up():
    client = ControlClient(f"http://127.0.0.1:{free_port()}", "t" * 20, LOG, give_up_after_s=0.5)

    started = time.monotonic()
    with pytest.raises(Unreachable, match="unreachable for 0.5 s"):
        client.post_json("/200")

    assert time.monotonic() - started < 2.0
