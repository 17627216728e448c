"""`dist-llm-train netem`: the WAN emulation sidecar of a compose stack.

It finds the project's containers through the Docker API (labels com.docker.compose.project =
COMPOSE_PROJECT and dist-llm-train.role = controller | ps | worker; a worker's index is its
com.docker.compose.container-number - 1), starts for each one a helper container joined to its network
namespace (helpers.py: NET_ADMIN and NET_RAW only; the sidecar itself needs no capability and not the host
PID namespace, only the Docker socket), and applies through it (agent.py) the link
netem/<NETEM_PROFILE>.yaml gives the container, with the backend `NETEM_BACKEND` chooses. It then
  - re-applies a container's link when it (re)starts (Docker events, and a rescan every 5 s),
  - runs the preset's phases (t = 0 when it first reports ready),
  - watches every delayer process: a dead one is logged as an ERROR, makes `healthy` false for
    the rest of the run (with the reason), and is restarted; while it is dead its link is
    black-holed, never silently undelayed (the NFQUEUE rule has no --queue-bypass),
  - reports to the controller every 2 s (POST /links) and writes runs/<run_id>/link.json,
  - on SIGTERM / SIGINT / any exit removes every rule and stops every process it started, in
    `finally`, within CLEANUP_S,
  - when it starts while the run is already running (it crashed, was killed, and compose's
    `restart: unless-stopped` brought it back): clears what the dead one left, applies every link
    again, resumes the phases at the run's elapsed time (no probe: the run is under way) and reports
    itself unhealthy, so the row says `degraded` and why.
`ready` becomes true once the controller, the PS (ML mode) and every worker have their link and
the first fidelity probe (the lowest-numbered live worker <-> PS in ML mode, else <-> controller)
is done. A declared worker without a running container (killed, crashed, never started) does not
hold the run forever: `workers.start_wait_s` after the servers and a first worker had their links,
the probe runs and the run starts with the workers present; the report's `missing` names the others
(the row's reason says so). A container that dies is dropped from the link set at once (Docker's
`die` event), so the probe never measures a namespace that is gone.

`--dry-run --profile X` prints the exact commands for every container without Docker;
`--health` answers the compose healthcheck (the sidecar's loop wrote its state recently).
"""

from __future__ import annotations

import argparse
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
from . import counters, lateness, tcp
from .backends import CHOICES, choose
from .backends.base import Backend, LinkError, queue_packets_in_force, run_commands
from .dryrun import dry_run
from .helpers import Helper, HelperError, Template, kernel_has_netem, own_template, remove_all
from .helpers import start as start_helper
from .nslink import NamespaceLink, link_text
from .preset import LinkSpec, Preset, load_preset
from .probe import Endpoint, ProbeError, expected, judge, measure_pair
from .targets import Target, find_targets, target_of

log = logging.getLogger("netem")

WORK_DIR = Path("/run/dlt-netem")  # tmpfs of the sidecar: state.json
STATE_FILE = WORK_DIR / "state.json"
REPORT_EVERY_S = 2.0
RESCAN_EVERY_S = 5.0
HEALTH_STALE_S = 15.0
CLEANUP_S = 20.0  # compose gives the service 30 s (stop_grace_period) before SIGKILL
PROBE_ATTEMPTS = 3


