"""`dist-llm-train report`: the results-at-a-glance table and plots, from the rows under runs/.

Reads runs/runs_basic.csv, runs/runs_ml.csv and each ML run's curve.csv and staleness.csv; writes
runs/report/results.md, one PNG per plot (for papers), and the page: index.html with interactive
charts, which works offline and installs (webpage.py). Statistics cover the runs whose status is
`finished`; the others are listed with their reason. A plot is drawn only when its data exist; what
is missing is said in results.md.

Repeats: tables give the mean and its 95 % confidence interval (Student t, experiments/stats.py) with n;
curves are the mean over repeats with a 95 % band. ML comparisons: each variant against its baseline in
the same profile (the variant with the factor at its BASELINE value, every other field equal), with a
verdict from Welch's t-test on time-to-target and on bytes-to-target (runs that reached the target).
With `--readme README.md` the section between the results markers of the README is replaced by
the table and the commands that produced it.

Failure: a runs folder without any rows, or with a corrupt runs/.matrix/done.json, is refused
(exit 2) naming the file; a README without both markers is refused and left untouched.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..results import atomic_write, is_folder_name, read_rows  # noqa: E402
from ..schema import ConfigError  # noqa: E402
from . import webpage  # noqa: E402
from .codec_plot import plot_codec_decisions  # noqa: E402
from .runner import OK_STATUS, read_done  # noqa: E402
from .stats import Interval, Verdict, mean_band, mean_interval, verdict  # noqa: E402

MODES = ("basic", "ml")
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"
# Row fields that tell two runs of one config apart; a label shows those that vary within a mode.
VARIANT_FIELDS = ("scheduler", "trainer", "protocol", "codec", "aggregation", "window", "num_workers")
DASH = "–"
# The baseline value of each ML factor: a variant that differs from another only in one of these is
# compared with it. The window is the round under sync, so protocol comparisons ignore it.
BASELINE = {"protocol": "async", "codec": "none", "aggregation": "mean"}
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 7, "frameon": False}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs", help="the runs folder (rows, per-run files)")
    parser.add_argument("--readme", default=None,
                        help=f"also replace the section between {README_BEGIN} and {README_END} of this file")


def main(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs)
    out_dir = runs_dir / "report"
    command = f"dist-llm-train report --runs {args.runs}" + (f" --readme {args.readme}" if args.readme else "")
    try:
        report = build_report(runs_dir, out_dir, command)
        if args.readme:
            update_readme(Path(args.readme), report.readme_section())
    except (ReportError, ConfigError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out_dir / 'results.md'}, {out_dir / 'index.html'}, {len(report.plots)} plots"
          + (f"; README section replaced in {args.readme}" if args.readme else ""))
    for note in report.notes:
        print(f"  note: {note}")
    return 0


class ReportError(RuntimeError):
    """Nothing to report on, or a README the report cannot edit."""


# ---- rows and groups ----------------------------------------------------------------------------

def number(value: str | None) -> float | None:
    """A finite number, or None (a cell that is empty, not a number, NaN or infinite)."""
    try:
        parsed = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return parsed if parsed is not None and math.isfinite(parsed) else None


@dataclass
class Group:
    """The runs of one mode, profile and config variant (its repeats)."""

    mode: str
    profile: str
    label: str
    rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, str]]:
        return [r for r in self.rows if r.get("status") == OK_STATUS]

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


def variant(runs_dir: Path, row: dict[str, str]) -> str:
    """Digest of the run's resolved config (its run.json) without the seed: runs that differ only
    by seed are repeats of one variant; any other difference (a swept field the row has no column
    for) makes another variant. Without run.json, the row's config_hash (seed included)."""
    path = run_file(runs_dir, row, "run.json")
    try:
        config = json.loads(path.read_text())["config"] if path else None
    except (OSError, ValueError, KeyError, TypeError):
        config = None
    if config is None:
        return row.get("config_hash", "")
    blob = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def group_rows(rows_by_mode: dict[str, list[dict[str, str]]], runs_dir: Path) -> list[Group]:
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
            groups.setdefault(key, Group(*key)).rows.append(row)
    return list(groups.values())


# ---- the table ----------------------------------------------------------------------------------

GLANCE_HEADERS = ("mode", "profile", "config", "runs (finished/all)", "duration s (mean ± 95 % CI)", "workers",
                  "completed", "pending", "acceptance", "final val loss", "time to target s", "RTT ms", "loss %",
                  "Mbit/s", "backend")


