"""The report's tables as rows of text cells, and markdown for them."""

from __future__ import annotations

from .groups import Comparison, Group, end_kind
from .runner import OK_STATUS
from .stats import Interval

DASH = "–"


GLANCE_HEADERS = ("mode", "profile", "config", "runs (counted/all)", "duration s (mean ± 95 % CI)", "workers",
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
        group.mode, group.profile, group.label, f"{n_ok}/{len(group.rows)}" + (f" ({group.late} late)" if group.late else ""),
        fmt_interval(group.interval("duration_s")),
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
