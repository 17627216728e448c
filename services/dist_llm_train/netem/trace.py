"""Link traces: a link's rate, delay and loss as they change over time, read from a file.

A preset link names one with `trace: traces/<file>` (relative to the preset's folder) and says what
happens after its end with `trace_end: loop | hold`. Two formats, told apart by the extension:

- `.csv`, this project's own: a header `t_s,rate_mbit,delay_ms,loss_pct`, then one row per step.
  A row's values hold from its `t_s` until the next row's; the first row is at t_s = 0, times
  strictly increase, and the LAST row marks the end of the trace (its `t_s` is the trace's length,
  after which it loops, or keeps that row's values under `hold`). An empty cell keeps the previous
  row's value; empty in the first row, the preset's own value for that field. Lines starting with
  `#` and blank lines are skipped (provenance goes there).
- `.mahi`, Mahimahi's packet-delivery format: one line per delivery opportunity for one 1500-byte
  packet, its time in ms (integers, non-decreasing); the trace's length is the last timestamp (so
  Mahimahi loops it). Converted to a rate per MAHIMAHI_INTERVAL_MS interval: the opportunities in the
  interval times one 1514-byte frame (the packet as our tbf counts it, with its Ethernet header), so
  the link passes the same packets per second. An interval without any opportunity gets one (a tbf
  cannot have rate 0); a trace's last interval may be shorter than the others. Rate only: delay and
  loss stay the preset's.

Pure: `parse_csv` / `parse_mahimahi` take the text and its name; `load` reads a file. Failure:
`TraceError` naming the file and the line, e.g. `netem/traces/x.csv:7: rate_mbit: 'fast' is not a number`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .sizing import FRAME_BYTES

TraceEnd = Literal["loop", "hold"]
CSV_HEADER = ("t_s", "rate_mbit", "delay_ms", "loss_pct")
# Bounds of LinkSpec's fields (preset.py): a trace cannot ask for what a preset could not.
LIMITS = {"rate_mbit": (0.0, 100_000.0, False), "delay_ms": (0.0, 10_000.0, True), "loss_pct": (0.0, 100.0, True)}
MAHIMAHI_INTERVAL_MS = 1000


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and the line."""


class TraceValues(NamedTuple):
    """The fields a step sets; None keeps the preset link's own value."""

    rate_mbit: float | None
    delay_ms: float | None
    loss_pct: float | None

    def update(self) -> dict[str, float]:
        return {k: v for k, v in self._asdict().items() if v is not None}


@dataclass(frozen=True)
class Trace:
    source: str
    starts: tuple[float, ...]  # each step's start, s; the first is 0, all below length_s
    values: tuple[TraceValues, ...]  # what each step sets
    length_s: float  # after this the trace loops, or holds `held`
    held: TraceValues  # the values kept after the end under `hold`

    def at(self, t: float, end: TraceEnd) -> TraceValues:
        """The values in force t seconds after the run started."""
        if t >= self.length_s:
            if end == "hold":
                return self.held
            t = math.fmod(t, self.length_s)
        return self.values[bisect.bisect_right(self.starts, t) - 1]

    def next_change(self, t: float, end: TraceEnd) -> float | None:
        """The first step boundary after t; None once a held trace has ended."""
        if t >= self.length_s and end == "hold":
            return None
        cycle = math.floor(t / self.length_s) * self.length_s
        following = bisect.bisect_right(self.starts, t - cycle)
        return cycle + (self.starts[following] if following < len(self.starts) else self.length_s)

    def all_values(self) -> list[TraceValues]:
        """Every distinct set of values the trace can put in force."""
        return list(dict.fromkeys([*self.values, self.held]))

    def mean_rate(self, start: float, stop: float, end: TraceEnd, base_rate_mbit: float | None) -> float | None:
        """The time-weighted mean rate over [start, stop), the preset's rate where the trace sets none
        (what a throughput bucket over that window should measure); None where the link is unlimited."""
        total, t = 0.0, start
        while t < stop:
            change = self.next_change(t, end)
            until = stop if change is None else min(change, stop)
            rate = self.at(t, end).rate_mbit or base_rate_mbit
            if rate is None:
                return None
            total += rate * (until - t)
            t = until
        return total / (stop - start)


