"""One worker: register, heartbeat in its own thread, ask for tasks and run them until told to stop.

The heartbeat thread has its own HTTP client, so a long computation or a slow upload never
delays a heartbeat. When the controller answers 410 (declared dead) or 404 (it forgot us: a
fresh run), whichever thread hears it first registers again; the task in hand is abandoned,
since its lease was revoked. The worker exits 0 when the run is over, 3 when the controller
refuses RUN_TOKEN, 1 when the controller stays unreachable.

Identity: each registration answers a secret of this incarnation's own, which every client of this
agent sends from then on (X-Worker-Secret); registering again sends the previous one, which proves
the name is ours. The secret lives in memory only (the container's root is read-only, its /tmp a
tmpfs that a restart empties): a restarted container cannot prove its previous incarnation, so the
controller answers 409 until that one is declared dead (heartbeat_timeout_s of silence, 5 s by
default), and the new process retries its registration until then (once the run is over nobody is
declared dead any more: such a worker has nothing to do and stops as after the run).

What a task runner (synthetic.run_task, ml_loop.run_shard) may use:
    agent.config              resolved run config (dict), as the controller sent it
    agent.index, agent.speed  this worker's index and compute speed factor
    agent.run_id              the run this worker registered in
    agent.settings, agent.log
    agent.data_key            this worker's data-plane key (dataplane.Credential; ML mode), agent.ps_key()
    agent.client              ControlClient of the task loop's thread; agent.new_client() for another thread's
    agent.stopping            Event set when the run is over or the worker must stop
    agent.holds(worker_id)    False once re-registered or stopping: drop the task
    agent.send_telemetry(**fields), agent.complete(task, data)
    agent.compute_s, bytes_up, bytes_down, tasks_done   counters the runner keeps up to date
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..dataplane import Credential, new_credential
from ..settings import Settings, touch
from .client import Conflict, ControlClient, ControlError, Gone, NotFound, TokenRefused, Unreachable
from .synthetic import run_task

LIVE_STATES = ("waiting", "running")


class Agent:
    def __init__(self, settings: Settings, name: str, index: int, log: logging.Logger):
        self.settings, self.name, self.index, self.log = settings, name, index, log
        self._clients: list[ControlClient] = []  # every client of this agent: each sends the current secret
        self._secret: str | None = None
        self.client = self.new_client()
        self.beat_client = self.new_client()
        self.stopping = threading.Event()
        self.fatal: Exception | None = None  # what stopped the heartbeat thread, if not the run's end
        self.worker_id = ""
        self.run_id = ""
        self.config: dict[str, Any] = {}
        self.heartbeat_interval_s = 1.0
        self._register_lock = threading.Lock()
        self._rtt_ms: float | None = None
        self.started: float | None = None  # when this worker first saw the run running
        self.compute_s = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.tasks_done = 0
        self.speed_factor = 1.0  # from the preset, updated by every heartbeat and next-task answer
        self.data_key: Credential | None = None  # ML: made at start; only its public part is registered
        self._ps_key: dict[str, Any] | None = None  # the PS's, from the registration answer or GET /ps/key

    @property
    def speed(self) -> float:
        """The config's speed for this index times the WAN preset's factor (the controller relays it)."""
        speeds = self.config["workers"]["speed"]
        return speeds[self.index % len(speeds)] * self.speed_factor

    def run(self) -> int:
        heartbeats = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        try:
            self.config = self.client.get_json("/config")
            if self.config["mode"] == "ml":
                self.data_key = new_credential(self.config["ml"]["data_plane_auth"])
            self.register(self.client)
            heartbeats.start()
            self._task_loop()
        except (ControlError, Unreachable) as exc:
            self.fatal = self.fatal or exc
        finally:
            self.stopping.set()
        if heartbeats.is_alive():
            heartbeats.join(timeout=5)
        return self._exit_code()

    def _exit_code(self) -> int:
        if self.fatal is None:
            self.log.info("run over: exiting")
            return 0
        if isinstance(self.fatal, TokenRefused):
            self.log.error("RUN_TOKEN refused by the controller")
            return 3
        self.log.error("stopping: %s", self.fatal)
        return 1

    def new_client(self, give_up_after_s: float = 120.0) -> ControlClient:
        """A control client that speaks as this worker (the run token and, once registered, its secret)."""
        client = ControlClient(self.settings.controller_url, self.settings.run_token, self.log,
                               give_up_after_s=give_up_after_s)
        if self._secret is not None:
            client.identify(self._secret)
        self._clients.append(client)
        return client

    def register(self, client: ControlClient, stale_id: str | None = None) -> None:
        """Register (again). With `stale_id`, only if no other thread did it since that id failed. While a live
        incarnation of this name that this process cannot prove holds it (409), retry until it is declared dead."""
        with self._register_lock:
            if stale_id is not None and self.worker_id != stale_id:
                return
            workers = self.config["workers"]
            body = {
                "name": self.name, "index": self.index,
                "capacity": workers["capacity"][self.index % len(workers["capacity"])],
                "memory_mb": workers["memory_mb"][self.index % len(workers["memory_mb"])],
                **({"data_key": self.data_key.public} if self.data_key is not None else {}),
            }
            # The controller declares a silent incarnation dead after heartbeat_timeout_s (a restarted
            # controller grants a fresh one): twice that, and a margin, is the longest honest wait.
            patience = 2 * self.config["controller"]["heartbeat_timeout_s"] + 5
            deadline, warned = time.monotonic() + patience, False
            while True:
                try:
                    answer = client.post_json("/workers/register", body)
                    break
                except Conflict as exc:
                    if client.get_json("/healthz")["run_state"] not in LIVE_STATES:
                        # Nobody is declared dead after the run: the name stays held, and there is nothing to do.
                        self.log.info("registration refused after the run ended: nothing to do")
                        self.stopping.set()
                        return
                    if time.monotonic() > deadline or self.stopping.is_set():
                        raise
                    if not warned:
                        self.log.warning("registration refused (%s): retrying until the controller declares that "
                                         "incarnation dead (at most %g s)", exc.detail, patience)
                        warned = True
                    self.stopping.wait(0.5)
            self._secret = answer["secret"]
            for each in self._clients:
                each.identify(self._secret)
            self.worker_id = answer["worker_id"]
            self._ps_key = answer.get("ps_key") or self._ps_key
            self.run_id = answer["run_id"]
            self.config = answer["config"]
            self.heartbeat_interval_s = answer["heartbeat_interval_s"]
            self.log.info("registered as %s in run %s (mode %s, speed %g)", self.worker_id, answer["run_id"],
                          answer["mode"], self.speed)

    def ps_key(self, refresh: bool = False) -> dict[str, Any] | None:
        """The PS's data-plane key ({mode, public_key}) as the controller knows it; `refresh` asks again (the PS
        may have announced it after this worker registered). None while the PS has not announced one."""
        if refresh or self._ps_key is None:
            try:
                self._ps_key = self.client.get_json("/ps/key")
            except NotFound:
                pass
        return self._ps_key

    def holds(self, worker_id: str) -> bool:
        return not self.stopping.is_set() and self.worker_id == worker_id

    def utilization(self) -> float | None:
        """Share of the time since the run started (not since this process did: the run may
        have waited for the links) spent computing; None before the run starts."""
        if self.started is None:
            return None
        return min(1.0, self.compute_s / max(1e-9, time.monotonic() - self.started))

    def send_telemetry(self, **fields: Any) -> None:
        self.client.post_json(f"/workers/{self.worker_id}/telemetry", fields)

    def complete(self, task: dict[str, Any], data: bytes) -> str:
        answer = self.client.request("POST", f"/tasks/{task['task_id']}/complete", content=data,
                                     params={"worker_id": self.worker_id, "lease": task["lease"]}).json()
        self.bytes_up += len(data)
        return answer["status"]

    def _heartbeats(self) -> None:
        while not self.stopping.is_set():
            worker_id = self.worker_id
            sample = {"rtt_ms": self._rtt_ms, "compute_utilization": self.utilization(),
                      "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}
            sent = time.perf_counter()
            try:
                answer = self.beat_client.post_json(
                    f"/workers/{worker_id}/heartbeat",
                    {"telemetry": {k: v for k, v in sample.items() if v is not None}})
            except (Gone, NotFound) as exc:
                self.log.warning("controller no longer knows %s (%s): registering again", worker_id, exc.detail)
                self._guard(lambda: self.register(self.beat_client, worker_id))
                continue
            except (ControlError, Unreachable) as exc:
                self.fatal = exc
                self.stopping.set()
                return
            self._rtt_ms = (time.perf_counter() - sent) * 1000
            touch(self.settings.health_file)
            self.speed_factor = answer.get("speed_factor", 1.0)
            if answer["stop"]:
                self.log.info("controller says stop (run %s)", answer["run_state"])
                self.stopping.set()
                return
            self.stopping.wait(max(0.0, self.heartbeat_interval_s - self._rtt_ms / 1000))

    def _guard(self, call) -> None:
        try:
            call()
        except (ControlError, Unreachable) as exc:
            self.fatal = exc
            self.stopping.set()

    def _task_loop(self) -> None:
        while not self.stopping.is_set():
            worker_id = self.worker_id
            try:
                answer = self.client.post_json(f"/workers/{worker_id}/next-task")
                self.speed_factor = answer.get("speed_factor", 1.0)
                if answer["run_state"] not in LIVE_STATES:
                    self.log.info("run %s", answer["run_state"])
                    return
                if answer["run_state"] == "running" and self.started is None:
                    self.started = time.monotonic()
                task = answer["task"]
                if task is None:
                    self.stopping.wait(answer["retry_after_s"])
                    continue
                self._execute(task, worker_id)
            except (Gone, NotFound) as exc:
                self.log.warning("controller no longer knows %s (%s): registering again", worker_id, exc.detail)
                self.register(self.client, worker_id)
            except Conflict as exc:
                self.log.warning("task dropped: %s", exc.detail)

    def _execute(self, task: dict[str, Any], worker_id: str) -> None:
        self.log.info("task %s (%s, %d tokens, lease %s)", task["task_id"], task["kind"], task["tokens"],
                      task["lease"])
        if task["kind"] == "shard" and self.config["ml"].get("trainer") == "hivemind":
            from ..hive.peer import run_shard as run_peer  # the hivemind image only

            run_peer(self, task)
        elif task["kind"] == "shard":
            from .ml_loop import run_shard  # ML only: basic mode never imports torch

            run_shard(self, task)
        else:
            run_task(self, task, worker_id)
