"""The agent that runs the sidecar's commands in a helper container (netem/agent.py), driven over a real Unix
socket with real processes: output, exit codes, stdin, signals, a lost client, reads of /proc, and refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from dist_llm_train.netem import agent
from dist_llm_train.netem.backends.base import LinkError, ns_popen, ns_read, ns_run, reachable, run_commands


@pytest.fixture
def served(tmp_path):
    path = tmp_path / "a.sock"
    stop = threading.Event()
    server = agent.Agent(path)
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    yield agent.PREFIX + str(path), server
    stop.set()
    thread.join(5)


def test_a_command_runs_with_its_output_and_exit_code(served):
    netns, _ = served
    done = ns_run(netns, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert ns_run(netns, ["true"]).returncode == 0


def test_merged_output_stdin_and_a_second_communicate(served):
    netns, _ = served
    proc = ns_popen(netns, ["sh", "-c", "cat; echo to-err >&2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
    out, err = proc.communicate("from stdin\n", timeout=10)
    assert (out, err, proc.returncode) == ("from stdin\nto-err\n", None, 0)


def test_lines_stream_while_the_process_runs(served):
    netns, _ = served
    proc = ns_popen(netns, [sys.executable, "-u", "-c", "import time\nprint('ready')\ntime.sleep(30)"],
                    stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n" and proc.poll() is None
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(10) == -signal.SIGHUP


def test_terminate_and_a_timeout(served):
    netns, _ = served
    proc = ns_popen(netns, ["sleep", "30"])
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    proc.terminate()
    assert proc.wait(10) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        ns_run(netns, ["sleep", "30"], timeout_s=0.3)


def test_a_client_that_goes_away_takes_its_process_with_it(served):
    netns, server = served
    proc = ns_popen(netns, ["sleep", "30"])
    pid = proc.pid
    assert os.path.exists(f"/proc/{pid}")
    proc._sock.shutdown(socket.SHUT_RDWR)  # the sidecar killed outright: its connection ends
    deadline = time.monotonic() + 10
    while server.procs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.procs and not os.path.exists(f"/proc/{pid}")


def test_proc_files_are_read_without_a_process_and_nothing_else_is(served):
    netns, _ = served
    assert "Inter-|" in ns_read(netns, "/proc/net/dev")
    assert ns_read(netns, "/proc/no-such-file") is None
    with pytest.raises(agent.AgentError, match="only a path under /proc/"):
        agent.read_file(agent.socket_of(netns), "/etc/passwd")


def raw(netns: str, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket_of(netns))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return json.loads(sock.makefile("rb").readline())


@pytest.mark.parametrize("data, error", [
    (b"garbage\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"argv": []}\n', "non-empty list of strings"),
    (b'{"argv": ["ls", 3]}\n', "non-empty list of strings"),
    (b'{"argv": ["ls"], "env": {"A": 1}}\n', "env must be"),
    (b'{"argv": ["ls"], "stdout": "file"}\n', "stdout must be"),
    (b"{" + b" " * agent.MAX_REQUEST + b"}\n", "over"),
    (b'{"argv": ["ls"]}', "missing"),
])
def test_bad_requests_get_a_specific_error_and_the_agent_goes_on(served, data, error):
    netns, _ = served
    assert error in raw(netns, data)["error"]
    assert ns_run(netns, ["true"]).returncode == 0


def test_an_oversize_or_unknown_frame_ends_the_process(served):
    netns, server = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket_of(netns))
        sock.sendall(json.dumps({"argv": ["sleep", "30"], "stdin": True}).encode() + b"\n")
        stream = sock.makefile("rb")
        assert "pid" in json.loads(stream.readline())
        sock.sendall(agent.HEADER.pack(b"i", agent.MAX_FRAME + 1))
        assert agent.read_frame(stream) == (b"x", str(-signal.SIGKILL).encode())
    assert ns_run(netns, ["true"]).returncode == 0


def test_a_missing_program_and_a_missing_agent_say_so(served, tmp_path):
    netns, _ = served
    done = ns_run(netns, ["no-such-program-here"])
    assert done.returncode == 255 and "no-such-program-here" in done.stderr
    gone = agent.PREFIX + str(tmp_path / "none.sock")
    assert not reachable(gone) and reachable(netns)
    with pytest.raises(LinkError, match="unreachable"):
        run_commands(gone, [("true",)])
    assert ns_read(gone, "/proc/net/dev") is None
    with pytest.raises(agent.AgentError, match="unreachable"):
        ns_popen(gone, ["true"])


def test_the_socket_is_the_owners_alone(served):
    netns, _ = served
    assert os.stat(agent.socket_of(netns)).st_mode & 0o077 == 0  # nobody but its owner (root) may connect


def test_only_the_extra_environment_is_sent_never_the_sidecars_own(served, tmp_path, monkeypatch):
    netns, _ = served
    proc = ns_popen(netns, ["sh", "-c", "echo $EXTRA"], env_extra={"EXTRA": "yes"}, stdout=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=10)[0] == "yes\n"
    # What goes over the socket: a listener that keeps the request line.
    monkeypatch.setenv("SIDECAR_TOKEN", "s3cret-never-sent")
    path = tmp_path / "listen.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    got = []

    def keep():
        conn, _ = listener.accept()
        got.append(conn.makefile("rb").readline())
        conn.sendall(b'{"error": "kept"}\n')
        conn.close()
    threading.Thread(target=keep, daemon=True).start()
    with pytest.raises(agent.AgentError, match="kept"):
        ns_popen(agent.PREFIX + str(path), ["true"], env_extra={"PYTHONPATH": "/x"})
    listener.close()
    assert json.loads(got[0])["env"] == {"PYTHONPATH": "/x"} and b"s3cret" not in got[0]
