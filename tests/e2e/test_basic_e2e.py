"""Basic mode through the real compose stack: a run completes every task exactly once and writes
its row; a killed worker and a restarted controller change nothing in the outcome; a bad config
is refused before any service starts."""

from __future__ import annotations

import csv
import os
import subprocess
import time

from .stack import REPO

IMAGE = os.environ.get("IMAGE", "dist-llm-train:dev")
CI_TASKS = 24  # tasks.count of configs/basic_ci.yaml


def read_row(stack, run_id: str) -> dict[str, str]:
    with open(stack.runs_dir / run_id / "row.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    return rows[0]


def metric(stack, name: str) -> float:
    text = stack.compose("exec", "-T", "controller", "python3", "-c",
                         "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
                         ).stdout
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not found")


def wait_running(stack, timeout: float = 120) -> dict:
    return stack.wait_for(lambda s: s["run"]["state"] == "running", timeout, "the run to start", interval=0.5)


def test_basic_run_completes_every_task_once_and_writes_its_row(make_stack):
    stack = make_stack(config="configs/basic_ci.yaml", workers=4)
    stack.up()
    status = stack.wait_end(timeout=240)

    run = status["run"]
    assert run["state"] == "finished", run
    assert status["tasks"] == {"total": CI_TASKS, "pending": 0, "assigned": 0, "completed": CI_TASKS, "requeues": 0}
    assert metric(stack, "dlt_completions_total") == CI_TASKS
    assert metric(stack, "dlt_stale_completions_total") == 0
    assert sorted(w["index"] for w in status["workers"]) == [0, 1, 2, 3]

    row = read_row(stack, run["id"])
    assert row["status"] == "finished"
    assert row["num_completed_tasks"] == str(CI_TASKS) and row["num_pending_tasks"] == "0"
    assert row["num_workers"] == "4" and row["netem_profile"] == "lan" and row["backend"] in ("netem", "userspace")
    assert float(row["mean_ewma_tokens_per_sec"]) > 0 and float(row["measured_rtt_ms"]) >= 0
    assert (stack.runs_dir / run["id"] / "run.json").stat().st_size > 0
    merged = list(csv.DictReader(open(stack.runs_dir / "runs_basic.csv", newline="")))
    assert [r["run_id"] for r in merged] == [run["id"]]
    # Each worker sees the end of the run, then idles (its link stays measurable) until `down`.
    deadline = time.monotonic() + 30
    while stack.logs("worker").count("idle until the stack stops") < 4 and time.monotonic() < deadline:
        time.sleep(1)
    assert stack.logs("worker").count("idle until the stack stops") == 4, stack.logs("worker")
    assert stack.status()["run"]["state"] == "finished"
    # ... and stays healthy meanwhile (compose's healthcheck: the age of the file its heartbeats touch)
    def health() -> list[str]:
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", *stack.containers("worker")],
                              capture_output=True, text=True, check=True).stdout.split()
    deadline = time.monotonic() + 30
    while health() != ["healthy"] * 4 and time.monotonic() < deadline:
        time.sleep(1)
    assert health() == ["healthy"] * 4