def fmt(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def fmt_interval(interval: Interval | None, digits: int = 1, scale: float = 1.0) -> str:
    """mean ± half-width, without n (the table says n elsewhere); DASH without values."""
    if interval is None:
        return DASH
    text = f"{interval.mean * scale:.{digits}f}"
    return text + (f" ± {interval.half * scale:.{digits}f}" if interval.half is not None else "")


def glance_row(group: Group) -> list[str]:
    n_ok = len(group.ok)
    reached = group.values("time_to_target_s")
    target = fmt_interval(group.interval("time_to_target_s"))
    if reached and len(reached) < n_ok:
        target += f" ({len(reached)}/{n_ok})"
    acceptance = group.rate("updates_accepted", "updates_rejected")
    # Synthetic tasks are basic mode's unit of work; an ML run counts versions and updates instead.
    tasks = [fmt(group.mean(c)) if group.mode == "basic" else DASH for c in ("num_completed_tasks", "num_pending_tasks")]
    return [
        group.mode, group.profile, group.label, f"{n_ok}/{len(group.rows)}", fmt_interval(group.interval("duration_s")),
        fmt(group.mean("num_workers"), 0), *tasks, DASH if acceptance is None else f"{100 * acceptance:.0f} %",
        fmt(group.mean("final_val_loss"), 3), target, fmt(group.mean("measured_rtt_ms")),
        fmt(group.mean("measured_loss_pct"), 2), fmt(group.mean("measured_mbit")),
        ", ".join(sorted({r.get("backend", "") for r in group.ok} - {""})) or DASH,
    ]


FAILED_HEADERS = ("run", "mode", "profile", "config", "status", "reason")


def failed_rows(groups: list[Group]) -> list[list[str]]:
    return [[r.get("run_id", ""), g.mode, g.profile, g.label, r.get("status", "") or DASH, r.get("reason", "") or DASH]
            for g in groups for r in g.rows if r.get("status") != OK_STATUS]


WORK_HEADERS = ("profile", "config", "seeds", "ends (target/budget/cap/other)", "tokens trained (M)",
                "time to target s", "MB to target", "final val loss", "compute utilization")


def end_kind(row: dict[str, str]) -> str:
    """What ended a run, from its reason (ps/server.py words it): target, budget, cap or other."""
    reason = row.get("reason") or ""
    if reason.startswith("target_val_loss"):
        return "target"
    return next((kind for kind in ("budget", "cap") if reason.startswith(f"{kind}:")), "other")


def work_row(group: Group) -> list[str]:
    """An ML group's equal-work figures: mean ± 95 % CI over its finished repeats (time and bytes to target over
    those that reached it, with how many did)."""
    ends = [end_kind(r) for r in group.ok]
    reached = len(group.values("time_to_target_s"))
    seeds = ", ".join(sorted({r.get("seed", "") for r in group.rows} - {""}, key=lambda v: (len(v), v))) or DASH
    counts = "/".join(str(ends.count(k)) for k in ("target", "budget", "cap", "other"))
    return [group.profile, group.label, seeds, counts,
            fmt_interval(group.interval("tokens_trained"), 2, 1e-6),
            fmt_interval(group.interval("time_to_target_s")) + f" ({reached}/{len(group.ok)})",
            fmt_interval(group.interval("bytes_to_target"), 1, 1e-6) + f" ({reached}/{len(group.ok)})",
            fmt_interval(group.interval("final_val_loss"), 3), fmt_interval(group.interval("compute_utilization"), 2)]


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


COMPARISON_HEADERS = ("profile", "factor", "variant", "baseline", "time to target s", "baseline s",
                      "verdict on time", "MB to target", "baseline MB", "verdict on bytes")


def comparison_row(c: Comparison) -> list[str]:
    return [c.profile, c.factor, c.variant.label, c.baseline.label,
            fmt_interval(c.variant.interval("time_to_target_s")), fmt_interval(c.baseline.interval("time_to_target_s")),
            c.time.describe(), fmt_interval(c.variant.interval("bytes_to_target"), 1, 1e-6),
            fmt_interval(c.baseline.interval("bytes_to_target"), 1, 1e-6), c.mbytes.describe()]


def markdown_table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    def line(cells):  # a text cell stays in its cell: no column break, no line break
        return "| " + " | ".join(" ".join(str(c).replace("|", "\\|").splitlines()) for c in cells) + " |"
    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(r) for r in rows])


# ---- plots --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plot:
    file: str
    title: str


def save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")  # "tight": keeps a legend below the axes
    plt.close(fig)
    return name


def grouped_bars(ax, groups: list[Group], value: Callable[[Group], float | None],
                 error: Callable[[Group], float] | None = None, legend: bool = True) -> bool:
    """Bars by profile (x), one colour per config label, the legend beside the axes (`legend`); False when no
    group has a value."""
    profiles = list(dict.fromkeys(g.profile for g in groups))
    labels = list(dict.fromkeys(g.label for g in groups))
    width = 0.8 / len(labels)
    drawn = False
    for i, label in enumerate(labels):
        xs, heights, errors = [], [], []
        for j, profile in enumerate(profiles):
            g = next((g for g in groups if g.profile == profile and g.label == label), None)
            v = value(g) if g else None
            if v is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                heights.append(v)
                errors.append(error(g) if error else 0.0)
        if xs:
            ax.bar(xs, heights, width, yerr=errors if any(errors) else None, capsize=3, label=label)
            drawn = True
    ax.set_xticks(range(len(profiles)), profiles, rotation=30, ha="right")
    ax.set_xlabel("WAN profile")
    if drawn and legend:
        ax.legend(**LEGEND_OUTSIDE)  # beside the axes: a legend inside covered a bar
    return drawn


