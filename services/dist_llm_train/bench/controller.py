"""`dist-llm-train bench controller`: control-plane latency and scheduling-cycle time.

API load: for each N in --sizes, one controller process on loopback and N simulated workers
(asyncio tasks in this process, each with two keep-alive connections like the agent's two
threads) that register, heartbeat at 1 Hz and work: ask for a task, download its input, hold it for HOLD_S seconds of pretend compute, upload
the SHAKE-256 result (the controller checks it). The run has 2N tasks, so work never runs out
in the measured --seconds. Reported: requests/s, latency seen by the workers (includes this
process's own event-loop delay, which grows with N on a shared machine), the controller's own
handling time per request and its scheduling-cycle time (both from /metrics, over the last
4096), and the controller's CPU time per request.

Schedulers: for each scheduler, one cycle over --tasks pending tasks x --workers idle workers:
the pure `assign()` call over views (median and max of --repeats), and the same cycle through
the API: the workers register and report telemetry while the run waits behind LINK_GATE=1, a
links report opens it, and one next-task request runs the cycle (snapshot, assign, all leases in
one transaction).

It prints figures; it asserts nothing. The machine is shared: read them with its load in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from ..config import RunConfig, apply_overrides, validate
from ..controller.scheduling import SCHEDULERS
from ..controller.scheduling.base import TaskView, WorkerView
from ..controller.tasks import generate_tasks, task_result
from ..demo import LocalRun

HOLD_S = (5.0, 15.0)  # pretend compute per task: N workers complete about N/10 tasks per second
LINKS_READY = {"profile": "bench", "backend": "netem", "seed": 0, "ready": True, "healthy": True, "problems": [],
               "links": {}, "probe": None}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="50,200,1000", help="simulated worker counts (default 50,200,1000)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per size (default 15)")
    parser.add_argument("--tasks", type=int, default=500, help="pending tasks of the scheduler cycle (default 500)")
    parser.add_argument("--workers", type=int, default=200, help="idle workers of the scheduler cycle (default 200)")
    parser.add_argument("--repeats", type=int, default=5, help="pure assign() calls per scheduler (default 5)")
    parser.add_argument("--part", choices=("all", "api", "schedulers"), default="all")


def bench_config(**overrides: Any) -> RunConfig:
    base = {"name": "bench", "mode": "basic", "seed": 1, "timeout_s": 3600.0,
            "controller": {"heartbeat_interval_s": 1.0, "heartbeat_timeout_s": 10.0},
            "workers": {"count": 1, "capacity": [1.0, 0.5, 2.0], "memory_mb": [4096, 1024, 8192]},
            "tasks": {"count": 1, "tokens": [10_000, 90_000], "memory_mb": [256, 2048], "input_kb": [1, 4],
                      "output_kb": [1, 2]}}
    return validate(RunConfig, apply_overrides(base, overrides), "bench config")


class Connection:
    """One keep-alive HTTP/1.1 connection over asyncio streams: just enough client for the load.
    httpx's async client spent about 4 ms of CPU per request here, several times what the
    controller spends answering one, so with it this benchmark would mostly measure the client."""

    def __init__(self, port: int, token: str):
        self.port, self.auth = port, f"Bearer {token}".encode()
        self.identity = b""  # the worker's secret header once registered (controller/deps.py)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in (1, 2):  # the server closes a connection idle for 5 s: open a new one once
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                return await self._exchange(method, target, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(b"%s %s HTTP/1.1\r\nhost: bench\r\nauthorization: %s\r\n%scontent-type: application/json"
                          b"\r\ncontent-length: %d\r\n\r\n%s" % (method.encode(), target.encode(), self.auth,
                                                                  self.identity, len(body), body))
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed by the server")
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def identify(self, secret: str) -> None:
        """Send this worker's secret (its registration's answer) on every later request."""
        self.identity = b"x-worker-secret: %s\r\n" % secret.encode()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors = 0
        self.measuring = False

    async def call(self, conn: Connection, route: str, method: str, target: str, payload: Any = None,
                   raw: bytes = b"") -> bytes | None:
        """The answer's body, or None (counted as an error while measuring) for anything but 2xx."""
        started = time.perf_counter()
        try:
            status, body = await conn.request(method, target, json.dumps(payload).encode() if payload is not None
                                              else raw)
        except (OSError, asyncio.IncompleteReadError):
            self.errors += self.measuring
            return None
        if self.measuring:
            self.latency[route].append(time.perf_counter() - started)
            self.errors += not 200 <= status < 300
        return body if 200 <= status < 300 else None