@dataclass
class Applied:
    target: Target
    link: LinkSpec
    ns: NamespaceLink | None  # None: the preset never impairs this container, nothing installed
    tcp: dict[str, str]  # the namespace's TCP settings in force once the preset's were set (tcp.SETTINGS)
    handle: Helper  # the only way in to the container's namespace
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
        self.start_wait_s = 60.0  # workers.start_wait_s of the run config
        self.servers_and_a_worker_at: float | None = None  # monotonic time both first had their links
        self._last_link_json: bytes | None = None
        self._waiting_for: set[str] = set()
        self.latest: dict | None = None  # the report the reporter thread sends next
        self.failure: str | None = None  # the first reason the preset cannot be applied as written
        self.missing_at_start: list[str] = []  # declared workers the run started without
        self.lateness = lateness.Tally()  # every delayer's release lateness and unasked-for drops, this sidecar's life
        self.interfaces = counters.InterfaceTally()  # every container's eth0 bytes from the run's start (counters.py)
        self.template: Template | None = None  # what helpers copy from this container (helpers.py)
        self.helpers: dict[str, Helper] = {}  # target container id -> its helper

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
                self.start_wait_s = float(config["workers"].get("start_wait_s", self.start_wait_s))
                self.seed = int(config.get("seed", 0))
                log.info("run config: mode %s, %d workers, seed %d", config["mode"], self.expect_workers, self.seed)
                self.resume_if_running(self.http.get("/status").json()["run"])
                return
            except Exception as exc:  # noqa: BLE001 - the controller may still be starting
                log.warning("waiting for the controller's /config: %s", exc)
                self.stop.wait(2.0)

    def resume_if_running(self, run: dict) -> None:
        """A sidecar started into a running run: its clock is the run's, and the run is told the links
        were not as the preset says between the old sidecar's death and now."""
        if run.get("state") != "running" or self.t0 is not None:
            return
        elapsed = float(run.get("elapsed_s") or 0.0)
        self.t0, self.t0_wall = time.monotonic() - elapsed, time.time() - elapsed
        self.probe_done = True
        self.problem("restarted", f"the netem sidecar restarted {elapsed:.0f} s into the run: from the previous "
                     "one's death until every link was applied again, the links were black-holed (userspace) or "
                     "left as they were (netem), then briefly unimpaired; the delayers' lateness before the "
                     "restart is lost")
        log.warning("started into a running run (t = %.1f s): re-applying every link, phases resume there", elapsed)

    def expected_labels(self) -> set[str]:
        labels = {"controller"} | {f"worker-{i}" for i in range(self.expect_workers)}
        return labels | ({"ps"} if self.expect_ps else set())

    def missing(self) -> set[str]:
        """Expected containers without a link now."""
        return self.expected_labels() - {a.target.label for a in self.applied.values()}

    def waited_enough(self) -> bool:
        """The servers and at least one worker have links, and either every worker does or the run
        config's start_wait_s has passed since the first of them had (it then starts without the others)."""
        missing = self.missing()
        if missing & {"controller", "ps"} or len(missing) == self.expect_workers:
            self.servers_and_a_worker_at = None
            return False
        if self.servers_and_a_worker_at is None:
            self.servers_and_a_worker_at = time.monotonic()
        return not missing or time.monotonic() - self.servers_and_a_worker_at >= self.start_wait_s

    def ready(self) -> bool:
        return self.t0 is not None or (self.probe_done and self.waited_enough())

    # -- applying -------------------------------------------------------------------------
    def apply(self, target: Target) -> None:
        old = self.applied.get(target.id)
        if old is not None and old.target.pid == target.pid:
            return
        if old is not None:
            self.forget(target.id, "restarted")
        try:
            handle = self.enter(target)
        except HelperError as exc:
            log.info("%s: %s; its link waits for the next scan", target.name, exc)
            return
        link = self.preset.link_at(target.role, target.index, self.now_t())
        tcp_now = self.apply_tcp(target, handle.path, link)
        if tcp_now is None:
            self.drop_helper(target.id)
            return
        if all(l.is_identity for l in self.preset.links_over_time(target.role, target.index)):
            self.applied[target.id] = Applied(target, link, None, tcp_now, handle)
            log.info("%s (%s, %s): no impairment, nothing installed; TCP %s", target.name, target.label,
                     target.address, tcp_now["congestion_control"])
            return
        seed = zlib.crc32(f"{self.seed}:{target.label}".encode()) & 0x7FFFFFFF
        ns = NamespaceLink(self.backend, handle.path, target.label, seed, nice=self.settings.delayer_nice)
        try:
            ns.apply(link)
        except LinkError as exc:
            self.drop_helper(target.id)
            self.problem(f"apply:{target.label}", f"cannot apply the link of {target.name}: {exc}")
            return
        self.applied[target.id] = Applied(target, link, ns, tcp_now, handle)
        log.info("%s (%s, %s, pid %d): applied %s, TCP %s [%s]", target.name, target.label, target.address,
                 target.pid, link_text(link), tcp_now["congestion_control"], self.backend.name)

    def enter(self, target: Target) -> Helper:
        """The helper in the target's namespace: the one it has if that joined the same process, else a new one."""
        helper = self.helpers.get(target.id)
        if helper is not None and helper.pid == target.pid and not helper.closed:
            return helper
        self.drop_helper(target.id)
        if self.template is None:
            self.template = own_template(self.client, self.settings.delayer_nice)
        helper = self.helpers[target.id] = start_helper(self.client, self.template, self.project, target)
        return helper

    def drop_helper(self, container_id: str) -> None:
        helper = self.helpers.pop(container_id, None)
        if helper is not None:
            helper.close()

    def apply_tcp(self, target: Target, netns: str, link: LinkSpec) -> dict[str, str] | None:
        """Set the link's TCP settings in the container's namespace and read back what is in force; None
        (and a problem that fails a run not yet started) when the kernel refuses them."""
        try:
            run_commands(netns, tcp.commands(link.tcp))
            settings = tcp.read_settings(netns)
        except LinkError as exc:
            allowed, _ = tcp.host_lists()
            self.fail(f"tcp:{target.label}", f"cannot set TCP congestion control {link.tcp.congestion_control} in "
                      f"{target.name}: {exc} (the host allows: {' '.join(allowed) or 'unknown'}; "
                      "`make up` checks this first and prints the host command that allows it)")
            return None
        want = link.tcp.congestion_control
        if want != "host" and settings["congestion_control"] != want:
            self.fail(f"tcp:{target.label}", f"{target.name}: TCP congestion control is "
                      f"{settings['congestion_control']} after setting {want}")
            return None
        return settings

    def forget(self, container_id: str, why: str) -> None:
        """The container stopped or restarted: its rules went with its namespace; stop its delayer."""
        gone = self.applied.pop(container_id, None)
        if gone is None:
            return
        if gone.ns is not None and gone.ns.delayer is not None:
            gone.ns.delayer.kill()
            try:
                gone.ns.delayer.wait(timeout=5)
            except subprocess.TimeoutExpired:  # its helper goes next, and the delayer with it
                log.warning("%s: its delayer did not answer a kill within 5 s", gone.target.name)
        self.drop_helper(container_id)
        log.info("%s %s: its rules went with its namespace", gone.target.name, why)

    def clear_leftovers(self) -> None:
        """A sidecar killed outright leaves its helpers and its rules behind (its delayers died with its
        connections to the agents), and with the userspace backend the rules black-hole the links (the
        controller's too, so this runs before anything else). The helpers started here are kept for `apply`."""
        if count := remove_all(self.client, self.project):
            log.warning("removed %d helper container(s) a previous sidecar left behind", count)
        removal = self.backend.remove()
        for target in find_targets(self.client, self.project).values():
            try:
                handle = self.enter(target)
            except HelperError as exc:
                log.info("%s: %s", target.name, exc)
                continue  # gone meanwhile: its namespace, and whatever was left in it, went with it
            if len(run_commands(handle.path, removal, keep_going=True)) < len(removal):
                log.warning("%s: removed the rules a previous sidecar left behind", target.name)

    def rescan(self) -> None:
        targets = find_targets(self.client, self.project)
        for cid in list(self.applied):
            if cid not in targets:
                self.forget(cid, "is gone")
        for cid in [cid for cid in self.helpers if cid not in targets]:
            self.drop_helper(cid)  # a helper started for a container that went before its link was applied
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
            # A trace steps every second or so: its steps go to the debug log, phases to the info log.
            log.log(logging.DEBUG if want.trace else logging.INFO, "t=%.1fs %s: %s (phases: %s)", t, item.target.name,
                    link_text(want), ", ".join(self.preset.phases_active(t)) or "none")

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

    def fail(self, key: str, message: str) -> None:
        """A problem that makes the preset impossible to apply: a run that has not started ends `failed`."""
        self.problem(key, message)
        self.failure = self.failure or message

    # -- the probe ------------------------------------------------------------------------
    def probe_pair(self) -> tuple[Applied, Applied] | None:
        """The lowest-numbered worker with a running container, and the PS (ML) or the controller."""
        applied = list(self.applied.values())  # the main thread changes the dict
        peer = next((a for a in applied if a.target.role == ("ps" if self.expect_ps else "controller")), None)
        workers = sorted((a for a in applied if a.target.role == "worker"), key=lambda a: a.target.index)
        live = [a for a in workers if a.handle.alive()]
        return (live[0], peer) if live and peer else None

    def run_probe(self) -> None:
        """The fidelity probe before the run, on a pair picked afresh for each attempt: a container that
        died meanwhile is replaced by the next live worker (waiting for one does not count as an attempt)."""
        attempt = 0
        while not self.stop.is_set():
            pair = self.probe_pair()
            if pair is None:
                self.stop.wait(1.0)
                continue
            attempt += 1
            a, b = (Endpoint(x.target.name, x.handle.path, x.target.address, x.link) for x in pair)
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
        else:
            return
        exp = expected(a.link, b.link, self.backend.name)
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
                     **item.link.model_dump(), "installed": item.ns is not None, "since": item.since,
                     "queue_packets_in_force": queue_packets_in_force(item.link) if item.ns is not None else None,
                     "tcp_in_force": item.tcp}
            if item.ns is not None and item.ns.delayer is not None:
                stats = item.ns.delayer_stats() or {}
                self.lateness.record(item.target.label, stats)
                entry["delayer"] = {k: stats.get(k) for k in ("pid", "packets_seen", "dropped_loss", "queued",
                                                               "overflow_drops", "socket_drops", "refused_verdicts",
                                                               "cpu_pct", "late_ms", "timer_late_ms")}
            out[item.target.name] = entry
        return out

    def tcp_summary(self) -> str | None:
        """The congestion controls in force across the stack ('cubic', or 'bbr+cubic' when entries differ)."""
        found = sorted({item.tcp["congestion_control"] for item in self.applied.values()})
        return "+".join(found) or None

    def report(self) -> dict:
        links = self.links_report()  # first: it records the delayers' latest stats in the tally
        return {"profile": self.preset.name, "backend": self.backend.name, "seed": self.seed,
                "ready": self.ready(), "healthy": not self.problems, "problems": list(self.problems.values()),
                "failed": self.failure, "tcp_cc": self.tcp_summary(), "missing": self.missing_at_start,
                "links": links, "probe": self.probe, "compute_speed": list(self.preset.compute_speeds),
                "emulation": self.lateness.summary(), "interfaces": self.interface_counts(),
                "preset": self.preset.as_dict()}

    def interface_counts(self) -> dict | None:
        present = [(a.target.id, a.target.pid, a.target.label, a.target.role, a.handle.path)
                   for a in list(self.applied.values())]
        if self.t0 is not None and not self.interfaces.started:
            self.interfaces.start(present)
        self.interfaces.update(present)
        return self.interfaces.summary()

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
        if self.t0_wall is not None:
            counters.append_series(self.settings.runs_dir / self.run_id / "interfaces.csv",
                                   time.time() - self.t0_wall, body.get("interfaces"))

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
            missing = self.missing()
            if missing != self._waiting_for and self.t0 is None:
                if missing:
                    log.info("waiting for the links of: %s", ", ".join(sorted(missing)))
                self._waiting_for = missing
            if self.probe_thread is None and self.t0 is None and self.waited_enough():
                self.probe_thread = threading.Thread(target=self.run_probe, daemon=True)
                self.probe_thread.start()
            if self.t0 is None and self.ready():
                self.t0, self.t0_wall = time.monotonic(), time.time()
                self.missing_at_start = sorted(missing)
                log.info("ready: links applied, probe done; t = 0 for the phases%s",
                         f"; starting without {', '.join(self.missing_at_start)} (no running container after "
                         f"workers.start_wait_s = {self.start_wait_s:g} s)" if missing else "")
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
            elif not item.handle.alive():
                log.info("cleanup: %s is gone; its rules went with its namespace", item.target.name)
            else:
                log.info("cleanup: removed every rule from %s", item.target.name)
        helpers = list(self.helpers.values())
        closers = [threading.Thread(target=h.close, daemon=True) for h in helpers]
        for t in closers:
            t.start()
        for t in closers:
            t.join(max(1.0, deadline - time.monotonic()))
        self.helpers.clear()
        self.applied.clear()
        log.info("cleanup done (%d helper container(s) removed)", len(helpers))


