"""The PS benchmark's verdicts on (3): time-to-target ratio and local-steps utilization from run rows."""

import pytest

from dist_llm_train.bench.ps import judge_wan


def row(to_target: str, duration: str, utilization: str = "0.5") -> dict[str, str]:
    return {"time_to_target_s": to_target, "duration_s": duration, "compute_utilization": utilization}


def verdicts(capsys) -> list[str]:
    return [line.strip() for line in capsys.readouterr().out.splitlines()]


def test_topk_at_a_third_of_sync_and_high_utilization_meet_the_targets(capsys):
    judge_wan({("high_rtt", "async", "topk", 1): row("40", "45"), ("high_rtt", "sync", "none", 1): row("120", "130"),
               ("lan", "async", "none", 50): row("30", "35", "0.95"),
               ("high_rtt", "async", "none", 50): row("50", "55", "0.91")})

    lines = verdicts(capsys)

    assert lines[0].startswith("target high_rtt async top-k <= 50% of sync dense's time to target (33%)")
    assert all(line.endswith(": met") for line in lines) and len(lines) == 3


def test_a_sync_run_that_timed_out_bounds_the_ratio_by_its_duration(capsys):
    # sync never reached the target in 300 s: 100 / 300 is an upper bound on the true ratio
    judge_wan({("high_rtt", "async", "topk", 1): row("100", "110"), ("high_rtt", "sync", "none", 1): row("", "300")})

    assert verdicts(capsys)[0] == "target high_rtt async top-k <= 50% of sync dense's time to target (33%): met"


@pytest.mark.parametrize("topk, sync, utilization, expect", [
    (row("", "300"), row("", "300"), "0.95", "(100%, top-k did not reach it): MISSED"),  # top-k never got there
    (row("80", "85"), row("120", "125"), "0.95", "(67%): MISSED"),                     # too slow
])
def test_misses_are_reported(capsys, topk, sync, utilization, expect):
    judge_wan({("high_rtt", "async", "topk", 1): topk, ("high_rtt", "sync", "none", 1): sync,
               ("lan", "async", "none", 50): row("1", "2", utilization)})

    assert verdicts(capsys)[0].endswith(expect)


def test_low_utilization_and_missing_cells(capsys):
    judge_wan({("lan", "async", "none", 50): row("1", "2", "0.85")})

    lines = verdicts(capsys)

    assert lines[0].endswith("(-): no figure")
    assert lines[1] == "target lan: local steps keep utilization >= 90% (85.0%): MISSED"
    assert lines[2].endswith("(-): no figure")
