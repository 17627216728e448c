"""A basic-mode task: download the input, compute for tokens / (base_tokens_per_sec * speed)
seconds, upload the result, complete.

Compute is a sleep in steps of BATCH_TOKENS tokens: 82 ms per step at the default 50 k tokens/s,
328 ms for a 4x straggler. Telemetry (tokens/s, step time, epoch = tasks done before this one,
batch = step in this task, download rate) goes out every TELEMETRY_EVERY_S and after the last
step. The result is SHAKE-256 of the input (controller/tasks.py), which the controller checks.

A task whose compute time is not a number of seconds a run can wait (rate not a positive finite
number, or above MAX_COMPUTE_S) is refused: the worker logs why, computes nothing and holds the
task until the run ends (there is no handing a task back), so the run ends `timeout` with it
pending rather than the worker dying on an overflow.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from ..controller.tasks import task_result

if TYPE_CHECKING:
    from .agent import Agent

BATCH_TOKENS = 4096
TELEMETRY_EVERY_S = 0.5
# A synthetic task computes for seconds. Past a day the figures that make its time (tasks.tokens,
# workers.base_tokens_per_sec, workers.speed, the preset's compute_speed) are a mistake; past
# threading.TIMEOUT_MAX (292 years) the worker's wait itself raised OverflowError.
MAX_COMPUTE_S = 86_400.0


class TaskRefused(ValueError):
    """A task this worker cannot compute as given; the message says why."""


def compute_seconds(tokens: int, rate: float) -> float:
    """tokens / rate, the task's compute time; TaskRefused when it is not a time a run can wait."""
    if not (rate > 0 and math.isfinite(rate)):
        raise TaskRefused(f"compute rate {rate!r} tokens/s is not a positive finite number")
    seconds = tokens / rate
    if not 0 <= seconds <= MAX_COMPUTE_S:
        raise TaskRefused(f"{tokens} tokens at {rate:.3g} tokens/s would compute for {seconds:.3g} s, "
                          f"more than {MAX_COMPUTE_S:g} s")
    return seconds


def run_task(agent: "Agent", task: dict[str, Any], worker_id: str) -> None:
    """Returns when the task is completed or dropped (the agent stopped or re-registered);
    client errors (Conflict: lease revoked; Gone: declared dead) propagate to the agent."""
    base, speed = agent.config["workers"]["base_tokens_per_sec"], agent.speed
    rate = base * speed
    try:
        compute_seconds(task["tokens"], rate)
    except TaskRefused as exc:
        agent.log.error("task %s refused: %s (workers.base_tokens_per_sec %g x speed %g); holding it, computing "
                        "nothing, until the run ends", task["task_id"], exc, base, speed)
        while agent.holds(worker_id):
            agent.stopping.wait(agent.heartbeat_interval_s)
        return
    started = time.perf_counter()
    data = agent.client.request("GET", f"/tasks/{task['task_id']}/input", params={"lease": task["lease"]}).content
    took = time.perf_counter() - started
    agent.bytes_down += len(data)
    down_mbit = len(data) * 8 / took / 1e6 if data else None

    tokens, done = task["tokens"], 0
    compute_started = last_sent = time.perf_counter()
    for step in range(1, math.ceil(tokens / BATCH_TOKENS) + 1):
        if not agent.holds(worker_id):
            agent.log.info("task %s dropped (stopping or registered again)", task["task_id"])
            return
        batch = min(BATCH_TOKENS, tokens - done)
        step_started = time.perf_counter()
        agent.stopping.wait(batch / rate)
        now = time.perf_counter()
        agent.compute_s += now - step_started
        done += batch
        if now - last_sent >= TELEMETRY_EVERY_S or done == tokens:
            agent.send_telemetry(tokens_per_sec=done / (now - compute_started), step_time_s=now - step_started,
                                 epoch=agent.tasks_done, batch=step, down_mbit=down_mbit)
            last_sent, down_mbit = now, None  # one download-rate sample per task
    if not agent.holds(worker_id):
        return
    status = agent.complete(task, task_result(data, task["output_kb"]))
    agent.tasks_done += 1
    agent.log.info("task %s %s in %.2f s", task["task_id"], status, time.perf_counter() - started)
