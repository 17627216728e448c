"""Follow the PS's runs/<run_id>/curve.csv while it grows, for the live view, without trusting it.

The PS appends one row per applied version (ps/report.py says which); the controller reads the same
file through the runs volume. Each `refresh()` reads at most READ_CAP_BYTES of new complete lines from
where the last one stopped, so a huge or fast-growing file costs a bounded amount per call and is never
held whole. Every cell is checked: a column we do not know is ignored, a value that is not a finite
number is empty, a row without a finite `t_s` and `version` is skipped (and counted), a line longer
than MAX_LINE_BYTES is skipped whole. Memory is bounded too: past MAX_POINTS rows the tail halves
the rows that carry no validation loss (evaluated rows are few and are the curve), so a run of any
length keeps its whole time span at a coarser grain. A file that shrank or was replaced is read
again from its start.

Rows get a sequence number `seq` in the order they were accepted; a client asks for the rows after
the last `seq` it holds (rows dropped by the halving are simply not sent any more).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

COLUMNS = ("t_s", "version", "train_loss", "val_loss", "updates_accepted", "updates_rejected", "mean_staleness",
           "bytes_up", "bytes_down")
REQUIRED = ("t_s", "version")
MAX_LINE_BYTES = 1024  # a real row is under 120 bytes
READ_CAP_BYTES = 256 * 1024  # per refresh: ~2,500 rows
MAX_POINTS = 4000  # the PS writes at most ~2,000 rows plus the evaluated ones (ps/report.MAX_CURVE_ROWS)
MAX_STALENESS_BINS = 1000
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def run_dir(runs_dir: Path, run_id: str) -> Path | None:
    """runs_dir/run_id, or None for an id that could leave runs_dir (a run id is a file name)."""
    return Path(runs_dir) / run_id if RUN_ID.match(run_id) and ".." not in run_id else None


def finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class CurveTail:
    def __init__(self, path: Path, max_points: int = MAX_POINTS, read_cap: int = READ_CAP_BYTES):
        self.path, self.max_points, self.read_cap = path, max_points, read_cap
        self.rows: list[dict] = []
        self.skipped = 0  # lines refused (malformed, non-finite time or version, too long)
        self.next_seq = 1  # keeps growing across a reset: a client never mistakes an old row for a new one
        self._reset(None)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self.identity = identity  # (device, inode) of the file read so far
        self.offset = 0
        self.header: list[str] | None = None
        self.partial = b""
        self.discarding = False  # inside a line already known to be too long
        self.rows.clear()

    def refresh(self) -> int:
        """Read what was appended since the last call (at most read_cap bytes); returns rows accepted."""
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                identity = (info.st_dev, info.st_ino)
                if identity != self.identity or info.st_size < self.offset:
                    self._reset(identity)
                fh.seek(self.offset)
                chunk = fh.read(self.read_cap)
        except OSError:  # not written yet (the PS creates it at its first version), or unreadable
            return 0
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()  # an incomplete last line waits for its end
        accepted = 0
        for raw in lines:
            if self.discarding:  # the end of an oversized line
                self.discarding = False
                continue
            if len(raw) > MAX_LINE_BYTES:
                self.skipped += 1
                continue
            accepted += self._line(raw)
        if len(self.partial) > MAX_LINE_BYTES:  # never hold a line without an end
            self.skipped += 0 if self.discarding else 1
            self.partial, self.discarding = b"", True
        if len(self.rows) > self.max_points:
            self._thin()
        return accepted

    def _line(self, raw: bytes) -> int:
        try:
            cells = raw.decode("utf-8").strip().split(",")
        except UnicodeDecodeError:
            self.skipped += 1
            return 0
        if self.header is None:
            if not set(REQUIRED) <= set(cells):
                self.skipped += 1  # not our header: the file is garbage until it is replaced
                return 0
            self.header = cells
            return 0
        if len(cells) != len(self.header):
            self.skipped += 1
            return 0
        values = {name: finite(text) if text else None for name, text in zip(self.header, cells) if name in COLUMNS}
        if dict(zip(self.header, cells)).get("val_set") == "final":
            values["val_loss"] = None  # the final evaluation's set is not the slice the curve draws (ps/report.py)
        if any(values.get(name) is None for name in REQUIRED):
            self.skipped += 1
            return 0
        self.rows.append({"seq": self.next_seq, **{name: values.get(name) for name in COLUMNS}})
        self.next_seq += 1
        return 1

    def _thin(self) -> None:
        """Drop every second row without a validation loss (never the last row) until under the cap."""
        while len(self.rows) > self.max_points:
            kept, plain = [], 0
            for i, row in enumerate(self.rows):
                if row["val_loss"] is None and i != len(self.rows) - 1:
                    plain += 1
                    if plain % 2 == 0:
                        continue
                kept.append(row)
            if len(kept) == len(self.rows):  # nothing left to thin: keep the newest
                kept = kept[-self.max_points:]
            self.rows[:] = kept

    def since(self, seq: int) -> list[dict]:
        return [row for row in self.rows if row["seq"] > seq]

    @property
    def last_seq(self) -> int:
        return self.rows[-1]["seq"] if self.rows else 0


def read_staleness(path: Path, cap: int = 64 * 1024) -> list[list[int]] | None:
    """[[staleness, count], ...] from the PS's staleness.csv (written when the run ends), or None when
    absent. Rows that are not two non-negative integers are skipped; at most MAX_STALENESS_BINS."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(cap).decode("utf-8", errors="replace")
    except OSError:
        return None
    bins: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        parts = line.strip().split(",")
        if len(parts) == 2 and all(p.isdigit() and len(p) < 16 for p in parts):
            bins[int(parts[0])] = bins.get(int(parts[0]), 0) + int(parts[1])
    return [[s, bins[s]] for s in sorted(bins)[:MAX_STALENESS_BINS]]