def plot_duration(groups: list[Group], out_dir: Path) -> Plot | None:
    modes = [m for m in MODES if any(g.mode == m and g.values("duration_s") for g in groups)]
    if not modes:
        return None
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        grouped_bars(ax, [g for g in groups if g.mode == mode and g.ok], lambda g: g.mean("duration_s"),
                     lambda g: g.half("duration_s"))
        ax.set_ylabel("run duration (s)")
        ax.set_title(f"{mode} mode: run duration by profile (mean, 95 % CI over repeats)")
    return Plot(save(fig, out_dir, "duration.png"), "Run duration by WAN profile")


def plot_completion_acceptance(groups: list[Group], out_dir: Path) -> Plot | None:
    panels = []
    completion = [g for g in groups if g.mode == "basic" and g.rate("num_completed_tasks", "num_pending_tasks") is not None]
    if completion:
        panels.append(("basic mode: tasks completed by profile", "tasks completed (% of the run's tasks)", completion,
                       lambda g: 100 * g.rate("num_completed_tasks", "num_pending_tasks")))
    acceptance = [g for g in groups if g.mode == "ml" and g.rate("updates_accepted", "updates_rejected") is not None]
    if acceptance:
        panels.append(("ml mode: updates accepted by profile", "updates accepted (% of pushed)", acceptance,
                       lambda g: 100 * g.rate("updates_accepted", "updates_rejected")))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (title, ylabel, data, value) in zip(axes[0], panels):
        grouped_bars(ax, data, value)
        ax.set_ylim(0, 105)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    return Plot(save(fig, out_dir, "completion_acceptance.png"), "Completion and acceptance by WAN profile")


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of a run's model (a row of its curve.csv with a validation loss)."""

    t_s: float
    val_loss: float
    mbytes: float | None  # MB through the PS by then, up + down


def adaptive_runs(groups: list[Group], runs_dir: Path) -> list[tuple[str, Path]]:
    """(title, codec_decisions.csv) of the first finished run of each group under compression.policy adaptive."""
    runs = []
    for g in groups:
        first = next((r for r in g.ok if r.get("codec") == "adaptive"), None)
        path = run_file(runs_dir, first, "codec_decisions.csv") if first else None
        if path is not None:
            runs.append((f"{g.profile} {g.label}", path))
    return runs


def read_curve(path: Path) -> list[CurvePoint]:
    """Every evaluation of the validation slice in a run's curve.csv (not the final evaluation, which is on
    another set; files from before `val_set` have only slice evaluations)."""
    with open(path, newline="") as fh:
        rows = [(number(r.get("t_s")), number(r.get("val_loss")), number(r.get("bytes_up")), number(r.get("bytes_down")))
                for r in csv.DictReader(fh) if r.get("val_set") in (None, "", "slice")]
    return [CurvePoint(t, v, (up + down) / 1e6 if up is not None and down is not None else None)
            for t, v, up, down in rows if t is not None and v is not None]


def val_curves(groups: list[Group], runs_dir: Path) -> dict[str, list[tuple[str, str, list[CurvePoint]]]]:
    """profile -> [(variant label, run id, points)] of the finished ML runs that have a curve."""
    curves: dict[str, list[tuple[str, str, list[CurvePoint]]]] = defaultdict(list)
    for g in groups:
        for row in g.ok if g.mode == "ml" else []:
            path = run_file(runs_dir, row, "curve.csv")
            points = read_curve(path) if path and path.is_file() else []
            if points:
                curves[g.profile].append((g.label, row.get("run_id", ""), points))
    return curves


LOSS_AXES = {"t_s": ("val_loss.png", "wall time since the run started (s)", "against wall time"),
             "mbytes": ("val_loss_bytes.png", "bytes sent through the PS, up + down (MB)", "against bytes sent")}


