"""One container's link in its namespace: the backend's rules and, for the userspace backend, its delayer.

The sidecar holds one NamespaceLink per container it impairs; `netns` is where commands run (the helper's
agent, "agent:<socket>", or a path nsenter enters in the integration tests and benchmarks).
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..results import atomic_write
from .agent import AgentError
from .backends.base import Backend, LinkError, ns_popen, reachable, run_commands
from .backends.userspace import delayer_argv
from .delayer import SPEC_NOW
from .helpers import LINKS_DIR
from .preset import LinkSpec
from .probe import SERVICES

log = logging.getLogger("netem")

DELAYER_START_S = 10.0


def link_text(link: LinkSpec) -> str:
    if link.down:
        return "DOWN (nothing passes either way)"
    rate = "unlimited" if link.rate_mbit is None else f"{link.rate_mbit:g} Mbit/s"
    trace = "" if link.trace is None else f" (now; following {link.trace}, {link.trace_end} at its end)"
    return f"delay {link.delay_ms:g} ms, jitter {link.jitter_ms:g} ms, loss {link.loss_pct:g} %, rate {rate}{trace}"


class NamespaceLink:
    """One container's link: the backend's rules in its namespace and, for the userspace
    backend, the delayer process running there. Failure: `apply` raises LinkError after undoing
    what it did; `delayer_problem` says whether the delayer died; `remove` returns what failed."""

    def __init__(self, backend: Backend, netns: str, label: str, seed: int, workdir: Path = LINKS_DIR,
                 nice: int = 0):
        self.backend = backend
        self.netns = netns
        self.label = label
        self.seed = seed
        self.nice = nice  # the delayer's niceness (below 0 needs CAP_SYS_NICE; see DELAYER_NICE)
        self.spec_file = workdir / f"{label}.spec.json"
        self.stats_file = workdir / f"{label}.stats.json"
        workdir.mkdir(parents=True, exist_ok=True)
        self.link: LinkSpec | None = None
        self.delayer = None  # subprocess.Popen, or agent.AgentProcess in a helper
        self.delayer_output: collections.deque[str] = collections.deque(maxlen=5)

    def apply(self, link: LinkSpec) -> None:
        spec = self.backend.delayer_spec(link)
        if spec is not None:
            self._start_delayer(spec)  # before the rule, so no packet meets an empty queue
        try:
            run_commands(self.netns, self.backend.apply(link))
        except LinkError:
            self.remove()
            raise
        self.link = link

    def change(self, link: LinkSpec) -> None:
        """Move the link to `link` in place: qdiscs of the same kind are changed, not replaced (flows and
        queues stay), and the delayer re-reads its spec on SIGHUP."""
        run_commands(self.netns, self.backend.change(link, self.link))
        spec = self.backend.delayer_spec(link)
        if spec is not None and self.delayer is not None and spec != self.backend.delayer_spec(self.link):
            atomic_write(self.spec_file, json.dumps(spec).encode())
            self.delayer.send_signal(signal.SIGHUP)
        self.link = link

    def remove(self, timeout_s: float = 10.0) -> list[str]:
        """Delete the rules (the NFQUEUE rule first), then stop the delayer, which releases what it
        holds. Every step is attempted; the failures are returned."""
        failures = []
        if reachable(self.netns):  # else the handle was closed: nothing of ours is reachable
            failures = run_commands(self.netns, self.backend.remove(), timeout_s=max(1.0, timeout_s / 4),
                                    keep_going=True)
        if self.delayer is not None:
            self.delayer.terminate()
            try:
                self.delayer.wait(timeout=max(1.0, timeout_s / 2))
            except subprocess.TimeoutExpired:
                self.delayer.kill()
                self.delayer.wait()
                failures.append(f"{self.label}: delayer did not stop on SIGTERM; killed")
            self.delayer = None
        self.link = None
        return failures

    def _start_delayer(self, spec: dict) -> None:
        atomic_write(self.spec_file, json.dumps(spec).encode())
        self.stats_file.unlink(missing_ok=True)
        argv = delayer_argv(sys.executable, str(self.spec_file), str(self.stats_file), self.seed)
        if self.nice:
            argv = ["nice", "-n", str(self.nice), *argv]
        try:
            self.delayer = ns_popen(self.netns, argv, env_extra={"PYTHONPATH": SERVICES},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except AgentError as exc:
            raise LinkError(f"{self.label}: cannot start the delayer: {exc}") from None
        self.delayer_output.clear()
        threading.Thread(target=self._forward, args=(self.delayer,), daemon=True).start()
        deadline = time.monotonic() + DELAYER_START_S
        while not self.stats_file.exists():  # written once the queue is bound
            if self.delayer.poll() is not None or time.monotonic() > deadline:
                problem = self.delayer_problem() or "delayer did not bind its queue in time"
                self.delayer.kill()
                self.delayer.wait()
                self.delayer = None
                raise LinkError(f"{self.label}: {problem}")
            time.sleep(0.02)

    def _forward(self, proc) -> None:
        for line in proc.stdout:
            line = line.rstrip()
            self.delayer_output.append(line)
            # A trace re-specs the delayer every step: those confirmations go to the debug log.
            step = self.link is not None and self.link.trace is not None and f"] {SPEC_NOW} " in line
            log.log(logging.DEBUG if step else logging.INFO, "%s: %s", self.label, line)
        proc.stdout.close()

    def delayer_problem(self) -> str | None:
        """Why the delayer is dead (exit code and its last lines), or None while it runs."""
        if self.delayer is None or self.delayer.poll() is None:
            return None
        time.sleep(0.05)  # let the reader thread collect its last lines
        last = " | ".join(self.delayer_output) or "no output"
        return f"delayer exited with code {self.delayer.returncode} ({last})"

    def restart_delayer(self) -> None:
        self._start_delayer(self.backend.delayer_spec(self.link))

    def delayer_stats(self) -> dict | None:
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return None
