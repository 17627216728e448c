"""`dist-llm-train report`: the results-at-a-glance table and plots, from the rows under runs/.

The pieces: groups.py (rows into groups of repeats, comparisons), tables.py, plots.py (the PNGs),
versus.py (builtin against hivemind), targets.py (adaptive compression and the local-step anchor against their
bars, as verdicts), webpage.py (index.html); this module puts them together.

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
import html
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..results import atomic_write
from ..schema import ConfigError
from . import webpage
from .codec_plot import adaptive_runs, plot_codec_decisions
from .groups import MODES, Group, comparisons, group_rows, read_mode_rows, run_file
from .plots import (CurvePoint, Plot, plot_bytes_by_codec, plot_completion_acceptance, plot_duration,
                    plot_staleness, plot_to_target, plot_utilization, plot_val_loss, staleness_counts, val_curves)
from .runner import OK_STATUS, read_done
from .targets import ADAPTIVE_HEADERS, ANCHOR_HEADERS, adaptive_targets, anchors
from .tables import (COMPARISON_HEADERS, FAILED_HEADERS, GLANCE_HEADERS, WORK_HEADERS, comparison_row, failed_rows,
                     glance_row, markdown_table, work_row)
from .versus import Versus, build_versus

README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", default="runs", help="the runs folder (rows, per-run files)")
    parser.add_argument("--readme", default=None,
                        help=f"also replace the section between {README_BEGIN} and {README_END} of this file")
    parser.add_argument("--include-late", action="store_true",
                        help="also count `degraded` runs whose only fault is the delayers' timer lateness (no "
                             "unasked drop, no sidecar failure); every table says so and marks them")


def main(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs)
    out_dir = runs_dir / "report"
    command = (f"dist-llm-train report --runs {args.runs}" + (f" --readme {args.readme}" if args.readme else "")
               + (" --include-late" if args.include_late else ""))
    try:
        report = build_report(runs_dir, out_dir, command, args.include_late)
        if args.readme:
            update_readme(Path(args.readme), report.readme_section())
    except (ReportError, ConfigError) as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    print(f"report: {out_dir / 'results.md'}, {out_dir / 'index.html'}, {len(report.plots)} plots"
          + (f"; README section replaced in {args.readme}" if args.readme else ""))
    for title, _, headers, rows in report.target_sections():
        ratio = next(i for i, h in enumerate(headers) if h.startswith("ratio"))
        for row in rows:  # the verdicts, printed where the user looks first
            print(f"  {title.split(': ', 1)[-1]}: {row[0]}: {headers[ratio]} {row[ratio]}: {row[-1]}")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


class ReportError(RuntimeError):
    """Nothing to report on, or a README the report cannot edit."""


WORK_INTRO = ("Every cell of a comparison has the same work budget (tokens); a run ends at the target validation "
              "loss, the budget or the wall-clock cap, and `ends` counts which. Mean ± 95 % confidence interval "
              "(Student t) over the finished repeats; time and bytes to target over the runs that reached it "
              "(reached/finished).")
COMPARED_INTRO = ("Each variant against its baseline in the same profile (async, dense, mean; every other setting "
                  "equal). Verdict: Welch's t-test (two-sided, unequal variances) on the runs that reached the "
                  "target; \"clear difference\" when p < 0.05, else \"not separable\" (with n = 3 repeats only a "
                  "difference large against the run-to-run spread is clear).")

ADAPTIVE_INTRO = ("compression.policy adaptive against the better of fixed dense and fixed top-k (the one with the "
                  "smaller mean time to target) in each profile: the target is at most 0.8x its time to target, with a "
                  "final validation loss at most 5 % above fixed dense's (experiments/targets.py).")
ANCHOR_INTRO = ("Local steps (DiLoCo-like) against sync dense in the same profile: bytes per token = (bytes up + down) / "
                "tokens trained, per run; the bar is a ratio of at least 200x with a final loss within 5 % of sync "
                "dense's. Bytes to the target beside it: local steps spend more tokens per unit of loss.")


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
    counted: str = f"Statistics over the runs with status `{OK_STATUS}`"
    adaptive: list[list[str]] = field(default_factory=list)
    anchor: list[list[str]] = field(default_factory=list)

    def target_sections(self) -> list[tuple[str, str, tuple[str, ...], list[list[str]]]]:
        """(title, intro, headers, rows) of each targets table that has rows."""
        return [(title, intro, headers, rows) for title, intro, headers, rows in (
            ("ML: adaptive compression against fixed", ADAPTIVE_INTRO, ADAPTIVE_HEADERS, self.adaptive),
            ("ML: local steps against sync dense (communication anchor)", ANCHOR_INTRO, ANCHOR_HEADERS, self.anchor))
            if rows]

    def commands_block(self) -> str:
        lines = [*self.producers, self.command]
        return "```\n" + "\n".join(lines) + "\n```"

    def readme_section(self) -> str:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        text = (f"Generated {when} from {self.describe_counts()} by:\n\n{self.commands_block()}\n\n{self.counted}.\n\n"
                + markdown_table(GLANCE_HEADERS, self.glance))
        if self.compared:
            text += f"\n\n{COMPARED_INTRO}\n\n" + markdown_table(COMPARISON_HEADERS, self.compared)
        for title, intro, headers, rows in self.target_sections():
            text += f"\n\n### {title}\n\n{intro}\n\n" + markdown_table(headers, rows)
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


def counted_text(groups: list[Group], with_late: bool) -> str:
    """What the statistics count, in words (with --include-late: how many degraded runs, and which)."""
    text = f"Statistics over the runs with status `{OK_STATUS}`"
    if not with_late:
        return text
    late = sum(g.late for g in groups)
    return (f"{text} and, as asked (`--include-late`), {late} `degraded` runs whose only fault is the delayers' timer "
            "lateness (more than 1 % of packets released later than max(10 % of the delay, 2 ms); no unasked drop, "
            "no sidecar failure): each is marked \"late\" in the runs column and listed with its reason among the "
            f"runs that did not end as `{OK_STATUS}`")


def build_report(runs_dir: Path, out_dir: Path, command: str, include_late: bool = False) -> Report:
    rows_by_mode = read_mode_rows(runs_dir)
    if not any(rows_by_mode.values()):
        raise ReportError(f"no rows in {runs_dir / 'runs_basic.csv'} or {runs_dir / 'runs_ml.csv'}: "
                          "run `make experiments` (or a single `make up`) first")
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_rows(rows_by_mode, runs_dir, include_late)
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
                    chart_data(curves, staleness), versus,
                    counted_text(groups, include_late),
                    [t.row() for t in adaptive_targets(groups, runs_dir)], [a.row() for a in anchors(groups, runs_dir)])
    atomic_write(out_dir / "results.md", render_markdown(report).encode())
    webpage.write(out_dir, render_html(report, out_dir), ["results.md", *(p.file for p in plots)])
    return report


def render_markdown(report: Report) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# Results\n\nBuilt {when} from {report.describe_counts()} by:\n\n{report.commands_block()}",
             f"## Results at a glance\n\n{report.counted} (runs: counted of all); mean ± 95 % confidence interval (Student t) over the repeats; measured link "
             "figures are the sidecar's probe before each run.\n\n" + markdown_table(GLANCE_HEADERS, report.glance)]
    if report.work:
        parts.append(f"## ML: equal work\n\n{WORK_INTRO}\n\n" + markdown_table(WORK_HEADERS, report.work))
    if report.compared:
        parts.append(f"## ML: comparisons with the baseline\n\n{COMPARED_INTRO}\n\n"
                     + markdown_table(COMPARISON_HEADERS, report.compared))
    for title, intro, headers, rows in report.target_sections():
        parts.append(f"## {title}\n\n{intro}\n\n" + markdown_table(headers, rows))
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
                        f"<p>{html.escape(report.counted)}; measured link figures are "
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
    for title, intro, headers, rows in report.target_sections():
        anchor = "targets-" + title.split(":")[-1].split()[0].lower()
        sections.append(webpage.section(anchor, title, f"<p>{html.escape(intro)}</p>"
                                        + webpage.table(headers, rows, title, text_columns=len(headers))))
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
