"""In-process counters and timing windows, rendered as Prometheus text (`GET /metrics`).

Counters restart from zero with the process, as Prometheus expects of counters. Timings keep
the last WINDOW observations: quantiles over them answer "how long does it take now", which
is what the benchmark and a dashboard read; _sum and _count cover the whole process life.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Iterable

WINDOW = 4096
QUANTILES = (0.5, 0.9, 0.99)


class Timing:
    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.total += seconds
        self.count += 1

    def quantile(self, q: float) -> float | None:
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# HTTP methods counted under their own name; any other method string a client sends is counted as
# "other", so that made-up methods cannot grow /metrics (measured before: 5000 requests with random
# methods took it from 2.3 KB to 612 KB) nor put unescaped text into a label.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()  # (method, route, status code)
        self.request_seconds = Timing()  # handling time inside the controller, per request
        self.cycle_seconds = Timing()  # one scheduling cycle: snapshot, scheduler, leases
        self.events: Counter[str] = Counter()  # heartbeats_missed, workers_dead, requeues, ...

    def render(self, gauges: Iterable[tuple[str, str, str | None, dict[str, float]]]) -> str:
        """Prometheus text. `gauges` are read from the store at scrape time, each as
        (metric name, help, label name or None, {label value: number})."""
        out: list[str] = []
        for name, help_text, label, values in gauges:
            out += _family(name, help_text, "gauge",
                           ((f'{{{label}="{_escape(k)}"}}' if label else "", v) for k, v in values.items()))
        out += _family("dlt_requests_total", "HTTP requests handled, by method, route and status code", "counter",
                       ((f'{{method="{m}",route="{_escape(r)}",code="{c}"}}', n)
                        for (m, r, c), n in sorted(self.requests.items())))
        errors: Counter[int] = Counter()
        for (_, _, code), n in self.requests.items():
            if 400 <= code < 500:
                errors[code] += n
        out += _family("dlt_client_errors_total", "HTTP 4xx answers by status code", "counter",
                       ((f'{{code="{c}"}}', n) for c, n in sorted(errors.items())))
        for event, help_text in EVENTS.items():
            out += _family(f"dlt_{event}_total", help_text, "counter", [("", self.events[event])])
        out += _summary("dlt_request_seconds", "time to handle one HTTP request inside the controller",
                        self.request_seconds)
        out += _summary("dlt_schedule_cycle_seconds",
                        "one scheduling cycle: snapshot of pending tasks and idle workers, scheduler, leases",
                        self.cycle_seconds)
        return "\n".join(out) + "\n"


EVENTS = {
    "registrations": "worker registrations (every incarnation counts)",
    "heartbeats_missed": "workers silent for more than two heartbeat intervals (once per silence)",
    "workers_dead": "workers declared dead after heartbeat_timeout_s of silence",
    "requeues": "tasks returned to pending because their worker died or restarted",
    "assignments": "leases granted",
    "completions": "tasks completed (a retried completion with the same lease is not counted)",
    "stale_completions": "completions refused with 409 (revoked or foreign lease)",
}


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str, kind: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"] + [f"{name}{labels} {value:g}"
                                                                       for labels, value in samples]


def _summary(name: str, help_text: str, timing: Timing) -> list[str]:
    samples = [(f'{{quantile="{q}"}}', timing.quantile(q)) for q in QUANTILES]
    lines = [f"# HELP {name} {help_text} (quantiles over the last {WINDOW})", f"# TYPE {name} summary"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples if value is not None]
    return lines + [f"{name}_sum {timing.total:g}", f"{name}_count {timing.count}"]