def _number(cell: str, field: str, where: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TraceError(f"{where}: {field}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: {field}: {cell!r} is not a finite number")
    return value


def _checked(value: float, field: str, where: str) -> float:
    low, high, low_allowed = LIMITS[field]
    if value > high or value < low or (value == low and not low_allowed):
        low_text = f">= {low:g}" if low_allowed else f"> {low:g}"
        raise TraceError(f"{where}: {field}: {value:g} is out of range (must be {low_text} and <= {high:g})")
    return value


def parse_csv(text: str, source: str) -> Trace:
    """A `.csv` trace (see the module docstring)."""
    rows: list[tuple[float, TraceValues]] = []
    header_seen = False
    current: list[float | None] = [None, None, None]
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        cells = [c.strip() for c in stripped.split(",")]
        if not header_seen:
            if tuple(cells) != CSV_HEADER:
                raise TraceError(f"{where}: the header must be {','.join(CSV_HEADER)} (got {stripped!r})")
            header_seen = True
            continue
        if len(cells) != len(CSV_HEADER):
            raise TraceError(f"{where}: {len(cells)} cells, expected {len(CSV_HEADER)} ({','.join(CSV_HEADER)})")
        if not cells[0]:
            raise TraceError(f"{where}: t_s: empty (every row needs its time)")
        t = _number(cells[0], "t_s", where)
        if not rows and t != 0:
            raise TraceError(f"{where}: t_s: the first row must be at 0 (got {t:g})")
        if rows and t <= rows[-1][0]:
            raise TraceError(f"{where}: t_s: {t:g} does not follow {rows[-1][0]:g} (times must strictly increase)")
        for k, (field, cell) in enumerate(zip(CSV_HEADER[1:], cells[1:])):
            if cell:
                current[k] = _checked(_number(cell, field, where), field, where)
        rows.append((t, TraceValues(*current)))
    if not header_seen:
        raise TraceError(f"{source}: empty (expected the header {','.join(CSV_HEADER)} and at least two rows)")
    if len(rows) < 2:
        raise TraceError(f"{source}: {len(rows)} row(s); a trace needs at least two (the last one marks its end)")
    return Trace(source, tuple(t for t, _ in rows[:-1]), tuple(v for _, v in rows[:-1]), rows[-1][0], rows[-1][1])


def parse_mahimahi(text: str, source: str, interval_ms: int = MAHIMAHI_INTERVAL_MS) -> Trace:
    """A Mahimahi packet-delivery trace, as a rate per `interval_ms` (see the module docstring)."""
    stamps: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        where = f"{source}:{number}"
        if not stripped.isdigit():
            raise TraceError(f"{where}: {stripped!r} is not a timestamp (a whole number of ms, one per line)")
        stamp = int(stripped)
        if stamps and stamp < stamps[-1]:
            raise TraceError(f"{where}: {stamp} ms comes before the previous line's {stamps[-1]} ms")
        stamps.append(stamp)
    if not stamps or stamps[-1] == 0:
        raise TraceError(f"{source}: no delivery opportunity after 0 ms (the last timestamp is the trace's length)")
    length_ms = stamps[-1]
    intervals = math.ceil(length_ms / interval_ms)
    counts = [0] * intervals
    for stamp in stamps:
        counts[min(stamp // interval_ms, intervals - 1)] += 1  # the last stamp closes the last interval
    values = []
    for k, count in enumerate(counts):
        seconds = (min((k + 1) * interval_ms, length_ms) - k * interval_ms) / 1000
        values.append(TraceValues(max(count, 1) * FRAME_BYTES * 8 / seconds / 1e6, None, None))
    return Trace(source, tuple(k * interval_ms / 1000 for k in range(intervals)), tuple(values),
                 length_ms / 1000, values[-1])


PARSERS = {".csv": parse_csv, ".mahi": parse_mahimahi}


def load(path: Path) -> Trace:
    """Read and parse a trace file by its extension; TraceError if it is unusable."""
    parser = PARSERS.get(path.suffix)
    if parser is None:
        raise TraceError(f"{path}: unknown trace format {path.suffix!r} (use {' or '.join(PARSERS)})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read: {exc}") from None
    return parser(text, str(path))