def plot_val_loss(curves: dict[str, list[tuple[str, str, list[CurvePoint]]]], out_dir: Path,
                  x: str = "t_s") -> Plot | None:
    """Per profile, each variant's mean validation-slice loss over its repeats against `x` (LOSS_AXES), with
    its 95 % band where two or more repeats span the point."""
    if not curves:
        return None
    file, xlabel, against = LOSS_AXES[x]
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False, sharey=True)
    labels = list(dict.fromkeys(label for runs in curves.values() for label, _, _ in runs))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for ax, (profile, runs) in zip(axes[0], curves.items()):
        for label in dict.fromkeys(label for label, _, _ in runs):
            series = [[(getattr(p, x), p.val_loss) for p in points if getattr(p, x) is not None]
                      for lab, _, points in runs if lab == label]
            band = mean_band(series)
            xs = [bx for bx, _ in band]
            ax.plot(xs, [i.mean for _, i in band], color=colours[label])
            with_half = [(bx, i) for bx, i in band if i.half is not None]
            if with_half:
                ax.fill_between([bx for bx, _ in with_half], [i.mean - i.half for _, i in with_half],
                                [i.mean + i.half for _, i in with_half], color=colours[label], alpha=0.2, linewidth=0)
        ax.set_title(f"validation loss {against}, profile {profile}", fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("validation slice loss (nats/byte)")
    # One legend under every panel: a colour means the same variant in each.
    fig.legend(handles=[Line2D([], [], color=colours[label], label=label) for label in labels],
               loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(len(labels), 2), fontsize=7, frameon=False)
    return Plot(save(fig, out_dir, file), f"Validation loss {against} per profile (mean over repeats, 95 % band)")


def plot_to_target(groups: list[Group], out_dir: Path) -> Plot | None:
    """Time-to-target and bytes-to-target per profile and variant: mean and 95 % CI over the runs that reached it."""
    ml = [g for g in groups if g.mode == "ml" and g.values("time_to_target_s")]
    if not ml:
        return None
    fig, (time_ax, bytes_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    grouped_bars(time_ax, ml, lambda g: g.mean("time_to_target_s"), lambda g: g.half("time_to_target_s"), legend=False)
    time_ax.set_ylabel("time to target (s)")
    time_ax.set_title("ml mode: time to the target validation loss (mean, 95 % CI)", fontsize=9)
    grouped_bars(bytes_ax, ml, lambda g: None if g.mean("bytes_to_target") is None else g.mean("bytes_to_target") / 1e6,
                 lambda g: g.half("bytes_to_target") / 1e6, legend=False)
    bytes_ax.set_ylabel("bytes to target, up + down (MB)")
    bytes_ax.set_title("ml mode: bytes sent until the target (mean, 95 % CI)", fontsize=9)
    handles, labels = time_ax.get_legend_handles_labels()  # one legend under both panels: the same colours
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(len(labels), 2), fontsize=7,
               frameon=False)
    return Plot(save(fig, out_dir, "to_target.png"), "Time and bytes to the target loss")


def plot_utilization(groups: list[Group], out_dir: Path) -> Plot | None:
    """Compute utilization (the workers' share of time computing) per protocol and profile, mean and 95 % CI."""
    by: dict[tuple[str, str], Group] = {}
    for g in groups:
        for row in g.ok if g.mode == "ml" else []:
            protocol = row.get("protocol") or "?"
            by.setdefault((g.profile, protocol), Group("ml", g.profile, protocol)).rows.append(row)
    data = [g for g in by.values() if g.values("compute_utilization")]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    grouped_bars(ax, data, lambda g: 100 * g.mean("compute_utilization"), lambda g: 100 * g.half("compute_utilization"))
    ax.set_ylim(0, 105)
    ax.set_ylabel("compute utilization (% of the workers' time)")
    ax.set_title("ml mode: compute utilization by protocol (mean, 95 % CI)", fontsize=9)
    return Plot(save(fig, out_dir, "utilization.png"), "Compute utilization per protocol")


def plot_bytes_by_codec(groups: list[Group], out_dir: Path) -> Plot | None:
    per_codec: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for g in groups:
        for row in g.ok if g.mode == "ml" else []:
            up, down = number(row.get("bytes_up")), number(row.get("bytes_down"))
            pushed = (number(row.get("updates_accepted")) or 0) + (number(row.get("updates_rejected")) or 0)
            if up is None or down is None:
                continue
            codec = row.get("codec") or "none"
            per_codec[codec]["up"].append(up / 1e6)
            per_codec[codec]["down"].append(down / 1e6)
            if pushed:
                per_codec[codec]["per_update"].append(up / pushed / 1e3)
    if not per_codec:
        return None
    codecs = list(per_codec)
    fig, (total, unit) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (direction, name) in enumerate((("up", "uplink (worker → PS)"), ("down", "downlink (PS → worker)"))):
        means = [statistics.fmean(per_codec[c][direction]) for c in codecs]
        total.bar([j - 0.2 + 0.4 * i for j in range(len(codecs))], means, 0.4, label=name)
    total.set_xticks(range(len(codecs)), codecs)
    total.set_xlabel("uplink codec")
    total.set_ylabel("bytes on the wire per run (MB, mean over runs)")
    total.set_title("ml mode: traffic per run by codec")
    total.legend(**LEGEND_OUTSIDE)
    sizes = [statistics.fmean(per_codec[c]["per_update"]) if per_codec[c]["per_update"] else 0.0 for c in codecs]
    unit.bar(range(len(codecs)), sizes, 0.5, color="C2", label="uplink bytes / pushed update")
    unit.set_xticks(range(len(codecs)), codecs)
    unit.set_xlabel("uplink codec")
    unit.set_ylabel("kB per pushed update")
    unit.set_title("ml mode: size of one update on the wire")
    return Plot(save(fig, out_dir, "bytes_by_codec.png"), "Bytes on the wire by codec")


def staleness_counts(groups: list[Group], runs_dir: Path) -> dict[str, dict[int, int]]:
    """protocol -> {staleness: updates}, summed over the finished ML runs' staleness.csv."""
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for g in groups:
        for row in g.ok if g.mode == "ml" else []:
            path = run_file(runs_dir, row, "staleness.csv")
            if path is None or not path.is_file():
                continue
            for r in read_rows(path):
                s, c = number(r.get("staleness")), number(r.get("count"))
                if s is not None and c:
                    counts[row.get("protocol") or "?"][int(s)] += int(c)
    return counts


def plot_staleness(counts: dict[str, dict[int, int]], out_dir: Path) -> Plot | None:
    if not counts:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(counts)
    for i, (protocol, hist) in enumerate(counts.items()):
        total = sum(hist.values())
        xs = sorted(hist)
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [100 * hist[x] / total for x in xs], width,
               label=f"{protocol} ({total} updates)")
    ax.set_xlabel("staleness (PS versions between pull and push)")
    ax.set_ylabel("share of updates (%)")
    ax.set_title("ml mode: staleness distribution by protocol (all profiles)")
    ax.legend(**LEGEND_OUTSIDE)
    return Plot(save(fig, out_dir, "staleness.png"), "Staleness distribution")


