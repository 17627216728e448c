"""The report's targets (experiments/targets.py): adaptive compression against the better fixed setting, and
the local-step anchor, from fixture rows through build_report and the CLI."""

from __future__ import annotations

import pytest

from dist_llm_train.cli import main as cli_main
from dist_llm_train.experiments.groups import group_rows, late_only, read_mode_rows
from dist_llm_train.experiments.report import build_report
from dist_llm_train.experiments.groups import Group
from dist_llm_train.experiments.targets import AdaptiveTarget, adaptive_targets, anchors
from dist_llm_train.results import write_run
from test_report import ml_row


def config(steps: int) -> dict:
    return {"config": {"ml": {"local": {"steps": steps}}}}


def group_of(runs, profile, times, loss=2.42):
    """A group of adaptive rows held in memory (not written), its times to target as given."""
    return Group("ml", profile, "adaptive", [{k: "" if v is None else str(v) for k, v in
                                              ml_row(f"g{i}", profile, "async", "adaptive", ttt=t, final_val_loss=loss).items()}
                                             for i, t in enumerate(times)])


def add(runs, profile, codec, times, loss, protocol="async", steps=1, **extra):
    for seed, ttt in enumerate(times):
        run_id = f"{profile}-{protocol}-{codec}-{steps}-{seed}"
        write_run(runs, run_id, ml_row(run_id, profile, protocol, codec, ttt=ttt, seed=seed, final_val_loss=loss,
                                       **extra), config(steps))


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    # federation: top-k is the better fixed setting (41 s); adaptive takes 30 s = 0.73x at +2.3 % loss: meets
    add(runs, "federation", "none", [50.0, 52.0, 54.0], 2.20)
    add(runs, "federation", "topk", [40.0, 41.0, 42.0], 2.30)
    add(runs, "federation", "adaptive", [28.0, 30.0, 32.0], 2.25)
    # straggler: top-k never reached the target, dense did at 52 s; adaptive 46 s = 0.88x: misses on time
    add(runs, "straggler", "none", [50.0, 52.0, 54.0], 2.20)
    add(runs, "straggler", "topk", [None, None, None], 2.60)
    add(runs, "straggler", "adaptive", [45.0, 46.0, 47.0], 2.21)
    # varying: adaptive never reached it and ended 10 % worse than dense
    add(runs, "varying", "none", [70.0, 72.0, 74.0], 2.20)
    add(runs, "varying", "adaptive", [None, None, None], 2.42)
    # the anchor under lan: 390 against 2.25 bytes per token = 173x at +1.4 % loss; the bar is 200x
    add(runs, "lan", "none", [11.0, 12.0, 13.0], 2.21, protocol="sync", bytes_up=195e6, bytes_down=195e6)
    add(runs, "lan", "int8", [None, None, None], 2.24, protocol="sync", steps=50, bytes_up=1.0e6, bytes_down=1.25e6)
    return runs


def test_adaptive_is_measured_against_the_better_fixed_setting_and_dense_loss(runs):
    found = {t.profile: t for t in adaptive_targets(group_rows(read_mode_rows(runs), runs), runs)}

    assert sorted(found) == ["federation", "straggler", "varying"]
    assert found["federation"].better.setting("codec") == "topk"
    assert found["federation"].ratio == pytest.approx(30 / 41)
    assert found["federation"].verdict() == "meets"
    assert found["straggler"].better.setting("codec") == "none"
    assert found["straggler"].verdict() == "misses: time 0.88x > 0.8x"
    assert found["varying"].verdict() == "misses: adaptive reached the target in 0 of 3 runs; final loss +10.0% > +5%"
    partial = AdaptiveTarget("varying", group_of(runs, "varying", [40.0, None, 41.0]), found["varying"].dense,
                             found["varying"].dense)
    assert partial.verdict() == "misses: adaptive reached the target in 2 of 3 runs; final loss +10.0% > +5%"
    row = found["federation"].row()
    assert row[2:5] == ["topk", "41.0 ± 2.5 (3/3)", "0.73"] and row[6:8] == ["2.250 / 2.200", "+2.3%"]
    assert row[5].startswith("clear difference (Welch's t")