async def simulated_worker(port: int, token: str, rec: Recorder, index: int, stop: asyncio.Event,
                           registering: asyncio.Semaphore) -> None:
    work, beat = Connection(port, token), Connection(port, token)  # like the agent: one per thread
    async with registering:
        answer = await rec.call(work, "register", "POST", "/workers/register",
                                {"name": f"sim-{index}", "index": index, "capacity": 1.0, "memory_mb": 8192})
    if answer is None:
        return
    worker_id, secret = json.loads(answer)["worker_id"], json.loads(answer)["secret"]
    work.identify(secret)
    beat.identify(secret)
    beats = asyncio.create_task(heartbeats(beat, rec, worker_id, stop))
    rng = random.Random(index)
    while not stop.is_set():
        answer = await rec.call(work, "next-task", "POST", f"/workers/{worker_id}/next-task", {})
        task = json.loads(answer)["task"] if answer is not None else None
        if task is None:
            await asyncio.sleep(0.5)
            continue
        data = await rec.call(work, "input", "GET", f"/tasks/{task['task_id']}/input?lease={task['lease']}")
        if data is None:
            continue
        await asyncio.sleep(rng.uniform(*HOLD_S))
        await rec.call(work, "complete", "POST",
                       f"/tasks/{task['task_id']}/complete?worker_id={worker_id}&lease={task['lease']}",
                       raw=task_result(data, task["output_kb"]))
    await beats
    work.close()
    beat.close()


async def heartbeats(conn: Connection, rec: Recorder, worker_id: str, stop: asyncio.Event) -> None:
    await asyncio.sleep(random.random())  # spread the beats over the second
    while not stop.is_set():
        started = time.perf_counter()
        await rec.call(conn, "heartbeat", "POST", f"/workers/{worker_id}/heartbeat", {})
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))


async def load(port: int, token: str, n: int, seconds: float, on_start) -> Recorder:
    """Run N simulated workers; measure `seconds` after a warm-up (registrations, first cycle)."""
    rec = Recorder()
    stop = asyncio.Event()
    registering = asyncio.Semaphore(50)
    workers = [asyncio.create_task(simulated_worker(port, token, rec, i, stop, registering)) for i in range(n)]
    await asyncio.sleep(min(10.0, 1.0 + n / 100))
    on_start()
    rec.measuring = True
    await asyncio.sleep(seconds)
    rec.measuring = False
    stop.set()
    await asyncio.wait(workers, timeout=30)
    return rec


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> dict[str, float]:
    """Samples of /metrics, keyed by name and labels as written."""
    samples = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def api_part(sizes: list[int], seconds: float, scratch: Path) -> None:
    print(f"Control-plane API: N simulated workers, heartbeats at 1 Hz, 2N tasks held {HOLD_S[0]:g}-{HOLD_S[1]:g} s, "
          f"{seconds:g} s measured per N")
    print(f"{'N':>5} {'req/s':>6} {'p50':>7} {'p99':>7} {'beat p99':>9} {'server p50':>11} {'server p99':>11} "
          f"{'cpu/req':>8} {'cycle p50':>10} {'cycle p99':>10} {'cycles':>7} {'errors':>7}")
    for n in sizes:
        config = bench_config(**{"tasks.count": 2 * n, "workers.count": min(n, 256)})
        with open(os.devnull, "w") as quiet, LocalRun(config, scratch / "runs", output=quiet) as run:
            run.start_controller()
            pid = run.controller.pid
            marks: list[float] = []
            rec = asyncio.run(load(int(run.url.rsplit(":", 1)[1]), run.env["RUN_TOKEN"], n, seconds,
                                   lambda: marks.append(cpu_seconds(pid))))
            marks.append(cpu_seconds(pid))  # includes the wind-down: a slight over-estimate
            metrics = scrape(run.url)
        every = [x for values in rec.latency.values() for x in values]
        server = [metrics.get(f'dlt_request_seconds{{quantile="{q}"}}') for q in (0.5, 0.99)]
        cycle = [metrics.get(f'dlt_schedule_cycle_seconds{{quantile="{q}"}}') for q in (0.5, 0.99)]
        print(f"{n:>5} {len(every) / seconds:>6.0f} {ms(quantile(every, 0.5)):>7} {ms(quantile(every, 0.99)):>7} "
              f"{ms(quantile(rec.latency['heartbeat'], 0.99)):>9} {ms(server[0]):>11} {ms(server[1]):>11} "
              f"{ms((marks[1] - marks[0]) / max(1, len(every))):>8} {ms(cycle[0]):>10} {ms(cycle[1]):>10} "
              f"{metrics.get('dlt_schedule_cycle_seconds_count', 0):>7.0f} {rec.errors:>7}", flush=True)
    print("ms; p50/p99: request latency seen by the simulated workers; server: handling time inside the controller;"
          " cpu/req: controller CPU per request;\ntarget: p99 < 50 ms at N = 200\n")