# ---- builtin protocols against hivemind (experiments/versus_hivemind.yaml) ---------------------------
# Kept apart from the general report: its own rows (recipes by trainer), table and plots, drawn only when some
# ML row was trained by hivemind.

VERSUS_HEADERS = ("profile", "recipe", "runs (finished/all)", "time to target s", "up B/token", "down B/token",
                  "compute utilization", "final val loss")
BEST_HEADERS = ("profile", "our best recipe", "its time s", "hivemind's best recipe", "its time s", "ours / hivemind's")


def run_json(runs_dir: Path, row: dict[str, str]) -> dict:
    path = run_file(runs_dir, row, "run.json")
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def recipe_label(run: dict, row: dict[str, str]) -> str:
    """'builtin sync none', 'hivemind sync int8 H=50': trainer, protocol, codec, local steps when above 1."""
    steps = ((run.get("config") or {}).get("ml") or {}).get("local", {}).get("steps", 1)
    return " ".join([row.get("trainer") or "builtin", row.get("protocol", ""), row.get("codec", "")]
                    + ([f"H={steps}"] if steps > 1 else []))


def tokens_trained(run: dict, row: dict[str, str]) -> float | None:
    """Tokens in the versions the run applied: versions x window x batch x seq_len x H, where a version is one
    PS step or one hivemind epoch and the window the updates (rounds: workers) it averaged. None without run.json."""
    ml = (run.get("config") or {}).get("ml") or {}
    version = (run.get("ps_report") or {}).get("version")
    window = number(row.get("window"))
    if not ml or version is None or window is None:
        return None
    return version * window * ml["data"]["batch_size"] * ml["data"]["seq_len"] * ml["local"]["steps"]


@dataclass
class Recipe:
    profile: str
    label: str
    rows: list[dict[str, str]] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> list[tuple[dict[str, str], dict]]:
        return [(r, j) for r, j in zip(self.rows, self.runs) if r.get("status") == OK_STATUS]

    def mean(self, value: Callable[[dict[str, str], dict], float | None]) -> float | None:
        values = [v for v in (value(r, j) for r, j in self.ok) if v is not None]
        return statistics.fmean(values) if values else None

    @property
    def hivemind(self) -> bool:
        return self.label.startswith("hivemind")

    def reached(self) -> list[float]:
        return [v for v in (number(r.get("time_to_target_s")) for r, _ in self.ok) if v is not None]


def versus_recipes(rows: list[dict[str, str]], runs_dir: Path) -> list[Recipe]:
    """The ML rows by profile and recipe, when at least one of them is hivemind's; [] otherwise."""
    if not any(r.get("trainer") == "hivemind" for r in rows):
        return []
    recipes: dict[tuple[str, str], Recipe] = {}
    for row in rows:
        run = run_json(runs_dir, row)
        key = (row.get("profile", ""), recipe_label(run, row))
        recipe = recipes.setdefault(key, Recipe(*key))
        recipe.rows.append(row)
        recipe.runs.append(run)
    return list(recipes.values())


def per_token(column: str) -> Callable[[dict[str, str], dict], float | None]:
    def value(row: dict[str, str], run: dict) -> float | None:
        count, tokens = number(row.get(column)), tokens_trained(run, row)
        return count / tokens if count is not None and tokens else None
    return value


def versus_row(recipe: Recipe) -> list[str]:
    reached, n_ok = recipe.reached(), len(recipe.ok)
    target = DASH if not reached else f"{statistics.fmean(reached):.1f}" + (f" ({len(reached)}/{n_ok})" if len(reached) < n_ok else "")
    if n_ok and not reached:
        target = "not reached"
    return [recipe.profile, recipe.label, f"{n_ok}/{len(recipe.rows)}", target,
            fmt(recipe.mean(per_token("iface_bytes_up")), 1), fmt(recipe.mean(per_token("iface_bytes_down")), 1),
            fmt(recipe.mean(lambda r, _: number(r.get("compute_utilization"))), 2),
            fmt(recipe.mean(lambda r, _: number(r.get("final_val_loss"))), 3)]


def best_rows(recipes: list[Recipe]) -> list[list[str]]:
    """Per profile: the fastest builtin and hivemind recipes to the target (mean over the repeats that reached it,
    every repeat required) and the ratio; a side that never reached it says so."""
    out = []
    for profile in dict.fromkeys(r.profile for r in recipes):
        sides = []
        for hivemind in (False, True):
            timed = [(statistics.fmean(r.reached()), r.label) for r in recipes
                     if r.profile == profile and r.hivemind == hivemind and r.ok and len(r.reached()) == len(r.ok)]
            sides.append(min(timed) if timed else None)
        ours, theirs = sides
        ratio = f"{ours[0] / theirs[0]:.2f}" if ours and theirs else DASH
        out.append([profile, ours[1] if ours else "none reached the target", fmt(ours[0] if ours else None),
                    theirs[1] if theirs else "none reached the target", fmt(theirs[0] if theirs else None), ratio])
    return out


