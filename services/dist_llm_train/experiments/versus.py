"""Builtin protocols against hivemind (experiments/versus_hivemind.yaml): its own rows (recipes by trainer),
table and plot, drawn only when some ML row was trained by hivemind."""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from matplotlib.lines import Line2D

from . import webpage
from .groups import number, run_file, run_json
from .plots import Plot, plt, read_curve, save
from .runner import OK_STATUS
from .tables import DASH, fmt, markdown_table


VERSUS_HEADERS = ("profile", "recipe", "runs (finished/all)", "time to target s", "up B/token", "down B/token",
                  "compute utilization", "final val loss")
BEST_HEADERS = ("profile", "our best recipe", "its time s", "hivemind's best recipe", "its time s", "ours / hivemind's")


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
