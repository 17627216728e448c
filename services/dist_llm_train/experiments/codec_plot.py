"""The report's plot of compression.policy adaptive runs: per worker, what it sent per update over time (left)
beside the link rate it measured (right), from the run's codec_decisions.csv (ps/decisions.py).

The left axis is uplink payload bytes per update, log scale: one axis for every codec and ratio (dense fp32 is
4 bytes per parameter, fp16 2, int8 1, top-k 6 per coordinate kept), so a switch of codec and a change of top-k
ratio both show as a step. One row of panels per run (the caller picks one run per configuration)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from .groups import Group, run_file
from .plots import LEGEND_OUTSIDE, plt, save

FILE = "codec_decisions.png"


def adaptive_runs(groups: list[Group], runs_dir: Path) -> list[tuple[str, Path]]:
    """(title, codec_decisions.csv) of the first finished run of each group under compression.policy adaptive."""
    runs = []
    for g in groups:
        first = next((r for r in g.ok if r.get("codec") == "adaptive"), None)
        path = run_file(runs_dir, first, "codec_decisions.csv") if first else None
        if path is not None:
            runs.append((f"{g.profile} {g.label}", path))
    return runs


def read_decisions(path: Path) -> dict[str, list[tuple[float, int, float | None]]]:
    """worker -> [(t_s, bytes, link Mbit/s or None)] in file order; {} for a missing or unreadable file."""
    series: dict[str, list[tuple[float, int, float | None]]] = defaultdict(list)
    try:
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    link = float(row["link_mbit"]) if row["link_mbit"] else None
                    series[row["worker"]].append((float(row["t_s"]), int(row["bytes"]), link))
                except (KeyError, ValueError, TypeError):
                    continue  # a torn last line of a run that was killed
    except OSError:
        return {}
    return dict(series)


def plot_codec_decisions(runs: list[tuple[str, Path]], out_dir: Path) -> str | None:
    """`runs`: (title, its codec_decisions.csv). The file name written, or None when no run has a decision."""
    drawn = [(title, data) for title, path in runs if (data := read_decisions(path))]
    if not drawn:
        return None
    fig, axes = plt.subplots(len(drawn), 2, figsize=(11, 3.2 * len(drawn)), squeeze=False)
    for (title, data), (sent, link) in zip(drawn, axes):
        for worker, points in sorted(data.items()):
            t = [p[0] for p in points]
            line, = sent.plot(t, [p[1] for p in points], drawstyle="steps-post", lw=1, label=worker)
            measured = [(ti, p[2]) for ti, p in zip(t, points) if p[2] is not None]
            link.plot([m[0] for m in measured], [m[1] for m in measured], ".-", lw=1, ms=3, color=line.get_color(),
                      label=worker)
        sent.set_yscale("log")
        link.set_yscale("log")
        sent.set_title(f"{title}: uplink bytes per update", fontsize=9)
        link.set_title(f"{title}: measured link", fontsize=9)
        sent.set_ylabel("payload bytes")
        link.set_ylabel("Mbit/s")
        for ax in (sent, link):
            ax.set_xlabel("run time (s)")
        link.legend(**LEGEND_OUTSIDE)
    return save(fig, out_dir, FILE)
