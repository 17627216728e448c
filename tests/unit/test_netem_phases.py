"""Phase schedules as pure functions of time: which link a container has at t, and when the next
change comes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_llm_train.netem.preset import LinkSpec, load_preset

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"


def preset_of(tmp_path: Path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_preset(str(path), NETEM_DIR)


@pytest.mark.parametrize("t, down", [(0, False), (14.99, False), (15, True), (19.99, True), (20, False),
                                     (44.99, False), (45, True), (49.99, True), (50, False), (75, True)])
def test_brownout_cuts_workers_for_5_s_every_30_s(t, down):
    preset = load_preset("brownout", NETEM_DIR)
    assert preset.link_at("worker", 3, t).down is down
    assert preset.link_at("controller", 0, t).down is False
    assert preset.link_at("worker", 3, t).model_copy(update={"down": False}) == preset.link_for("worker", 3)


@pytest.mark.parametrize("t, nxt", [(0, 15), (14.9, 15), (15, 20), (19, 20), (20, 45), (45, 50), (50, 75)])
def test_brownout_next_change(t, nxt):
    assert load_preset("brownout", NETEM_DIR).next_change(t) == nxt


def test_one_shot_phase_and_open_ended_phase(tmp_path):
    preset = preset_of(tmp_path, """
default: {delay_ms: 10}
phases:
  - {name: spike, start_s: 5, duration_s: 2, targets: [worker:1], link: {delay_ms: 200, loss_pct: 5}}
  - {name: degrade, start_s: 60, targets: [all], link: {rate_mbit: 1}}
""")
    assert preset.link_at("worker", 1, 6) == LinkSpec(delay_ms=200, loss_pct=5)
    assert preset.link_at("worker", 0, 6) == LinkSpec(delay_ms=10)  # only worker 1 is targeted
    assert preset.link_at("worker", 1, 7) == LinkSpec(delay_ms=10)
    assert preset.link_at("controller", 0, 1000) == LinkSpec(delay_ms=10, rate_mbit=1)
    assert [preset.next_change(t) for t in (0, 5, 7, 60)] == [5, 7, 60, None]
    assert preset.phases_active(6) == ["spike"]


def test_later_phases_win_where_they_overlap(tmp_path):
    preset = preset_of(tmp_path, """
default: {delay_ms: 10}
phases:
  - {start_s: 0, duration_s: 10, targets: [workers], link: {delay_ms: 50, loss_pct: 1}}
  - {start_s: 5, duration_s: 10, targets: [workers], link: {delay_ms: 80}}
""")
    assert preset.link_at("worker", 0, 3) == LinkSpec(delay_ms=50, loss_pct=1)
    assert preset.link_at("worker", 0, 7) == LinkSpec(delay_ms=80, loss_pct=1)
    assert preset.link_at("worker", 0, 12) == LinkSpec(delay_ms=80)
    assert len(preset.links_over_time("worker", 0)) == 4  # base, first, second, both


def test_explicit_null_rate_in_a_phase_lifts_the_cap(tmp_path):
    preset = preset_of(tmp_path, """
default: {rate_mbit: 5}
phases: [{start_s: 10, targets: [ps], link: {rate_mbit: null}}]
""")
    assert preset.link_at("ps", 0, 9).rate_mbit == 5
    assert preset.link_at("ps", 0, 10).rate_mbit is None


@pytest.mark.parametrize("t, seconds, start", [
    (0, 10, 0),      # 0-15 is quiet
    (0, 18, 20),     # 0-15 too short; 15-20 down; 20-45 is 25 s
    (10, 10, 20),    # 10-15 too short
    (16, 10, 20),    # inside an outage: wait for its end
    (21, 24, 21),    # 21-45 is 24 s
    (21, 25, 50),    # 21-45 too short, the next gap 50-75
])
def test_quiet_window_skips_outages_and_short_gaps(t, seconds, start):
    preset = load_preset("brownout", NETEM_DIR)
    assert preset.quiet_window(t, seconds, [("worker", 0), ("controller", 0)]) == start


def test_quiet_window_ignores_phases_of_other_containers():
    preset = load_preset("brownout", NETEM_DIR)
    # The controller is never down, but any link change counts: the worker's outages still bound it.
    assert preset.quiet_window(16, 10, [("controller", 0)]) == 20
    assert preset.quiet_window(0, 30, [("worker", 0)]) is None  # gaps are 25 s at most
