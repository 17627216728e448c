"""The report's targets as verdicts (issue 12), pure over the groups of repeats: rows of text cells.

Adaptive compression (`compression.policy: adaptive`, the row's codec reads `adaptive`) against the two fixed
settings it chooses between, in each profile where all three ran with every other setting equal:
    time ratio = mean time to target (adaptive) / mean time to target (the better fixed setting, i.e. the
                 one of fixed dense and fixed top-k with the smaller mean among the runs that reached it);
    loss change = mean final validation loss (adaptive) / mean final validation loss (fixed dense) - 1.
It meets the target when every adaptive run reached the target (one that did not has no finite time), the
ratio is at most ADAPTIVE_TIME_BAR and the loss change at most LOSS_TOLERANCE;
Welch's t on the two times says whether the difference stands out of the repeats' spread.

The communication anchor of local-step methods (DiLoCo): local steps H > 1 against sync dense (H = 1, codec
none) in the same profile, as bytes per token = (bytes up + bytes down) / tokens trained, per run, then
    anchor ratio = mean bytes per token (sync dense) / mean bytes per token (local steps),
meeting the bar at ANCHOR_BAR or more with the final loss within LOSS_TOLERANCE of sync dense's. Bytes to the
target are given beside it: local steps trade tokens for bytes, so at matched loss the saving is smaller.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .groups import Group, run_json
from .stats import verdict
from .tables import DASH, fmt, fmt_interval

ADAPTIVE_TIME_BAR = 0.8  # adaptive's time to target, as a fraction of the better fixed setting's, at most
LOSS_TOLERANCE = 0.05  # final validation loss at most this much above the dense reference's
ANCHOR_BAR = 200.0  # sync dense's bytes per token over local steps', at least
# Row fields that must be equal for two groups to be compared here (the codec is what differs).
SAME = ("config", "trainer", "protocol", "aggregation", "window", "num_workers")

ADAPTIVE_HEADERS = ("profile", "adaptive: time to target s", "better fixed", "its time s",
                    f"ratio (bar <= {ADAPTIVE_TIME_BAR})", "Welch on time", "final loss adaptive / dense",
                    f"change (bar <= +{LOSS_TOLERANCE:.0%})", "verdict")
ANCHOR_HEADERS = ("profile", "local steps", "codec", "bytes/token local", "bytes/token sync dense",
                  f"ratio (bar >= {ANCHOR_BAR:.0f}x)", "MB to target local / dense", "final loss local / dense",
                  "verdict")


def local_steps(group: Group, runs_dir: Path) -> int:
    """ml.local.steps of the group's resolved config (run.json); 1 when it does not say."""
    config = run_json(runs_dir, group.rows[0]).get("config") if group.rows else None
    try:
        return int(config["ml"]["local"]["steps"])
    except (TypeError, KeyError, ValueError):
        return 1


def siblings(group: Group, groups: list[Group]) -> list[Group]:
    """The ML groups with finished runs in the same profile as `group` and every SAME field equal."""
    return [g for g in groups if g.mode == "ml" and g.ok and g.profile == group.profile
            and all(g.setting(f) == group.setting(f) for f in SAME)]


def bytes_per_token(group: Group) -> list[float]:
    values = []
    for row in group.ok:
        try:
            tokens = float(row.get("tokens_trained") or 0)
            total = float(row.get("bytes_up") or 0) + float(row.get("bytes_down") or 0)
        except ValueError:
            continue
        if tokens > 0 and total > 0:
            values.append(total / tokens)
    return values


def loss_change(group: Group, reference: Group) -> float | None:
    a, b = group.mean("final_val_loss"), reference.mean("final_val_loss")
    return a / b - 1 if a is not None and b else None