def hold_victim_with_a_task(stack, victim: str, timeout: float = 60) -> str:
    """Pause `victim` at a moment it holds a task and return that task's id. Paused, it can neither
    finish the task nor take another, so the status read after the pause is the state it dies in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        subprocess.run(["docker", "pause", victim], check=True, capture_output=True)
        held = [w["task"] for w in stack.status()["workers"] if w["name"] == victim and w["task"]]
        if held:
            return held[0]
        subprocess.run(["docker", "unpause", victim], check=True, capture_output=True)
        time.sleep(0.3)
    raise AssertionError(f"{victim} never held a task within {timeout} s")


def test_killed_worker_task_is_requeued_once_and_the_run_completes(make_stack):
    stack = make_stack(config="configs/basic_ci.yaml", workers=4)
    stack.up()
    wait_running(stack)
    victim = f"{stack.project}-worker-2"
    task = hold_victim_with_a_task(stack, victim)
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)  # a paused container dies too

    status = stack.wait_end(timeout=240)
    assert status["run"]["state"] == "finished", status["run"]
    assert status["tasks"]["completed"] == CI_TASKS and status["tasks"]["pending"] == 0
    assert status["tasks"]["requeues"] == 1, (task, status["tasks"])  # its task went back exactly once
    assert metric(stack, "dlt_completions_total") == CI_TASKS  # ... and was completed once, by another worker
    assert metric(stack, "dlt_stale_completions_total") == 0
    dead = [w for w in status["workers"] if w["name"] == victim and w["status"] == "dead"]
    assert dead and not dead[0]["task"], status["workers"]
    assert read_row(stack, status["run"]["id"])["num_completed_tasks"] == str(CI_TASKS)


def test_a_worker_lost_before_the_start_does_not_hold_the_run(make_stack):
    """Killed while the sidecar applies and probes the links (the probe's first choice, worker 0), it
    leaves the link set; after workers.start_wait_s (20 s in basic_ci) the run starts with the others,
    completes every task exactly once, and the row says who was missing."""
    stack = make_stack(config="configs/basic_ci.yaml", workers=4)
    stack.up()
    victim = f"{stack.project}-worker-1"  # index 0
    assert stack.status()["run"]["state"] == "waiting"
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)

    started = wait_running(stack, timeout=150)
    assert started["links"]["missing"] == ["worker-0"], started["links"]
    status = stack.wait_end(timeout=240)
    assert status["run"]["state"] == "finished", status["run"]
    assert status["tasks"] == {"total": CI_TASKS, "pending": 0, "assigned": 0, "completed": CI_TASKS, "requeues": 0}
    assert metric(stack, "dlt_completions_total") == CI_TASKS and metric(stack, "dlt_stale_completions_total") == 0
    row = read_row(stack, status["run"]["id"])
    assert row["status"] == "finished" and row["num_completed_tasks"] == str(CI_TASKS)
    assert "started with 3 of 4 workers (no running container after workers.start_wait_s: worker-0)" in row["reason"]
    assert "probe" not in " ".join(started["links"]["problems"]), started["links"]["problems"]


def test_controller_restart_mid_run_loses_nothing(make_stack):
    stack = make_stack(config="configs/basic_ci.yaml", workers=4)
    stack.up()
    before = stack.wait_for(lambda s: s["run"]["state"] == "running" and s["tasks"]["completed"] >= 2, 120,
                            "the run to complete its first tasks", interval=0.5)
    stack.compose("restart", "controller", timeout=120)
    after = stack.wait_for(lambda s: True, 60, "the restarted controller")

    assert after["run"]["id"] == before["run"]["id"]  # the same run resumed, not a fresh one
    assert after["tasks"]["completed"] >= before["tasks"]["completed"]  # nothing completed was forgotten
    assert 0 < before["tasks"]["completed"] < CI_TASKS  # the restart really was mid-run
    status = stack.wait_end(timeout=240)
    assert status["run"]["state"] == "finished", status["run"]
    assert status["tasks"]["completed"] == CI_TASKS and status["tasks"]["pending"] == 0
    assert [p.name for p in stack.runs_dir.iterdir() if p.is_dir()] == [before["run"]["id"]]
    assert read_row(stack, before["run"]["id"])["num_completed_tasks"] == str(CI_TASKS)


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    bad = REPO / ".e2e" / "bad_config.yaml"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("name: bad\nmode: basic\ncontroller:\n  scheduler: round-robin\n")
    try:
        done = subprocess.run(
            ["docker", "run", "--rm", "-v", f"{bad}:/app/configs/bad.yaml:ro", IMAGE,
             "dist-llm-train", "check", "--config", "configs/bad.yaml", "--profile", "lan"],
            capture_output=True, text=True, timeout=120)
    finally:
        bad.unlink()
    assert done.returncode == 2
    assert "configs/bad.yaml: controller.scheduler" in done.stderr and "round-robin" in done.stderr