def worker_views(count: int, seed: int) -> list[WorkerView]:
    rng = random.Random(seed)
    return [WorkerView(f"w-{i}", i, rng.choice([0.5, 1.0, 2.0]), rng.choice([1024, 2048, 4096, 8192]),
                       idle_since=rng.uniform(0, 10), ewma_tokens_per_sec=rng.uniform(10_000, 100_000),
                       rtt_ms=rng.uniform(1, 300), down_mbit=rng.uniform(1, 1000)) for i in range(count)]


def pure_cycle(name: str, tasks: int, workers: int, repeats: int) -> tuple[float, float, int]:
    task_views = [TaskView(t.task_id, t.seq, t.tokens, t.priority, t.memory_mb, t.input_kb, t.output_kb)
                  for t in generate_tasks(bench_config(**{"tasks.count": tasks}))]
    worker_list = worker_views(workers, seed=1)
    scheduler = SCHEDULERS[name]()
    took, pairs = [], {}
    for _ in range(repeats):
        started = time.perf_counter()
        pairs = scheduler.assign(task_views, worker_list)
        took.append(time.perf_counter() - started)
    return statistics.median(took), max(took), len(pairs)


async def api_cycle(url: str, token: str, sidecar_token: str, workers: int) -> float:
    """Register `workers` with telemetry while the run waits, open the gate (as the sidecar), time one next-task."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(2)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60.0) as client:
        async def join(i: int) -> tuple[str, dict[str, str]]:
            answer = await client.post("/workers/register", json={
                "name": f"sim-{i}", "index": i, "capacity": rng.choice([0.5, 1.0, 2.0]),
                "memory_mb": rng.choice([1024, 2048, 4096, 8192])})
            registered = answer.raise_for_status().json()
            worker_id, own = registered["worker_id"], {"X-Worker-Secret": registered["secret"]}
            await client.post(f"/workers/{worker_id}/telemetry", headers=own, json={
                "tokens_per_sec": rng.uniform(10_000, 100_000), "down_mbit": rng.uniform(1, 1000)})
            await client.post(f"/workers/{worker_id}/heartbeat", headers=own,
                              json={"telemetry": {"rtt_ms": rng.uniform(1, 300)}})
            return worker_id, own

        joined = []
        for start in range(0, workers, 50):
            joined += await asyncio.gather(*(join(i) for i in range(start, min(workers, start + 50))))
        (await client.post("/links", json=LINKS_READY, headers={"X-Role-Token": sidecar_token})).raise_for_status()
        first, own = joined[0]
        started = time.perf_counter()
        (await client.post(f"/workers/{first}/next-task", json={}, headers=own)).raise_for_status()
        return time.perf_counter() - started


def scheduler_part(tasks: int, workers: int, repeats: int, scratch: Path) -> None:
    print(f"Scheduling cycle: {tasks} pending tasks x {workers} idle workers")
    print(f"{'scheduler':<14} {'assign() median':>16} {'max':>8} {'pairs':>6} {'API cycle':>10} {'API request':>12} "
          f"{'leases':>7}")
    for name in SCHEDULERS:
        median, worst, pairs = pure_cycle(name, tasks, workers, repeats)
        # registering many workers through httpx takes a while: nobody may be judged dead meanwhile
        config = bench_config(**{"tasks.count": tasks, "workers.count": min(workers, 256),
                                 "controller.scheduler": name, "controller.heartbeat_timeout_s": 600.0})
        with open(os.devnull, "w") as quiet, LocalRun(config, scratch / "runs", output=quiet) as run:
            run.env["LINK_GATE"] = "1"
            run.start_controller()
            request = asyncio.run(api_cycle(run.url, run.env["RUN_TOKEN"], run.env["SIDECAR_TOKEN"], workers))
            metrics = scrape(run.url)
        print(f"{name:<14} {ms(median):>16} {ms(worst):>8} {pairs:>6} "
              f"{ms(metrics.get('dlt_schedule_cycle_seconds_sum')):>10} {ms(request):>12} "
              f"{metrics.get('dlt_assignments_total', 0):>7.0f}", flush=True)
    print("times in ms; API cycle = snapshot + assign() + leases in one transaction, as the controller timed it;"
          " target: gale-shapley < 1000 ms")


def main(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"bench controller on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start\n")
    with tempfile.TemporaryDirectory(prefix="dlt-bench-") as scratch:
        if args.part in ("all", "api"):
            api_part(sizes, args.seconds, Path(scratch))
        if args.part in ("all", "schedulers"):
            scheduler_part(args.tasks, args.workers, args.repeats, Path(scratch))
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0