@dataclass(frozen=True)
class AdaptiveTarget:
    profile: str
    adaptive: Group
    dense: Group
    better: Group | None  # the fixed setting with the smaller mean time to target; None when neither reached it

    @property
    def ratio(self) -> float | None:
        a = self.adaptive.mean("time_to_target_s")
        b = self.better.mean("time_to_target_s") if self.better else None
        return a / b if a is not None and b else None

    def verdict(self) -> str:
        reached, n = len(self.adaptive.values("time_to_target_s")), len(self.adaptive.ok)
        change = loss_change(self.adaptive, self.dense)
        misses = []
        if reached < n:  # a run that never reached the target has no time to average: its time is not finite
            misses.append(f"adaptive reached the target in {reached} of {n} runs")
        if reached and self.ratio is not None and self.ratio > ADAPTIVE_TIME_BAR:
            misses.append(f"time {self.ratio:.2f}x > {ADAPTIVE_TIME_BAR}x")
        if change is None:
            misses.append("no final loss to compare")
        elif change > LOSS_TOLERANCE:
            misses.append(f"final loss {change:+.1%} > +{LOSS_TOLERANCE:.0%}")
        if misses:
            return "misses: " + "; ".join(misses)
        return "meets" + (" (no fixed setting reached the target)" if self.better is None else "")

    def row(self) -> list[str]:
        a, b = self.adaptive, self.better
        welch = verdict(a.values("time_to_target_s"), b.values("time_to_target_s")).describe() if b else DASH
        change = loss_change(a, self.dense)
        losses = f"{fmt(a.mean('final_val_loss'), 3)} / {fmt(self.dense.mean('final_val_loss'), 3)}"
        return [self.profile, fmt_interval(a.interval("time_to_target_s")) + reached_of(a),
                b.setting("codec") if b else DASH, fmt_interval(b.interval("time_to_target_s")) + reached_of(b) if b else DASH,
                DASH if self.ratio is None else f"{self.ratio:.2f}", welch, losses,
                DASH if change is None else f"{change:+.1%}", self.verdict()]


def reached_of(group: Group) -> str:
    return f" ({len(group.values('time_to_target_s'))}/{len(group.ok)})"


def megabytes_to_target(group: Group) -> str:
    value = group.mean("bytes_to_target")
    return fmt(None if value is None else value / 1e6) + reached_of(group)


def adaptive_targets(groups: list[Group], runs_dir: Path) -> list[AdaptiveTarget]:
    """One per adaptive ML group that has a fixed dense sibling (and, if it ran, a fixed top-k one) with the
    same local steps."""
    found = []
    for g in groups:
        if g.mode != "ml" or not g.ok or g.setting("codec") != "adaptive":
            continue
        steps = local_steps(g, runs_dir)
        fixed = {s.setting("codec"): s for s in siblings(g, groups) if local_steps(s, runs_dir) == steps}
        if "none" not in fixed:
            continue
        reached = [s for s in (fixed["none"], fixed.get("topk")) if s is not None and s.values("time_to_target_s")]
        better = min(reached, key=lambda s: s.mean("time_to_target_s")) if reached else None
        found.append(AdaptiveTarget(g.profile, g, fixed["none"], better))
    return found


@dataclass(frozen=True)
class Anchor:
    profile: str
    steps: int
    local: Group
    dense: Group

    @property
    def ratio(self) -> float | None:
        local, dense = bytes_per_token(self.local), bytes_per_token(self.dense)
        return statistics.fmean(dense) / statistics.fmean(local) if local and dense else None

    def verdict(self) -> str:
        change = loss_change(self.local, self.dense)
        misses = []
        if self.ratio is None:
            misses.append("no byte or token counts")
        elif self.ratio < ANCHOR_BAR:
            misses.append(f"{self.ratio:.0f}x < {ANCHOR_BAR:.0f}x")
        if change is None:
            misses.append("no final loss to compare")
        elif change > LOSS_TOLERANCE:
            misses.append(f"final loss {change:+.1%} > +{LOSS_TOLERANCE:.0%}")
        return "misses: " + "; ".join(misses) if misses else "meets"

    def row(self) -> list[str]:
        def per_token(g: Group) -> str:
            values = bytes_per_token(g)
            return f"{statistics.fmean(values):.2f} (n={len(values)})" if values else DASH
        to_target = f"{megabytes_to_target(self.local)} / {megabytes_to_target(self.dense)}"
        change = loss_change(self.local, self.dense)
        losses = (f"{fmt(self.local.mean('final_val_loss'), 3)} / {fmt(self.dense.mean('final_val_loss'), 3)}"
                  + ("" if change is None else f" ({change:+.1%})"))
        return [self.profile, str(self.steps), self.local.setting("codec"), per_token(self.local), per_token(self.dense),
                DASH if self.ratio is None else f"{self.ratio:.0f}x", to_target, losses, self.verdict()]


def anchors(groups: list[Group], runs_dir: Path) -> list[Anchor]:
    """Each ML group with local steps > 1 against its sync-dense sibling (local steps 1, codec none, same
    protocol and other SAME fields)."""
    found = []
    for g in groups:
        if g.mode != "ml" or not g.ok or (steps := local_steps(g, runs_dir)) <= 1:
            continue
        dense = next((s for s in siblings(g, groups) if s.setting("codec") == "none" and local_steps(s, runs_dir) == 1), None)
        if dense is not None:
            found.append(Anchor(g.profile, steps, g, dense))
    return found