def test_the_anchor_compares_bytes_per_token_with_sync_dense_of_one_local_step(runs):
    (anchor,) = anchors(group_rows(read_mode_rows(runs), runs), runs)

    assert (anchor.profile, anchor.steps, anchor.dense.setting("codec")) == ("lan", 50, "none")
    assert anchor.ratio == pytest.approx(390 / 2.25)
    assert anchor.verdict() == "misses: 173x < 200x"
    assert anchor.row()[3:8] == ["2.25 (n=3)", "390.00 (n=3)", "173x", "– (0/3) / 1.2 (3/3)", "2.240 / 2.210 (+1.4%)"]


def test_a_local_step_group_without_a_dense_sibling_and_adaptive_without_dense_are_left_out(tmp_path):
    runs = tmp_path / "runs"
    add(runs, "lan", "int8", [None], 2.24, protocol="sync", steps=50)
    add(runs, "lan", "none", [10.0], 2.2, protocol="sync", steps=10)  # local steps too: not the reference
    add(runs, "federation", "adaptive", [30.0], 2.25)
    add(runs, "federation", "topk", [40.0], 2.30)
    groups = group_rows(read_mode_rows(runs), runs)

    assert [a.steps for a in anchors(groups, runs)] == []
    assert adaptive_targets(groups, runs) == []


def test_the_report_writes_the_tables_and_the_command_prints_each_verdict(runs, capsys):
    report = build_report(runs, runs / "report", "cmd")
    text = (runs / "report" / "results.md").read_text()
    page = (runs / "report" / "index.html").read_text()

    assert "## ML: adaptive compression against fixed" in text and "## ML: local steps against sync dense" in text
    assert "misses: 173x &lt; 200x" in page and "### ML: adaptive compression against fixed" in report.readme_section()
    assert cli_main(["report", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "adaptive compression against fixed: federation: ratio (bar <= 0.8) 0.73: meets" in out
    assert "local steps against sync dense (communication anchor): lan: ratio (bar >= 200x) 173x: misses: 173x < 200x" in out


LATE_REASON = ("target_val_loss 2.3 reached at version 260 (2.2881); emulation out of tolerance: worker-1: 3.1 % of "
               "22580 packets released later than the tolerance (p99 6.4565 ms; at most 1 % may be, binomial test at 1 %)")


@pytest.mark.parametrize("status, reason, late", [
    ("degraded", LATE_REASON, True),
    ("degraded", LATE_REASON + "; worker-2: 4 packets dropped that the preset did not ask for (NFQUEUE)", False),
    ("degraded", "target reached; links degraded: the sidecar restarted" + LATE_REASON[LATE_REASON.index(";"):], False),
    ("degraded", "target reached; links degraded: the sidecar restarted", False),
    ("finished", LATE_REASON, False),
    ("failed", LATE_REASON, False)])
def test_late_only_is_a_degraded_row_whose_only_fault_is_timer_lateness(status, reason, late):
    assert late_only({"status": status, "reason": reason}) is late


def test_include_late_counts_late_runs_and_says_so_everywhere(tmp_path, capsys):
    runs = tmp_path / "runs"
    add(runs, "federation", "none", [50.0, 52.0], 2.20)
    add(runs, "federation", "adaptive", [30.0], 2.25)
    write_run(runs, "late", ml_row("late", "federation", "async", "adaptive", ttt=32.0, seed=5, final_val_loss=2.25,
                                   status="degraded", reason=LATE_REASON), config(1))
    write_run(runs, "dropped", ml_row("dropped", "federation", "async", "adaptive", ttt=31.0, seed=6, final_val_loss=2.25,
                                      status="degraded", reason=LATE_REASON + "; worker-2: 4 packets dropped that "
                                      "the preset did not ask for (NFQUEUE)"), config(1))

    strict = build_report(runs, runs / "report", "cmd")
    assert sorted(r[3] for r in strict.glance) == ["1/3", "2/2"]
    assert strict.counted == "Statistics over the runs with status `finished`"
    assert cli_main(["report", "--runs", str(runs), "--include-late"]) == 0
    assert "adaptive compression against fixed: federation: ratio (bar <= 0.8) 0.61: meets" in capsys.readouterr().out

    late = build_report(runs, runs / "report", "cmd", include_late=True)
    assert sorted(r[3] for r in late.glance) == ["2/2", "2/3 (1 late)"]
    assert "1 `degraded` runs whose only fault is the delayers' timer lateness" in late.counted
    assert late.counted in (runs / "report" / "results.md").read_text() and late.counted in late.readme_section()
    assert {r[0] for r in late.failed} == {"late", "dropped"}  # still listed with their reasons
