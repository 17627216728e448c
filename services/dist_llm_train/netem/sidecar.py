"""`dist-llm-train netem`: the WAN emulation sidecar of a compose stack.

It finds the project's containers through the Docker API (labels com.docker.compose.project =
COMPOSE_PROJECT and dist-llm-train.role = controller | ps | worker; a worker's index is its
com.docker.compose.container-number - 1), enters each one's network namespace
(/proc/<pid>/ns/net, with `nsenter`: the service runs with pid: host, NET_ADMIN, NET_RAW,
SYS_ADMIN, SYS_PTRACE) and applies the link netem/<NETEM_PROFILE>.yaml gives it, through the
backend `NETEM_BACKEND` chooses. It then
  - re-applies a container's link when it (re)starts (Docker events, and a rescan every 5 s),
  - runs the preset's phases (t = 0 when it first reports ready),
  - watches every delayer process: a dead one is logged as an ERROR, makes `healthy` false for
    the rest of the run (with the reason), and is restarted; while it is dead its link is
    black-holed, never silently undelayed (the NFQUEUE rule has no --queue-bypass),
  - reports to the controller every 2 s (POST /links) and writes runs/<run_id>/link.json,
  - on SIGTERM / SIGINT / any exit removes every rule and stops every process it started, in
    `finally`, within CLEANUP_S.
`ready` becomes true once the controller, the PS (ML mode) and every worker have their link and
the first fidelity probe (worker 0 <-> PS in ML mode, else worker 0 <-> controller) is done.

`--dry-run --profile X` prints the exact commands for every container without Docker;
`--health` answers the compose healthcheck (the sidecar's loop wrote its state recently).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..results import atomic_write, safe_run_id
from ..schema import ConfigError
from .backends import CHOICES, choose
from .backends.base import Backend, LinkError, in_namespace, run_commands
from .backends.userspace import delayer_argv
from .preset import LinkSpec, Preset, Role, load_preset
from .probe import SERVICES, Endpoint, ProbeError, expected, judge, measure_pair

log = logging.getLogger("netem")

WORK_DIR = Path("/run/dlt-netem")  # tmpfs of the sidecar: delayer spec/stats files, state.json
STATE_FILE = WORK_DIR / "state.json"
REPORT_EVERY_S = 2.0
RESCAN_EVERY_S = 5.0
HEALTH_STALE_S = 15.0
CLEANUP_S = 20.0  # compose gives the service 30 s (stop_grace_period) before SIGKILL
DELAYER_START_S = 10.0
PROBE_ATTEMPTS = 3
ROLES = ("controller", "ps", "worker")


def link_text(link: LinkSpec) -> str:
    if link.down:
        return "DOWN (nothing passes either way)"
    rate = "unlimited" if link.rate_mbit is None else f"{link.rate_mbit:g} Mbit/s"
    return f"delay {link.delay_ms:g} ms, jitter {link.jitter_ms:g} ms, loss {link.loss_pct:g} %, rate {rate}"


class NamespaceLink:
    """One container's link: the backend's rules in its namespace and, for the userspace
    backend, the delayer process running there. Failure: `apply` raises LinkError after undoing
    what it did; `delayer_problem` says whether the delayer died; `remove` returns what failed."""

    def __init__(self, backend: Backend, netns: str, label: str, seed: int, workdir: Path = WORK_DIR):
        self.backend = backend
        self.netns = netns
        self.label = label
        self.seed = seed
        self.spec_file = workdir / f"{label}.spec.json"
        self.stats_file = workdir / f"{label}.stats.json"
        workdir.mkdir(parents=True, exist_ok=True)
        self.link: LinkSpec | None = None
        self.delayer: subprocess.Popen | None = None
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
        run_commands(self.netns, self.backend.change(link))
        spec = self.backend.delayer_spec(link)
        if spec is not None and self.delayer is not None and spec != self.backend.delayer_spec(self.link):
            atomic_write(self.spec_file, json.dumps(spec).encode())
            self.delayer.send_signal(signal.SIGHUP)
        self.link = link

    def remove(self, timeout_s: float = 10.0) -> list[str]:
        """Delete the rules (the NFQUEUE rule first), then stop the delayer, which releases what it
        holds. Every step is attempted; the failures are returned."""
        failures = []
        if Path(self.netns).exists():  # else the namespace, and every rule in it, is gone already
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
        self.delayer = subprocess.Popen(in_namespace(self.netns, argv), env=dict(os.environ, PYTHONPATH=SERVICES),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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

    def _forward(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.rstrip()
            self.delayer_output.append(line)
            log.info("%s: %s", self.label, line)
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


# ---- the stack's containers ---------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    id: str
    name: str
    role: Role
    index: int
    pid: int
    address: str

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    @property
    def label(self) -> str:
        return self.role if self.role != "worker" else f"worker-{self.index}"


def target_of(container) -> Target | None:
    """The Target a container is, or None if the sidecar must leave it alone (itself, one-off
    containers, anything without a known role, anything not running)."""
    labels = container.labels
    role = labels.get("dist-llm-train.role")
    state = container.attrs.get("State", {})
    pid = state.get("Pid") or 0
    if role not in ROLES or labels.get("com.docker.compose.oneoff") == "True" or not state.get("Running"):
        return None
    if pid in (0, os.getpid()):
        return None
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
    if address is None:
        return None
    index = int(labels.get("com.docker.compose.container-number", "1")) - 1 if role == "worker" else 0
    return Target(container.id, container.name, role, index, pid, address)


def find_targets(client, project: str) -> dict[str, Target]:
    found = {}
    for container in client.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
        target = target_of(container)
        if target is not None:
            found[target.id] = target
    return found


@dataclass
class Applied:
    target: Target
    link: LinkSpec
    ns: NamespaceLink | None  # None: the preset never impairs this container, nothing installed
    since: float = field(default_factory=time.time)


class Sidecar:
    def __init__(self, preset: Preset, backend: Backend, settings, project: str, client, http):
        self.preset = preset
        self.backend = backend
        self.settings = settings
        self.project = project
        self.client = client
        self.http = http
        self.applied: dict[str, Applied] = {}
        self.problems: dict[str, str] = {}  # key -> message; kept for the rest of the run
        self.events: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.t0: float | None = None  # monotonic time the run's clock started (first ready)
        self.t0_wall: float | None = None
        self.probe: dict | None = None
        self.probe_done = False
        self.probe_thread: threading.Thread | None = None
        self.run_id: str | None = None
        self.seed = 0
        self.expect_ps = False
        self.expect_workers = 0
        self._last_link_json: bytes | None = None
        self._waiting_for: set[str] = set()
        self.latest: dict | None = None  # the report the reporter thread sends next

    # -- time and expectations ------------------------------------------------------------
    def now_t(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def load_run_config(self) -> None:
        """Mode, worker count and seed from the controller (GET /config), retried until it answers."""
        while not self.stop.is_set():
            try:
                reply = self.http.get("/config")
                reply.raise_for_status()
                config = reply.json()
                config = config.get("config", config)
                self.expect_ps = config["mode"] == "ml"
                self.expect_workers = int(config["workers"]["count"])
                self.seed = int(config.get("seed", 0))
                log.info("run config: mode %s, %d workers, seed %d", config["mode"], self.expect_workers, self.seed)
                return
            except Exception as exc:  # noqa: BLE001 - the controller may still be starting
                log.warning("waiting for the controller's /config: %s", exc)
                self.stop.wait(2.0)

    def expected_labels(self) -> set[str]:
        labels = {"controller"} | {f"worker-{i}" for i in range(self.expect_workers)}
        return labels | ({"ps"} if self.expect_ps else set())

    def ready(self) -> bool:
        have = {a.target.label for a in self.applied.values()}
        return self.probe_done and self.expected_labels() <= have

    # -- applying -------------------------------------------------------------------------
    def apply(self, target: Target) -> None:
        old = self.applied.get(target.id)
        if old is not None and old.target.pid == target.pid:
            return
        if old is not None:
            self.forget(target.id, "restarted")
        link = self.preset.link_at(target.role, target.index, self.now_t())
        if all(l.is_identity for l in self.preset.links_over_time(target.role, target.index)):
            self.applied[target.id] = Applied(target, link, None)
            log.info("%s (%s, %s): no impairment, nothing installed", target.name, target.label, target.address)
            return
        seed = zlib.crc32(f"{self.seed}:{target.label}".encode()) & 0x7FFFFFFF
        ns = NamespaceLink(self.backend, target.netns, target.label, seed)
        try:
            ns.apply(link)
        except LinkError as exc:
            self.problem(f"apply:{target.label}", f"cannot apply the link of {target.name}: {exc}")
            return
        self.applied[target.id] = Applied(target, link, ns)
        log.info("%s (%s, %s, pid %d): applied %s [%s]", target.name, target.label, target.address,
                 target.pid, link_text(link), self.backend.name)

    def forget(self, container_id: str, why: str) -> None:
        """The container stopped or restarted: its rules went with its namespace; stop its delayer."""
        gone = self.applied.pop(container_id, None)
        if gone is None:
            return
        if gone.ns is not None and gone.ns.delayer is not None:
            gone.ns.delayer.kill()
            gone.ns.delayer.wait()
        log.info("%s %s: its rules went with its namespace", gone.target.name, why)

    def clear_leftovers(self) -> None:
        """A sidecar killed outright leaves its rules behind, and with the userspace backend they
        black-hole the links (the controller's too, so this runs before anything else)."""
        removal = self.backend.remove()
        for target in find_targets(self.client, self.project).values():
            if len(run_commands(target.netns, removal, keep_going=True)) < len(removal):
                log.warning("%s: removed the rules a previous sidecar left behind", target.name)

    def rescan(self) -> None:
        targets = find_targets(self.client, self.project)
        for cid in list(self.applied):
            if cid not in targets:
                self.forget(cid, "is gone")
        for target in targets.values():
            self.apply(target)

    def follow_phases(self) -> None:
        t = self.now_t()
        for item in self.applied.values():
            if item.ns is None:
                continue
            want = self.preset.link_at(item.target.role, item.target.index, t)
            if want == item.link:
                continue
            try:
                item.ns.change(want)
            except LinkError as exc:
                self.problem(f"change:{item.target.label}", f"cannot change the link of {item.target.name}: {exc}")
                continue
            item.link, item.since = want, time.time()
            log.info("t=%.1fs %s: %s (phases: %s)", t, item.target.name, link_text(want),
                     ", ".join(self.preset.phases_active(t)) or "none")

    def watch_delayers(self) -> None:
        for item in self.applied.values():
            problem = item.ns.delayer_problem() if item.ns is not None else None
            if problem is None:
                continue
            self.problem(f"delayer:{item.target.label}:{time.time():.0f}",
                         f"the delayer of {item.target.name} died: {problem}; its link was black-holed "
                         "(NFQUEUE without bypass) until the restart")
            try:
                item.ns.restart_delayer()
                log.warning("%s: delayer restarted", item.target.name)
            except LinkError as exc:
                self.problem(f"restart:{item.target.label}", f"cannot restart the delayer of {item.target.name}: {exc}")

    def problem(self, key: str, message: str) -> None:
        if key not in self.problems:
            log.error("PROBLEM: %s", message)
        self.problems[key] = message

    # -- the probe ------------------------------------------------------------------------
    def probe_pair(self) -> tuple[Applied, Applied] | None:
        by_label = {a.target.label: a for a in self.applied.values()}
        peer = by_label.get("ps" if self.expect_ps else "controller")
        worker = by_label.get("worker-0")
        return (worker, peer) if worker and peer else None

    def run_probe(self, pair: tuple[Applied, Applied]) -> None:
        worker, peer = pair
        a, b = (Endpoint(x.target.name, x.target.netns, x.target.address, x.link) for x in pair)
        for attempt in range(1, PROBE_ATTEMPTS + 1):
            try:
                log.info("probe %s <-> %s: started (attempt %d)", a.name, b.name, attempt)
                measured = measure_pair(a, b)
                if measured["rtt_ms"] is None:
                    raise ProbeError(f"none of {measured['rtt_samples']} echoes came back")
                break
            except ProbeError as exc:
                log.warning("probe %s <-> %s failed: %s", a.name, b.name, exc)
                if attempt == PROBE_ATTEMPTS or self.stop.wait(3.0):
                    self.problem("probe", f"the fidelity probe failed {attempt} times: {exc}")
                    self.probe_done = True
                    return
        exp = expected(a.link, b.link)
        verdict = judge(measured, exp)
        misses = [k for k, ok in verdict.items() if ok is False]
        self.probe = {**measured, "pair": [a.name, b.name], "expected": exp, "verdict": verdict,
                      "within_tolerance": not misses}
        log.info("probe %s <-> %s: RTT %.2f ms (expected %.2f), stdev %.2f ms (%.2f), loss %.2f %% (%.2f), "
                 "TCP %.1f/%.1f Mbit/s up/down (cap %s)%s", a.name, b.name, measured["rtt_ms"] or -1, exp["rtt_ms"],
                 measured["rtt_stdev_ms"] or -1, exp["rtt_stdev_ms"], measured["loss_pct"], exp["loss_pct"],
                 measured["mbit_up"], measured["mbit_down"], exp["mbit"],
                 f"; OUT OF TOLERANCE: {', '.join(misses)}" if misses else "")
        self.probe_done = True

    # -- reporting ------------------------------------------------------------------------
    def links_report(self) -> dict:
        out = {}
        for item in self.applied.values():
            entry = {"role": item.target.role, "index": item.target.index, "address": item.target.address,
                     **item.link.model_dump(), "installed": item.ns is not None, "since": item.since}
            if item.ns is not None and item.ns.delayer is not None:
                stats = item.ns.delayer_stats() or {}
                entry["delayer"] = {k: stats.get(k) for k in ("pid", "packets_seen", "dropped_loss", "queued",
                                                               "overflow_drops", "cpu_pct", "late_ms")}
            out[item.target.name] = entry
        return out

    def report(self) -> dict:
        return {"profile": self.preset.name, "backend": self.backend.name, "seed": self.seed,
                "ready": self.ready(), "healthy": not self.problems, "problems": list(self.problems.values()),
                "links": self.links_report(), "probe": self.probe, "compute_speed": list(self.preset.compute_speeds),
                "preset": self.preset.as_dict()}

    def snapshot(self) -> None:
        """The state file (for --health and verify) now, and the body the reporter sends next."""
        body = self.report()
        state = {**body, "time": time.time(), "pid": os.getpid(), "t0": self.t0_wall, "project": self.project,
                 "preset_source": self.preset.source}
        atomic_write(STATE_FILE, json.dumps(state).encode())
        self.latest = body

    def send(self, body: dict) -> None:
        try:
            self.http.post("/links", json=body).raise_for_status()
        except Exception as exc:  # noqa: BLE001 - the controller may restart; keep emulating
            log.warning("report to the controller failed: %s", exc)
        self.write_link_json(body)

    def reporter(self) -> None:
        """Sends the latest snapshot every REPORT_EVERY_S, in its own thread: a slow or cut link to
        the controller must not delay phase changes or delayer restarts in the main loop."""
        while not self.stop.wait(REPORT_EVERY_S):
            if self.latest is not None:
                self.send(self.latest)

    def write_link_json(self, body: dict) -> None:
        if self.run_id is None:
            try:
                run_id = self.http.get("/status").json()["run"]["id"]
            except Exception as exc:  # noqa: BLE001 - retried at the next report
                log.debug("no run id yet: %s", exc)
                return
            try:  # it names a folder under RUNS_DIR: the controller's answer must not choose the path
                self.run_id = safe_run_id(run_id)
            except ValueError as exc:
                log.error("link.json not written: the controller's %s", exc)
                return
        record = {**body, "t0": self.t0_wall}
        blob = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        if blob != self._last_link_json:
            atomic_write(self.settings.runs_dir / self.run_id / "link.json", blob)
            self._last_link_json = blob

    # -- the loop -------------------------------------------------------------------------
    def watch_events(self) -> None:
        filters = {"type": "container", "event": ["start", "die"],
                   "label": f"com.docker.compose.project={self.project}"}
        self.event_stream = self.client.events(decode=True, filters=filters)
        try:
            for event in self.event_stream:
                self.events.put(event)
        except Exception as exc:  # noqa: BLE001 - closing the stream at shutdown ends up here
            if not self.stop.is_set():
                log.error("Docker event stream ended: %s (rescans continue every %.0f s)", exc, RESCAN_EVERY_S)

    def handle_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            cid, action = event.get("id"), event.get("status") or event.get("Action")
            if action == "die":
                self.forget(cid, "stopped")
            elif action == "start":
                try:
                    target = target_of(self.client.containers.get(cid))
                except Exception as exc:  # noqa: BLE001 - it may be gone again already
                    log.warning("container %s started but cannot be inspected: %s", cid[:12], exc)
                    continue
                if target is not None:
                    self.apply(target)

    def run(self) -> None:
        log.info("profile %s (%s): %s", self.preset.name, self.preset.source, self.preset.description)
        threading.Thread(target=self.watch_events, daemon=True).start()
        threading.Thread(target=self.reporter, daemon=True).start()
        self.clear_leftovers()
        self.load_run_config()
        next_scan = next_report = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            self.handle_events()
            if now >= next_scan:
                self.rescan()
                next_scan = now + RESCAN_EVERY_S
            self.watch_delayers()
            self.follow_phases()
            missing = self.expected_labels() - {a.target.label for a in self.applied.values()}
            if missing != self._waiting_for and self.t0 is None:
                if missing:
                    log.info("waiting for the links of: %s", ", ".join(sorted(missing)))
                self._waiting_for = missing
            if self.probe_thread is None and not missing:
                pair = self.probe_pair()
                if pair is not None:
                    self.probe_thread = threading.Thread(target=self.run_probe, args=(pair,), daemon=True)
                    self.probe_thread.start()
            if self.t0 is None and self.ready():
                self.t0, self.t0_wall = time.monotonic(), time.time()
                log.info("ready: every link applied, probe done; t = 0 for the phases")
                next_report = 0.0  # the controller holds the run until it hears this
            if now >= next_report:
                self.snapshot()
                next_report = now + REPORT_EVERY_S
            change = self.preset.next_change(self.now_t()) if self.t0 is not None else None
            self.stop.wait(0.2 if change is None else max(0.0, min(0.2, change - self.now_t())))

    def cleanup(self) -> None:
        """Remove every rule and stop every process, within CLEANUP_S in total."""
        self.stop.set()
        stream = getattr(self, "event_stream", None)
        if stream is not None:
            stream.close()
        deadline = time.monotonic() + CLEANUP_S
        for item in list(self.applied.values()):
            if item.ns is None:
                continue
            remaining = deadline - time.monotonic()
            failures = item.ns.remove(timeout_s=max(1.0, remaining / 2))
            if failures:
                log.error("cleanup of %s: %s", item.target.name, "; ".join(failures))
            elif not Path(item.ns.netns).exists():
                log.info("cleanup: %s is gone, and its rules with its namespace", item.target.name)
            else:
                log.info("cleanup: removed every rule from %s", item.target.name)
        self.applied.clear()
        log.info("cleanup done")


# ---- command line ---------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the commands for every container and exit")
    parser.add_argument("--profile", default=None, help="preset name or path (default: NETEM_PROFILE)")
    parser.add_argument("--netem-dir", default=None, help="folder of the presets (default: NETEM_DIR)")
    parser.add_argument("--workers", type=int, default=4, help="dry run: how many workers")
    parser.add_argument("--ps", action="store_true", help="dry run: include a parameter server (ML mode)")
    parser.add_argument("--backend", choices=CHOICES, default=None, help="default: NETEM_BACKEND, else auto")
    parser.add_argument("--health", action="store_true", help="exit 0 if the sidecar is watching (compose healthcheck)")


def health() -> int:
    try:
        state = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError) as exc:
        print(f"unhealthy: no state yet ({exc})")
        return 1
    age = time.time() - state["time"]
    if age > HEALTH_STALE_S or not Path(f"/proc/{state['pid']}").exists():
        print(f"unhealthy: last update {age:.0f} s ago")
        return 1
    print(f"watching: profile {state['profile']}, backend {state['backend']}, ready {state['ready']}, "
          f"healthy {state['healthy']}")
    return 0


