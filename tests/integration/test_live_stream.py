"""The live view's event stream on a real controller process (uvicorn on loopback): basic workers
complete tasks while a client listens; changes arrive as they happen, at most every half second, the
stream ends with the run, and an open stream never holds up the controller's shutdown."""

from __future__ import annotations

import json
import signal
import time

import httpx
from basic_support import ci_run


def read_events(lines, until) -> list[tuple[float, dict]]:
    """(arrival time, update) of each event of the stream's `lines` until `until(update)` or its end."""
    received, data = [], None
    for line in lines:
        if line.startswith("data: "):
            data = json.loads(line[len("data: "):])
        elif line == "" and data is not None:
            received.append((time.monotonic(), data))
            if until(data):
                break
            data = None
    return received


def test_changes_stream_live_and_the_stream_ends_with_the_run(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start_controller()
        with httpx.stream("GET", run.url + "/ui/events", timeout=30) as stream:
            lines = stream.iter_lines()
            first = read_events(lines, until=lambda u: True)
            for index in range(2):
                run.start_worker(index)
            updates = first + read_events(lines, until=lambda u: False)  # to the stream's own end

    completed = [u["status"]["tasks"]["completed"] for _, u in updates]
    assert completed[0] == 0 and completed[-1] == updates[-1][1]["status"]["tasks"]["total"] > 0
    assert len(set(completed)) >= 3, completed  # the count was seen growing, not only at the end
    assert updates[-1][1]["ended"] is True and updates[-1][1]["status"]["run"]["state"] == "finished"
    assert not [u for _, u in updates[:-1] if u["ended"]]
    gaps = [b - a for (a, _), (b, _) in zip(updates, updates[1:])]
    assert min(gaps) > 0.4, gaps  # at most two updates a second (half-second ticks, some slack for scheduling)


def test_an_open_stream_does_not_hold_up_the_controllers_stop(tmp_path, process_log):
    with ci_run(tmp_path, process_log) as run:
        run.start_controller()
        with httpx.stream("GET", run.url + "/ui/events", timeout=30) as stream:
            read_events(stream.iter_lines(), until=lambda u: True)
            started = time.monotonic()
            run.controller.send_signal(signal.SIGTERM)
            code = run.controller.wait(timeout=15)
            stopped = time.monotonic() - started

    assert code in (0, -signal.SIGTERM) and stopped < 2, stopped  # (newer uvicorn exits by the signal it got)
    assert "Exception in ASGI application" not in (tmp_path / "processes.log").read_text()  # the stream ended itself
