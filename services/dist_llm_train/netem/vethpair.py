"""Two network namespaces joined by a veth pair, for the delayer's tests and benchmark.

Each namespace is held by a `sleep` child made with `unshare --net` and entered with
`nsenter --net=/proc/<pid>/ns/net`. Unlike `ip netns add`, this needs no mount of /run/netns, so it
works inside a container that has only NET_ADMIN, NET_RAW and SYS_ADMIN. Traffic stays inside the
two namespaces (addresses 10.77.0.1 and 10.77.0.2 exist nowhere else).

Failure: a missing tool or capability raises subprocess.CalledProcessError from `VethPair()` with
the command's stderr; `close()` always kills every process it started, so the namespaces vanish.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ADDRESSES = {"a": "10.77.0.1", "b": "10.77.0.2"}
DEVICES = {"a": "va", "b": "vb"}
SERVICES = str(Path(__file__).resolve().parents[2])  # the directory holding dist_llm_train


class VethPair:
    """Namespace `a` (device va, 10.77.0.1) <-> namespace `b` (device vb, 10.77.0.2)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self.holders: dict[str, subprocess.Popen] = {}
        try:
            for side in ("a", "b"):
                self.holders[side] = self._hold_namespace()
            self.run("a", "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
                     "netns", str(self.holders["b"].pid))
            for side in ("a", "b"):
                self.run(side, "ip", "link", "set", "lo", "up")
                self.run(side, "ip", "addr", "add", f"{ADDRESSES[side]}/24", "dev", DEVICES[side])
                self.run(side, "ip", "link", "set", DEVICES[side], "up")
        except BaseException:
            self.close()
            raise

    def _hold_namespace(self) -> subprocess.Popen:
        holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # unshare execs sleep only after unshare(2) succeeded
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/net") != mine:
                    return holder
            except FileNotFoundError:
                pass
            if holder.poll() is not None:
                raise subprocess.CalledProcessError(holder.returncode, "unshare --net (needs CAP_SYS_ADMIN)")
            time.sleep(0.005)
        holder.kill()
        raise TimeoutError("unshare --net did not create a namespace within 5 s")

    def enter(self, side: str, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holders[side].pid}/ns/net", "--", *argv]

    def run(self, side: str, *argv: str, timeout: float = 30) -> str:
        """Run a command in the namespace; its stdout, or CalledProcessError with its stderr."""
        done = subprocess.run(self.enter(side, *argv), capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return done.stdout

    def popen(self, side: str, *argv: str, **kwargs) -> subprocess.Popen:
        """Start a process in the namespace; `close()` kills it if it is still running."""
        proc = subprocess.Popen(self.enter(side, *argv), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, side: str, module: str, *args: str, **kwargs) -> subprocess.Popen:
        """`python3 -m module args` in the namespace, with this package importable."""
        env = dict(os.environ, PYTHONPATH=SERVICES)
        return self.popen(side, sys.executable, "-m", module, *args, env=env, **kwargs)

    def close(self) -> None:
        for proc in [*self._procs, *self.holders.values()]:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for proc in self._procs:
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream:
                    stream.close()

    def __enter__(self) -> VethPair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