def read_series(path: Path) -> list[tuple[float, float]]:
    """(t_s, bytes the workers sent) of a run's interfaces.csv (netem/counters.py)."""
    with open(path, newline="") as fh:
        points = [(number(r.get("t_s")), number(r.get("worker_tx_bytes"))) for r in csv.DictReader(fh)]
    return [(t, b) for t, b in points if t is not None and b is not None]


def bytes_at(series: list[tuple[float, float]], t: float) -> float | None:
    """The workers' upload at time t, linear between the sidecar's reports; None outside them."""
    for (t0, b0), (t1, b1) in zip(series, series[1:]):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * (t - t0) / (t1 - t0) if t1 > t0 else b1
    return None


def plot_versus(recipes: list[Recipe], runs_dir: Path, out_dir: Path) -> Plot | None:
    """Validation loss against wall time (top) and against the bytes the workers sent (bottom), per profile."""
    profiles = list(dict.fromkeys(r.profile for r in recipes if r.ok))
    if not profiles:
        return None
    labels = list(dict.fromkeys(r.label for r in recipes))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    fig, axes = plt.subplots(2, len(profiles), figsize=(5.5 * len(profiles), 8), squeeze=False)
    for column, profile in enumerate(profiles):
        for recipe in (r for r in recipes if r.profile == profile):
            for row, _ in recipe.ok:
                curve = run_file(runs_dir, row, "curve.csv")
                points = read_curve(curve) if curve and curve.is_file() else []
                if not points:
                    continue
                style = dict(color=colours[recipe.label], marker=".", linestyle="--" if recipe.hivemind else "-")
                axes[0][column].plot([p.t_s for p in points], [p.val_loss for p in points], **style)
                series_file = run_file(runs_dir, row, "interfaces.csv")
                series = read_series(series_file) if series_file and series_file.is_file() else []
                by_bytes = [(b / 1e6, p.val_loss) for p in points if (b := bytes_at(series, p.t_s)) is not None]
                if by_bytes:
                    axes[1][column].plot(*zip(*by_bytes), **style)
        axes[0][column].set_title(f"profile {profile}")
        axes[0][column].set_xlabel("wall time since the run started (s)")
        axes[1][column].set_xlabel("bytes the workers sent (MB, their eth0)")
        axes[1][column].set_xscale("symlog", linthresh=1.0)
    for row_axes in axes:
        row_axes[0].set_ylabel("validation loss (nats/byte)")
    fig.legend(handles=[Line2D([], [], color=colours[l], marker=".", linestyle="--" if l.startswith("hivemind") else "-",
                               label=l) for l in labels],
               loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(len(labels), 3), fontsize=7, frameon=False)
    return Plot(save(fig, out_dir, "versus_hivemind.png"), "Builtin protocols against hivemind: loss against time and bytes")


@dataclass
class Versus:
    table: list[list[str]]
    best: list[list[str]]

    def markdown(self) -> str:
        return ("## Builtin protocols against hivemind\n\nSame model, data, batch, seed, target and links; "
                "bytes are every worker's eth0 (netem/counters.py), per token of the versions applied.\n\n"
                + markdown_table(VERSUS_HEADERS, self.table) + "\n\nTime to the target validation loss, "
                "fastest recipe of each trainer (every repeat must reach it):\n\n" + markdown_table(BEST_HEADERS, self.best))

    def html(self) -> str:
        return webpage.section("versus", "Builtin protocols against hivemind",
                               webpage.table(VERSUS_HEADERS, self.table, "One row per profile and recipe", text_columns=2)
                               + webpage.table(BEST_HEADERS, self.best, "Fastest recipe of each trainer to the target",
                                               text_columns=2))


def build_versus(rows_by_mode: dict[str, list[dict[str, str]]], runs_dir: Path, out_dir: Path) -> tuple[Versus | None, Plot | None]:
    recipes = versus_recipes(rows_by_mode["ml"], runs_dir)
    if not recipes:
        return None, None
    return Versus([versus_row(r) for r in recipes], best_rows(recipes)), plot_versus(recipes, runs_dir, out_dir)


# ---- the report ---------------------------------------------------------------------------------

WORK_INTRO = ("Every cell of a comparison has the same work budget (tokens); a run ends at the target validation "
              "loss, the budget or the wall-clock cap, and `ends` counts which. Mean ± 95 % confidence interval "
              "(Student t) over the finished repeats; time and bytes to target over the runs that reached it "
              "(reached/finished).")
COMPARED_INTRO = ("Each variant against its baseline in the same profile (async, dense, mean; every other setting "
                  "equal). Verdict: Welch's t-test (two-sided, unequal variances) on the runs that reached the "
                  "target; \"clear difference\" when p < 0.05, else \"not separable\" (with n = 3 repeats only a "
                  "difference large against the run-to-run spread is clear).")

