"""The report's PNG plots (for papers): one function per figure, each returning None when its data are absent."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from ..results import read_rows  # noqa: E402
from .groups import MODES, Group, number, run_file  # noqa: E402
from .stats import mean_band  # noqa: E402

LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 7, "frameon": False}


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