def dry_run(preset: Preset, backend: Backend, why: str, workers: int, with_ps: bool) -> None:
    print(f"# {why}")
    print(f"# preset {preset.name} ({preset.source}): {preset.description}")
    containers = [("controller", 0)] + ([("ps", 0)] if with_ps else []) + [("worker", i) for i in range(workers)]
    for role, index in containers:
        label = role if role != "worker" else f"worker-{index}"
        link = preset.link_at(role, index, 0.0)
        print(f"\n## {label}: {link_text(link)}")
        if all(l.is_identity for l in preset.links_over_time(role, index)):
            print("# nothing to install")
            continue
        print(f"# apply, in {label}'s network namespace (nsenter --net=/proc/<pid>/ns/net --):")
        spec = backend.delayer_spec(link)
        if spec is not None:
            print(f"# first, the delayer, with spec file {json.dumps(spec)}:")
            print(" ".join(delayer_argv("python3", f"{WORK_DIR}/{label}.spec.json", f"{WORK_DIR}/{label}.stats.json", 0)))
        for argv in backend.apply(link):
            print(" ".join(argv))
        print("# remove:")
        for argv in backend.remove():
            print(" ".join(argv))
    t, shown = 0.0, 0
    while shown < 4 and (t := preset.next_change(t)) is not None:
        print(f"\n## t = {t:g} s (phases active: {', '.join(preset.phases_active(t)) or 'none'})")
        for role, index in containers:
            before, after = preset.link_at(role, index, t - 1e-6), preset.link_at(role, index, t)
            if before != after:
                label = role if role != "worker" else f"worker-{index}"
                print(f"# {label}: {link_text(after)}")
                for argv in backend.change(after):
                    print(" ".join(argv))
        shown += 1


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(), stream=sys.stdout,
                        format="%(asctime)s netem %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the events
    if args.health:
        return health()
    from .. import settings as settings_module

    try:
        if args.dry_run:
            netem_dir = Path(args.netem_dir or os.environ.get("NETEM_DIR", "netem"))
            preset = load_preset(args.profile or os.environ.get("NETEM_PROFILE", "lan"), netem_dir)
            backend, why = choose(args.backend or os.environ.get("NETEM_BACKEND", "auto"))
            dry_run(preset, backend, why, args.workers, args.ps)
            return 0
        settings = settings_module.from_env()
        if not (args.profile or settings.profile):
            raise ConfigError("NETEM_PROFILE: not set (make up passes PROFILE)")
        preset = load_preset(args.profile or settings.profile, Path(args.netem_dir or settings.netem_dir))
        backend, why = choose(args.backend or os.environ.get("NETEM_BACKEND", "auto"))
        project = os.environ["COMPOSE_PROJECT"]
    except (ConfigError, ValueError, LinkError) as exc:
        print(f"netem: refused: {exc}", file=sys.stderr)
        return 2
    except KeyError:
        print("netem: refused: COMPOSE_PROJECT is not set (compose.yaml passes the project name)", file=sys.stderr)
        return 2
    import docker
    import httpx

    log.info(why)
    http = httpx.Client(base_url=settings.controller_url, timeout=3.0,
                        headers={"Authorization": f"Bearer {settings.run_token}"})
    sidecar = Sidecar(preset, backend, settings, project, docker.from_env(), http)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("%s: stopping", signal.Signals(signum).name),
                                                   sidecar.stop.set()))
    try:
        sidecar.run()
    finally:
        sidecar.cleanup()
        try:
            sidecar.snapshot()
            sidecar.send(sidecar.latest)  # the controller sees the links gone
        except Exception as exc:  # noqa: BLE001 - the controller may be gone first
            log.warning("last report failed: %s", exc)
    return 0