# ---- command line ---------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the commands for every container and exit")
    parser.add_argument("--profile", default=None, help="preset name or path (default: NETEM_PROFILE)")
    parser.add_argument("--netem-dir", default=None, help="folder of the presets (default: NETEM_DIR)")
    parser.add_argument("--workers", type=int, default=4, help="dry run: how many workers")
    parser.add_argument("--ps", action="store_true", help="dry run: include a parameter server (ML mode)")
    parser.add_argument("--backend", choices=CHOICES, default=None, help="default: NETEM_BACKEND, else auto")
    parser.add_argument("--tcp-cc", choices=("cubic", "bbr", "reno", "host"), default=None,
                        help="congestion control of every container, whatever the preset says (default: TCP_CC)")
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


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "info").upper(), stream=sys.stdout,
                        format="%(asctime)s netem %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the events
    if args.health:
        return health()
    from .. import settings as settings_module

    try:
        if args.dry_run:  # no stack, no token: everything from the command line
            preset = load_preset(args.profile or "lan", Path(args.netem_dir or "netem"), args.tcp_cc)
            backend, why = choose(args.backend or "auto")
            dry_run(preset, backend, why, args.workers, args.ps)
            return 0
        settings = settings_module.from_env()
        if not (args.profile or settings.profile):
            raise ConfigError("NETEM_PROFILE: not set (make up passes PROFILE)")
        if settings.compose_project is None:
            raise ConfigError("COMPOSE_PROJECT: not set (compose.yaml passes the project name)")
        settings_module.require_role_tokens(settings, "sidecar")  # /links opens only to the sidecar's credential
        preset = load_preset(args.profile or settings.profile, Path(args.netem_dir or settings.netem_dir),
                             args.tcp_cc or settings.tcp_cc)
        import docker

        client = docker.from_env()
        template = own_template(client, settings.delayer_nice)  # helpers copy it; the kernel probe runs from it
        backend, why = choose(args.backend or settings.netem_backend, lambda: kernel_has_netem(client, template))
        project = settings.compose_project
    except (ConfigError, ValueError, LinkError, HelperError) as exc:
        print(f"netem: refused: {exc}", file=sys.stderr)
        return 2
    import httpx

    log.info(why)
    http = httpx.Client(base_url=settings.controller_url, timeout=3.0,
                        headers={"Authorization": f"Bearer {settings.run_token}",
                                 "X-Role-Token": settings.sidecar_token})
    sidecar = Sidecar(preset, backend, settings, project, client, http)
    sidecar.template = template
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