@dataclass
class Report:
    command: str
    producers: list[str]
    glance: list[list[str]]
    work: list[list[str]]
    compared: list[list[str]]
    failed: list[list[str]]
    plots: list[Plot]
    notes: list[str]
    counts: dict[str, int]
    charts: dict  # the interactive charts' data (chart_data), embedded in index.html
    versus: Versus | None = None

    def commands_block(self) -> str:
        lines = [*self.producers, self.command]
        return "```\n" + "\n".join(lines) + "\n```"

    def readme_section(self) -> str:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        text = (f"Generated {when} from {self.describe_counts()} by:\n\n{self.commands_block()}\n\n"
                + markdown_table(GLANCE_HEADERS, self.glance))
        if self.compared:
            text += f"\n\n{COMPARED_INTRO}\n\n" + markdown_table(COMPARISON_HEADERS, self.compared)
        if self.versus:
            text += "\n\n" + self.versus.markdown().replace("## ", "### ", 1)
        return text

    def describe_counts(self) -> str:
        return ", ".join(f"{n} rows of runs_{mode}.csv" for mode, n in self.counts.items())


MIN_CURVE_POINTS = 50  # what a curve needs to be read as one, not as a few points joined by lines


def curve_rows(runs_dir: Path, row: dict[str, str]) -> int:
    """Rows of a run's curve.csv (0 without one)."""
    path = run_file(runs_dir, row, "curve.csv")
    if path is None or not path.is_file():
        return 0
    with open(path, newline="") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def missing_notes(rows_by_mode: dict[str, list[dict[str, str]]], groups: list[Group], runs_dir: Path,
                  plots: list[Plot]) -> list[str]:
    notes = [f"no rows in runs_{m}.csv: nothing on {m} mode" for m in MODES if not rows_by_mode[m]]
    ml_ok = [r for g in groups if g.mode == "ml" for r in g.ok]
    for name in ("curve.csv", "staleness.csv"):
        without = [r.get("run_id", "") for r in ml_ok
                   if not (path := run_file(runs_dir, r, name)) or not path.is_file()]
        if without:
            notes.append(f"{len(without)} of {len(ml_ok)} finished ML runs have no {name}: {', '.join(without[:5])}"
                         + (" ..." if len(without) > 5 else ""))
    sparse = [f"{r.get('run_id', '')} ({n})" for r in ml_ok if (n := curve_rows(runs_dir, r)) and n < MIN_CURVE_POINTS]
    if sparse:
        notes.append(f"{len(sparse)} of {len(ml_ok)} finished ML runs have fewer than {MIN_CURVE_POINTS} curve points "
                     f"(one per version applied): {', '.join(sparse[:5])}" + (" ..." if len(sparse) > 5 else ""))
    drawn = {p.file for p in plots}
    for file, what, modes in (("duration.png", "run durations", MODES),
                              ("completion_acceptance.png", "completed tasks or updates", MODES),
                              ("val_loss.png", "validation-loss curves", ("ml",)),
                              ("val_loss_bytes.png", "validation-loss curves with byte counters", ("ml",)),
                              ("to_target.png", "runs that reached their target", ("ml",)),
                              ("utilization.png", "compute utilization figures", ("ml",)),
                              ("bytes_by_codec.png", "byte counters", ("ml",)),
                              ("staleness.png", "staleness histograms", ("ml",))):
        if file not in drawn and any(rows_by_mode[m] for m in modes):  # a mode without rows is said once above
            notes.append(f"no plot {file}: no {what} among the finished runs")
    return notes


def build_report(runs_dir: Path, out_dir: Path, command: str) -> Report:
    rows_by_mode = read_mode_rows(runs_dir)
    if not any(rows_by_mode.values()):
        raise ReportError(f"no rows in {runs_dir / 'runs_basic.csv'} or {runs_dir / 'runs_ml.csv'}: "
                          "run `make experiments` (or a single `make up`) first")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_rows(rows_by_mode, runs_dir)
    curves, staleness = val_curves(groups, runs_dir), staleness_counts(groups, runs_dir)
    plots = [p for p in (plot_duration(groups, out_dir), plot_completion_acceptance(groups, out_dir),
                         plot_val_loss(curves, out_dir), plot_val_loss(curves, out_dir, "mbytes"),
                         plot_to_target(groups, out_dir), plot_utilization(groups, out_dir),
                         plot_bytes_by_codec(groups, out_dir), plot_staleness(staleness, out_dir)) if p is not None]
    versus, versus_plot = build_versus(rows_by_mode, runs_dir, out_dir)
    plots += [versus_plot] if versus_plot else []
    decisions = plot_codec_decisions(adaptive_runs(groups, runs_dir), out_dir)
    plots += [Plot(decisions, "Adaptive compression: each worker's bytes per update beside its link")] if decisions else []
    producers = list(dict.fromkeys(entry["command"] for entry in read_done(runs_dir).values() if entry.get("command")))
    report = Report(command, producers, [glance_row(g) for g in groups],
                    [work_row(g) for g in groups if g.mode == "ml" and g.ok],
                    [comparison_row(c) for c in comparisons(groups)], failed_rows(groups), plots,
                    missing_notes(rows_by_mode, groups, runs_dir, plots), {m: len(rows_by_mode[m]) for m in MODES},
                    chart_data(curves, staleness), versus)
    atomic_write(out_dir / "results.md", render_markdown(report).encode())
    webpage.write(out_dir, render_html(report, out_dir), ["results.md", *(p.file for p in plots)])
    return report


