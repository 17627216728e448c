"""When the sidecar lets the run start: every declared container has its link, or, after
workers.start_wait_s, the servers and the workers that are there; and the probe's pair is always live."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dist_llm_train.netem.backends.userspace import UserspaceBackend
from dist_llm_train.netem.preset import LinkSpec, load_preset
from dist_llm_train.netem.sidecar import Applied, Sidecar
from dist_llm_train.netem.targets import Target

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"


def sidecar(workers: int, wait_s: float) -> Sidecar:
    car = Sidecar(load_preset("lan", NETEM_DIR), UserspaceBackend(), None, "p", client=None, http=None)
    car.expect_workers, car.start_wait_s = workers, wait_s
    return car


@dataclass
class Handle:
    """What the start logic asks of a helper (helpers.Helper, which needs Docker): whether its target runs."""
    pid: int
    live: bool = True
    path: str = "agent:/nonexistent.sock"

    def alive(self) -> bool:
        return self.live


def add(car: Sidecar, role: str, index: int = 0, exited: bool = False) -> None:
    handle = Handle(1000 + index, live=not exited)
    target = Target(f"id-{role}-{index}", f"p-{role}-{index}", role, index, handle.pid, "10.0.0.1")
    car.applied[target.id] = Applied(target, LinkSpec(), None, {"congestion_control": "cubic"}, handle)


def test_waits_for_every_worker_until_start_wait_s_then_starts_with_those_present(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("dist_llm_train.netem.sidecar.time.monotonic", lambda: now[0])
    car = sidecar(workers=3, wait_s=30.0)
    car.probe_done = True
    add(car, "worker", 0)
    assert not car.ready()  # no controller yet
    add(car, "controller")
    add(car, "worker", 2)
    assert not car.ready() and car.missing() == {"worker-1"}
    now[0] += 29.0
    assert not car.ready()
    now[0] += 1.0
    assert car.ready()


def test_every_worker_present_starts_at_once_and_servers_are_never_waived():
    car = sidecar(workers=2, wait_s=3600.0)
    car.expect_ps, car.probe_done = True, True
    add(car, "controller")
    add(car, "worker", 0)
    add(car, "worker", 1)
    assert not car.ready()  # the PS is never left out, whatever the wait
    add(car, "ps")
    assert car.ready()


def test_the_probe_takes_the_lowest_numbered_live_worker():
    car = sidecar(workers=3, wait_s=1.0)
    add(car, "controller")
    add(car, "worker", 0, exited=True)  # died; its die event not handled yet
    add(car, "worker", 2)
    add(car, "worker", 1)
    worker, peer = car.probe_pair()
    assert (worker.target.index, peer.target.role) == (1, "controller")


def test_a_sidecar_started_into_a_running_run_resumes_its_clock_and_says_so(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("dist_llm_train.netem.sidecar.time.monotonic", lambda: now[0])
    car = sidecar(workers=2, wait_s=60.0)
    car.resume_if_running({"state": "waiting", "elapsed_s": None})
    car.resume_if_running({"state": "finished", "elapsed_s": 80.0})
    assert car.t0 is None and not car.problems  # a run not under way starts the usual way
    car.resume_if_running({"state": "running", "elapsed_s": 42.5})
    assert car.now_t() == 42.5 and car.ready()  # phases resume at the run's time; no probe, no wait
    assert "restarted 42 s into the run" in car.problems["restarted"]
    assert not car.report()["healthy"]  # the controller marks the run degraded


def test_the_report_and_verify_say_which_queue_is_in_force(tmp_path):
    from dist_llm_train.netem.nslink import NamespaceLink
    from dist_llm_train.netem.verify import queue_lines

    car = sidecar(2, 60)
    links = {0: LinkSpec(delay_ms=304, rate_mbit=6.25, queue_packets=362), 1: LinkSpec(delay_ms=40, jitter_ms=8, rate_mbit=10)}
    targets = []
    for index, link in links.items():
        handle = Handle(2000 + index)
        target = Target(f"id-{index}", f"p-worker-{index}", "worker", index, handle.pid, "10.0.0.1")
        ns = NamespaceLink(UserspaceBackend(), handle.path, target.label, 0, workdir=tmp_path)
        car.applied[target.id] = Applied(target, link, ns, {"congestion_control": "cubic"}, handle)
        targets.append(target)
    add(car, "controller")  # nothing installed: no queue
    report = car.links_report()
    assert [report[f"p-worker-{i}"]["queue_packets_in_force"] for i in (0, 1)] == [362, 175]
    assert report["p-controller-0"]["queue_packets_in_force"] is None
    assert queue_lines(targets, report) == ["  p-worker-0: 362 packets (the preset's queue_packets)",
                                            "  p-worker-1: 175 packets (from the BDP rule)"]
