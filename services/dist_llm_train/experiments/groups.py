"""Rows into groups of repeats, and each ML variant paired with its baseline: what the report's tables and plots
are drawn from. No output here."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..results import is_folder_name, read_rows
from .runner import OK_STATUS
from .stats import Interval, Verdict, mean_interval, verdict

MODES = ("basic", "ml")
# Row fields that tell two runs of one config apart; a label shows those that vary within a mode.
VARIANT_FIELDS = ("scheduler", "trainer", "protocol", "codec", "aggregation", "window", "num_workers")
# The baseline value of each ML factor: a variant that differs from another only in one of these is
# compared with it. The window is the round under sync, so protocol comparisons ignore it.
BASELINE = {"protocol": "async", "codec": "none", "aggregation": "mean"}


def number(value: str | None) -> float | None:
    """A finite number, or None (a cell that is empty, not a number, NaN or infinite)."""
    try:
        parsed = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return parsed if parsed is not None and math.isfinite(parsed) else None


DEGRADED_STATUS = "degraded"
# netem/lateness.py's words for its only two kinds of problem: timer lateness, and drops nobody asked for
LATE, UNASKED_DROP = "released later than the tolerance", "dropped that the preset did not ask for"


def late_only(row: dict[str, str]) -> bool:
    """A `degraded` row whose only fault is the delayers' timer lateness: its emulation problems are
    lateness and no unasked drop, and nothing else degraded the links (a sidecar that died, say)."""
    reason = row.get("reason") or ""
    _, marker, problems = reason.partition("; emulation out of tolerance: ")
    return (row.get("status") == DEGRADED_STATUS and bool(marker) and "links degraded:" not in reason
            and LATE in problems and UNASKED_DROP not in problems)


@dataclass
class Group:
    """The runs of one mode, profile and config variant (its repeats). `with_late`: the statistics also
    count its late_only rows (the report's --include-late)."""

    mode: str
    profile: str
    label: str
    rows: list[dict[str, str]] = field(default_factory=list)
    with_late: bool = False

    @property
    def ok(self) -> list[dict[str, str]]:
        """The rows the statistics count: finished ones (and, with_late, the late_only ones)."""
        return [r for r in self.rows if r.get("status") == OK_STATUS or (self.with_late and late_only(r))]

    @property
    def late(self) -> int:
        """How many of the counted rows are late_only (degraded) ones."""
        return sum(1 for r in self.ok if r.get("status") != OK_STATUS)

    def values(self, column: str) -> list[float]:
        return [v for v in (number(r.get(column)) for r in self.ok) if v is not None]

    def mean(self, column: str) -> float | None:
        values = self.values(column)
        return statistics.fmean(values) if values else None

    def interval(self, column: str) -> Interval | None:
        """Mean and 95 % confidence interval over the ok runs that have a value."""
        return mean_interval(self.values(column))

    def half(self, column: str) -> float:
        """The interval's half-width; 0 for a single run (drawn as no error bar)."""
        interval = self.interval(column)
        return interval.half or 0.0 if interval else 0.0

    def setting(self, name: str) -> str:
        """A variant field of the group (the same in all its rows: it is part of the label)."""
        return (self.rows[0].get(name) or "") if self.rows else ""

    def rate(self, part: str, other: str) -> float | None:
        """sum(part) / sum(part + other) over the ok runs, e.g. accepted / (accepted + rejected)."""
        a, b = sum(self.values(part)), sum(self.values(other))
        return a / (a + b) if a + b > 0 else None


def read_mode_rows(runs_dir: Path) -> dict[str, list[dict[str, str]]]:
    rows = {}
    for mode in MODES:
        path = runs_dir / f"runs_{mode}.csv"
        rows[mode] = read_rows(path) if path.is_file() else []
    return rows


def varying_fields(rows: list[dict[str, str]]) -> list[str]:
    return [f for f in VARIANT_FIELDS if len({r.get(f, "") for r in rows}) > 1]


def run_file(runs_dir: Path, row: dict[str, str], name: str) -> Path | None:
    """<runs>/<run_id>/<name> of a row; None when its run_id is not one folder name, so that no row
    makes the report read outside the runs folder."""
    run_id = row.get("run_id")
    return runs_dir / run_id / name if is_folder_name(run_id) else None


def run_json(runs_dir: Path, row: dict[str, str]) -> dict:
    """The run's run.json as a dict; {} when it is missing, unreadable or not an object."""
    path = run_file(runs_dir, row, "run.json")
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def variant(runs_dir: Path, row: dict[str, str]) -> str:
    """Digest of the run's resolved config (its run.json) without the seed: runs that differ only
    by seed are repeats of one variant; any other difference (a swept field the row has no column
    for) makes another variant. Without run.json, the row's config_hash (seed included)."""
    config = run_json(runs_dir, row).get("config")
    if not isinstance(config, dict):
        return row.get("config_hash", "")
    blob = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def group_rows(rows_by_mode: dict[str, list[dict[str, str]]], runs_dir: Path, with_late: bool = False) -> list[Group]:
    """Groups of repeats, in the order their first run appears (the matrix's order). A label is the
    config name and the row fields that vary within the mode, plus the variant digest where two
    variants would otherwise share a label."""
    groups: dict[tuple[str, str, str], Group] = {}
    for mode in MODES:
        rows = rows_by_mode[mode]
        fields = varying_fields(rows)
        labels = [row.get("config", "") + "".join(f" {f.replace('num_', '')}={row.get(f, '')}" for f in fields)
                  for row in rows]
        variants = [variant(runs_dir, row) for row in rows]
        shared = {label for label in labels if len({v for l, v in zip(labels, variants) if l == label}) > 1}
        for row, label, digest in zip(rows, labels, variants):
            key = (mode, row.get("profile", ""), label + (f" #{digest[:6]}" if label in shared else ""))
            groups.setdefault(key, Group(*key, with_late=with_late)).rows.append(row)
    return list(groups.values())


def end_kind(row: dict[str, str]) -> str:
    """What ended a run, from its reason (ps/server.py words it): target, budget, cap or other."""
    reason = row.get("reason") or ""
    if reason.startswith("target_val_loss"):
        return "target"
    return next((kind for kind in ("budget", "cap") if reason.startswith(f"{kind}:")), "other")


@dataclass(frozen=True)
class Comparison:
    """A variant against its baseline in one profile: the factor that differs and the two verdicts."""

    profile: str
    factor: str
    variant: Group
    baseline: Group
    time: Verdict
    mbytes: Verdict


def comparisons(groups: list[Group]) -> list[Comparison]:
    """Each ML group whose factor differs from BASELINE against the group in the same profile and config that
    has that factor at its baseline value and every other variant field equal (the window only when the
    factor is not the protocol); Welch's t on time-to-target and bytes-to-target."""
    ml = [g for g in groups if g.mode == "ml" and g.ok]
    found = []
    for g in ml:
        for factor, base in BASELINE.items():
            if g.setting(factor) in ("", base):
                continue
            same = [f for f in (*VARIANT_FIELDS, "config") if f != factor and not (factor == "protocol" and f == "window")]
            baseline = next((b for b in ml if b.profile == g.profile and b.setting(factor) == base
                             and all(b.setting(f) == g.setting(f) for f in same)), None)
            if baseline is not None:
                found.append(Comparison(g.profile, factor, g, baseline,
                                        verdict(g.values("time_to_target_s"), baseline.values("time_to_target_s")),
                                        verdict(g.values("bytes_to_target"), baseline.values("bytes_to_target"))))
    return found