def render_markdown(report: Report) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# Results\n\nBuilt {when} from {report.describe_counts()} by:\n\n{report.commands_block()}",
             f"## Results at a glance\n\nStatistics over the runs with status `{OK_STATUS}` (runs: "
             "finished of all); mean ± 95 % confidence interval (Student t) over the repeats; measured link "
             "figures are the sidecar's probe before each run.\n\n" + markdown_table(GLANCE_HEADERS, report.glance)]
    if report.work:
        parts.append(f"## ML: equal work\n\n{WORK_INTRO}\n\n" + markdown_table(WORK_HEADERS, report.work))
    if report.compared:
        parts.append(f"## ML: comparisons with the baseline\n\n{COMPARED_INTRO}\n\n"
                     + markdown_table(COMPARISON_HEADERS, report.compared))
    if report.versus is not None:
        parts.append(report.versus.markdown())
    if report.failed:
        parts.append(f"## Runs that did not end as `{OK_STATUS}`\n\n" + markdown_table(FAILED_HEADERS, report.failed))
    if report.plots:
        parts.append("## Plots\n\n" + "\n\n".join(f"### {p.title}\n\n![{p.title}]({p.file})" for p in report.plots))
    if report.notes:
        parts.append("## Missing\n\n" + "\n".join(f"- {n}" for n in report.notes))
    return "\n\n".join(parts) + "\n"


def chart_data(curves: dict[str, list[tuple[str, str, list[CurvePoint]]]],
               staleness: dict[str, dict[int, int]]) -> dict:
    """What index.html draws interactively: per profile, each run's validation loss against time and
    against MB through the PS; per protocol, the staleness histogram."""
    return {
        "val_loss": {profile: [{"name": f"{label} ({run_id})", "time": [[p.t_s, p.val_loss] for p in points],
                                "bytes": [[p.mbytes, p.val_loss] for p in points if p.mbytes is not None]}
                               for label, run_id, points in runs] for profile, runs in curves.items()},
        "staleness": {protocol: [[s, hist[s]] for s in sorted(hist)] for protocol, hist in staleness.items()},
    }


def render_html(report: Report, out_dir: Path) -> str:
    sections = [
        webpage.section("made", "How these were made",
                        f"<p>Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from "
                        f"{html.escape(report.describe_counts())} by:</p>"
                        f"<pre>{html.escape(chr(10).join([*report.producers, report.command]))}</pre>"),
        webpage.section("glance", "Results at a glance",
                        f"<p>Statistics over the runs with status <code>{OK_STATUS}</code>; measured link figures are "
                        "the sidecar's probe before each run.</p>"
                        + webpage.table(GLANCE_HEADERS, report.glance, "One row per mode, profile and config variant",
                                      text_columns=3)),
    ]
    if report.work:
        sections.append(webpage.section("work", "ML: equal work", f"<p>{html.escape(WORK_INTRO)}</p>"
                                        + webpage.table(WORK_HEADERS, report.work, "One row per profile and variant",
                                                        text_columns=4)))
    if report.compared:
        sections.append(webpage.section("compared", "ML: comparisons with the baseline",
                                        f"<p>{html.escape(COMPARED_INTRO)}</p>"
                                        + webpage.table(COMPARISON_HEADERS, report.compared,
                                                        "Each variant against its baseline", text_columns=4)))
    if report.versus is not None:
        sections.append(report.versus.html())
    if report.failed:
        sections.append(webpage.section("failed", f"Runs that did not end as {OK_STATUS}",
                                        webpage.table(FAILED_HEADERS, report.failed, "Each such run and its reason",
                                                      text_columns=len(FAILED_HEADERS))))
    if report.charts["val_loss"]:
        sections.append(webpage.section("curves", "Validation loss", '<p class="note">Point at a curve, or focus a '
                                        'chart (Tab) and use the arrow keys, to read its values.</p><div id="curves"></div>'))
    if report.charts["staleness"]:
        sections.append(webpage.section("staleness", "Staleness of the updates",
                                        '<div id="staleness-charts" class="charts"></div>'))
    if report.plots:
        sections.append(webpage.section("plots", "Plots (PNG, for papers)",
                                        "".join(webpage.figure(out_dir, p.file, p.title) for p in report.plots)))
    if report.notes:
        sections.append(webpage.section("missing", "Missing", "<ul>" + "".join(f"<li>{html.escape(n)}</li>"
                                                                               for n in report.notes) + "</ul>"))
    return webpage.page(sections, report.charts)


def replace_section(text: str, section: str, source: str) -> str:
    """Text with everything between the results markers replaced by `section`."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ReportError(f"{source}: needs the markers {README_BEGIN} and {README_END} (in that order)")
    return text[:begin + len(README_BEGIN)] + "\n" + section.strip() + "\n" + text[end:]


def update_readme(path: Path, section: str) -> None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    atomic_write(path, replace_section(text, section, str(path)).encode())
