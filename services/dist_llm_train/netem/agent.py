"""`dist-llm-train netem-agent`: runs the sidecar's commands inside one container's network namespace.

The sidecar does not enter other containers' namespaces itself (that needed the host PID namespace,
SYS_ADMIN and SYS_PTRACE, and Swarm gives a service neither). For each container of the stack it starts a
helper container joined to that container's namespace (`network_mode: container:<id>`, NET_ADMIN and
NET_RAW only: helpers.py) whose one process is this agent. The agent listens on a Unix socket in the
volume it shares with the sidecar; the sidecar sends it an argv (tc, iptables, sysctl, the delayer, the
probe) and the agent runs it here and streams its output and exit code back. `AgentProcess` is the
sidecar's end: the parts of `subprocess.Popen` the sidecar uses, for a process that runs in the helper.

Protocol, one connection per process:
  sidecar -> agent: one JSON line, either {"argv": [...], "env": {...} | null, "stdin": bool,
                    "stdout": "pipe" | "null", "stderr": "pipe" | "stdout" | "null"} to run a process,
                    or {"read": "<path>"} to read a file here (/proc/net/dev: this namespace's counters).
  agent -> sidecar: one JSON line: {"pid": N} (started), {"data": "..."} (read) or {"error": "..."}.
  Then frames both ways, each 1 byte of kind, 4 bytes of big-endian length and the payload:
    agent -> sidecar: b"o" stdout bytes, b"e" stderr bytes, b"x" the exit code (ASCII; the last frame);
    sidecar -> agent: b"i" stdin bytes, b"c" close stdin, b"s" a signal number (ASCII).
  The sidecar closing its end kills the process (SIGKILL): nothing the sidecar started outlives its
  connection, so a sidecar killed outright leaves rules behind (the next one clears them) but no delayer.
Bad input (a line over MAX_REQUEST bytes, not JSON, an argv that is not a non-empty list of strings, a
frame over MAX_FRAME, an unknown kind) gets {"error": ...} or the connection closed, never a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

log = logging.getLogger("netem.agent")

PREFIX = "agent:"  # a namespace address naming an agent's socket (the sidecar's other kind is a path)
MAX_REQUEST = 64 * 1024
MAX_FRAME = 1024 * 1024
HEADER = struct.Struct(">cI")
CONNECT_TIMEOUT_S = 5.0


class AgentError(OSError):
    """The agent cannot be reached, or refused the request (its message says why)."""


def socket_of(netns: str) -> str | None:
    """The agent socket a namespace address names, or None for a path nsenter enters."""
    return netns[len(PREFIX):] if netns.startswith(PREFIX) else None


def parse_request(line: bytes) -> dict:
    """The request in one line from the sidecar; ValueError saying what is wrong with it."""
    if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
        raise ValueError(f"request line missing or over {MAX_REQUEST} bytes")
    try:
        request = json.loads(line)
    except ValueError:
        raise ValueError("request is not JSON") from None
    if not isinstance(request, dict):
        raise ValueError("request is not a JSON object")
    if "read" in request:
        if not isinstance(request["read"], str) or not request["read"].startswith("/proc/"):
            raise ValueError("read: only a path under /proc/ is served")
        return {"read": request["read"]}
    argv = request.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise ValueError("argv must be a non-empty list of strings")
    env = request.get("env")
    if env is not None and not (isinstance(env, dict)
                                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ValueError("env must be an object of strings")
    stdout, stderr = request.get("stdout", "null"), request.get("stderr", "null")
    if stdout not in ("pipe", "null") or stderr not in ("pipe", "stdout", "null"):
        raise ValueError("stdout must be pipe or null; stderr pipe, stdout or null")
    return {"argv": argv, "env": env, "stdin": bool(request.get("stdin")), "stdout": stdout, "stderr": stderr}


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def read_frame(stream) -> tuple[bytes, bytes] | None:
    """(kind, payload) from a binary stream; None at its end. ValueError for an oversize frame."""
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    kind, size = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes (at most {MAX_FRAME})")
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return kind, payload


# ---- the agent (runs in the helper container) -------------------------------------------------

class Agent:
    def __init__(self, path: Path):
        self.path = path
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def serve(self, stop: threading.Event) -> None:
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            server.bind(str(self.path))
        finally:
            os.umask(old)
        server.listen(16)
        server.settimeout(0.5)
        log.info("serving on %s", self.path)
        try:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                conn.settimeout(None)
                threading.Thread(target=self.handle, args=(conn,), daemon=True).start()
        finally:
            server.close()
            self.path.unlink(missing_ok=True)
            with self.lock:
                procs = list(self.procs)
            for proc in procs:
                proc.kill()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            stream = conn.makefile("rb")
            try:
                request = parse_request(stream.readline(MAX_REQUEST + 1))
            except ValueError as exc:
                self.reply(conn, {"error": str(exc)})
                return
            if "read" in request:
                try:
                    self.reply(conn, {"data": Path(request["read"]).read_text(errors="replace")})
                except OSError as exc:
                    self.reply(conn, {"error": f"{request['read']}: {exc.strerror}"})
                return
            self.run(conn, stream, request)

    @staticmethod
    def reply(conn: socket.socket, body: dict) -> None:
        try:
            conn.sendall(json.dumps(body).encode() + b"\n")
        except OSError:
            pass

    def run(self, conn: socket.socket, stream, request: dict) -> None:
        pipes = {"pipe": subprocess.PIPE, "null": subprocess.DEVNULL, "stdout": subprocess.STDOUT}
        env = None if request["env"] is None else dict(os.environ, **request["env"])
        try:
            proc = subprocess.Popen(request["argv"], env=env,
                                    stdin=subprocess.PIPE if request["stdin"] else subprocess.DEVNULL,
                                    stdout=pipes[request["stdout"]], stderr=pipes[request["stderr"]])
        except OSError as exc:
            self.reply(conn, {"error": f"{request['argv'][0]}: {exc.strerror or exc}"})
            return
        with self.lock:
            self.procs.add(proc)
        send_lock = threading.Lock()

        def send(data: bytes) -> None:
            with send_lock:
                try:
                    conn.sendall(data)
                except OSError:
                    pass  # the sidecar went away: `control` sees the end and kills the process

        def pump(source, kind: bytes) -> None:
            while chunk := source.read1(65536):
                send(frame(kind, chunk))

        def control() -> None:
            try:
                while (got := read_frame(stream)) is not None:
                    kind, payload = got
                    if kind == b"i" and proc.stdin is not None:
                        proc.stdin.write(payload)
                        proc.stdin.flush()
                    elif kind == b"c" and proc.stdin is not None:
                        proc.stdin.close()
                    elif kind == b"s":
                        proc.send_signal(int(payload))
                    else:
                        break
            except (OSError, ValueError):
                pass
            if proc.poll() is None:
                proc.kill()

        send(json.dumps({"pid": proc.pid}).encode() + b"\n")
        pumps = [threading.Thread(target=pump, args=(s, k), daemon=True)
                 for s, k in ((proc.stdout, b"o"), (proc.stderr, b"e")) if s is not None]
        for t in pumps:
            t.start()
        threading.Thread(target=control, daemon=True).start()
        code = proc.wait()
        for t in pumps:
            t.join()
        with self.lock:
            self.procs.discard(proc)
        send(frame(b"x", str(code).encode()))


# ---- the sidecar's end --------------------------------------------------------------------------

def connect(path: str, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise AgentError(f"agent {path} unreachable: {exc.strerror or exc}") from None
    sock.settimeout(None)
    return sock


def read_file(path: str, name: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """The text of file `name` as the agent at `path` sees it (AgentError if it cannot)."""
    with connect(path, timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(json.dumps({"read": name}).encode() + b"\n")
        try:
            answer = json.loads(sock.makefile("rb").readline(MAX_FRAME) or b"{}")
        except (OSError, ValueError) as exc:
            raise AgentError(f"agent {path}: no answer to reading {name}: {exc}") from None
    if "data" not in answer:
        raise AgentError(f"agent {path}: {answer.get('error', 'no answer')}")
    return answer["data"]


class _Stdin:
    def __init__(self, owner: AgentProcess, text: bool):
        self.owner, self.text, self.closed = owner, text, False

    def write(self, data) -> int:
        raw = data.encode() if self.text else bytes(data)
        for start in range(0, len(raw), MAX_FRAME):
            self.owner._send(frame(b"i", raw[start:start + MAX_FRAME]))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner._send(frame(b"c"))


class AgentProcess:
    """A process the agent at `path` runs in its namespace: `args`, `pid` (in the helper), `stdin`, `stdout`,
    `stderr`, `returncode`, poll, wait, communicate, send_signal, terminate, kill, as subprocess.Popen's.
    AgentError if the agent is unreachable or cannot start it. A lost agent reads as exit code -9."""

    def __init__(self, path: str, argv, *, stdin=None, stdout=None, stderr=None, text: bool = False,
                 env: dict | None = None):
        self.args = [str(a) for a in argv]
        self.returncode: int | None = None
        self.text = text
        self._sock = connect(path)
        self._send_lock = threading.Lock()
        self._done = threading.Event()
        self._collected: dict[str, list] = {}
        self._collectors: list[threading.Thread] = []
        names = {subprocess.PIPE: "pipe", None: "null", subprocess.DEVNULL: "null", subprocess.STDOUT: "stdout"}
        request = {"argv": self.args, "env": env, "stdin": stdin == subprocess.PIPE,
                   "stdout": names[stdout], "stderr": names[stderr]}
        self._stream = self._sock.makefile("rb")
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            first = json.loads(self._stream.readline(MAX_REQUEST) or b"{}")
        except (OSError, ValueError) as exc:
            self._sock.close()
            raise AgentError(f"agent {path}: no answer to starting {self.args[0]}: {exc}") from None
        if "pid" not in first:
            self._sock.close()
            raise AgentError(f"agent {path}: {first.get('error', 'no answer')}")
        self.pid = int(first["pid"])
        self.stdin = _Stdin(self, text) if stdin == subprocess.PIPE else None
        self._writers: dict[bytes, int] = {}
        self.stdout = self._pipe(b"o") if stdout == subprocess.PIPE else None
        self.stderr = self._pipe(b"e") if stderr == subprocess.PIPE else None
        threading.Thread(target=self._demux, daemon=True).start()

    def _pipe(self, kind: bytes):
        r, w = os.pipe()
        self._writers[kind] = w
        return open(r, "r", encoding="utf-8", errors="replace") if self.text else open(r, "rb")

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self._sock.sendall(data)
            except OSError:
                pass  # the process has ended, or the agent is gone: `returncode` says so

    def _demux(self) -> None:
        code = -signal.SIGKILL
        try:
            while (got := read_frame(self._stream)) is not None:
                kind, payload = got
                if kind == b"x":
                    code = int(payload)
                    break
                w = self._writers.get(kind)
                view = memoryview(payload)
                while w is not None and view:
                    try:
                        view = view[os.write(w, view):]
                    except BrokenPipeError:  # the reader closed its end; drop the rest
                        break
        except (OSError, ValueError):
            pass
        finally:
            for w in self._writers.values():
                os.close(w)
            self._writers = {}
            self.returncode = code
            self._sock.close()
            self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if not self._done.is_set():
            self._send(frame(b"s", str(int(sig)).encode()))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input=None, timeout: float | None = None):
        if self.stdin is not None and not self.stdin.closed:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        if not self._collectors:
            for name in ("stdout", "stderr"):
                source = getattr(self, name)
                if source is not None:
                    parts = self._collected.setdefault(name, [])
                    thread = threading.Thread(target=lambda s=source, p=parts: p.append(s.read()), daemon=True)
                    thread.start()
                    self._collectors.append(thread)
        self.wait(timeout)
        for thread in self._collectors:
            thread.join(timeout)
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        empty = "" if self.text else b""

        def joined(name):
            if getattr(self, name) is None:
                return None
            return empty.join(self._collected.get(name, []))
        return joined("stdout"), joined("stderr")


# ---- command line ---------------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, help="the Unix socket to serve on (in the volume the sidecar shares)")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Agent(Path(args.socket)).serve(stop)
    return 0
