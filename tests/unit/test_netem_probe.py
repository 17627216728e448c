"""The fidelity probe's pure parts: what a pair of links promises, how probes are spaced, and
how measured figures are judged."""

from __future__ import annotations

import math

import pytest

from dist_llm_train.netem.preset import LinkSpec
from dist_llm_train.netem.probe import PROBE_WIRE_BITS, expected, judge, schedule


def test_expected_by_hand():
    a = LinkSpec(delay_ms=40, jitter_ms=3, loss_pct=1, rate_mbit=10)
    b = LinkSpec(delay_ms=5, jitter_ms=4, loss_pct=2, rate_mbit=50)
    # Mathis: 1448 B x 8 / 45 ms = 0.2574 Mbit/s, x sqrt(1.5) / sqrt(p): p = 2 % -> x 8.660, p = 1 % -> x 12.25
    assert expected(a, b) == pytest.approx({
        "rtt_ms": 45.0,
        "rtt_stdev_ms": 5.0,  # sqrt(9 + 16)
        "loss_pct": 100 * (1 - 0.99 * 0.98),  # 2.98 %
        "mbit": 10.0,
        "mathis_up_mbit": 2.2293,  # userspace: a -> b meets b's loss (on b's ingress), 2 %
        "mathis_down_mbit": 3.1527,  # b -> a meets a's, 1 %
    }, rel=1e-4)
    netem = expected(a, b, "netem")  # netem: a packet meets its sender's loss (egress)
    assert netem["mathis_up_mbit"] == pytest.approx(3.1527, rel=1e-4)
    assert netem["mathis_down_mbit"] == pytest.approx(2.2293, rel=1e-4)
    assert expected(LinkSpec(), LinkSpec())["mbit"] is None
    assert expected(LinkSpec(delay_ms=5), LinkSpec())["mathis_up_mbit"] is None  # no loss: no bound


def test_schedule_spaces_rtt_probes_by_twice_the_jitter_and_paces_to_a_tenth_of_the_cap():
    plan = schedule(LinkSpec(delay_ms=80, jitter_ms=20, rate_mbit=5), LinkSpec())
    assert plan["rtt_interval_s"] == pytest.approx(0.040)
    assert PROBE_WIRE_BITS / 0.5e6 < 0.001 and plan["loss_interval_s"] == 0.001  # 0.93 ms pacing, 1 ms floor
    slow = schedule(LinkSpec(rate_mbit=0.1), LinkSpec())
    assert slow["loss_interval_s"] == pytest.approx(PROBE_WIRE_BITS / 0.01e6)  # 46 ms at 100 kbit/s
    far = schedule(LinkSpec(delay_ms=595), LinkSpec(delay_ms=5))
    assert far["timeout_s"] == pytest.approx(2.3) and far["tcp_warmup_s"] == pytest.approx(6.0)


def measured(rtt=100.0, stdev=2.8, loss=0.0, mbit=9.0):
    return {"rtt_ms": rtt, "rtt_stdev_ms": stdev, "loss_pct": loss, "mbit": mbit}


EXP = {"rtt_ms": 100.0, "rtt_stdev_ms": 2.0, "loss_pct": 0.0, "mbit": 10.0}


@pytest.mark.parametrize("figures, key, ok", [
    (measured(rtt=110.0), "rtt_ms", True), (measured(rtt=110.1), "rtt_ms", False),  # 10 % of 100
    (measured(rtt=None), "rtt_ms", False),
    (measured(stdev=3.0), "rtt_stdev_ms", True), (measured(stdev=3.01), "rtt_stdev_ms", False),  # 1 ms floor > 30 %
    (measured(loss=1.0), "loss_pct", True), (measured(loss=1.01), "loss_pct", False),
    (measured(mbit=8.5), "mbit", True), (measured(mbit=8.49), "mbit", False), (measured(mbit=10.51), "mbit", False),
])
def test_judge_tolerances(figures, key, ok):
    assert judge(figures, EXP)[key] is ok


def test_small_rtt_gets_the_2_ms_floor_and_lossy_or_fast_links_are_not_judged_on_tcp():
    assert judge(measured(rtt=3.9), {**EXP, "rtt_ms": 2.0})["rtt_ms"] is True
    assert judge(measured(mbit=1.0), {**EXP, "loss_pct": 0.5})["mbit"] is None
    assert judge(measured(mbit=1.0), {**EXP, "mbit": 100.0})["mbit"] is None
    assert judge(measured(mbit=1.0), {**EXP, "mbit": None})["mbit"] is None
    assert math.isclose(expected(LinkSpec(jitter_ms=3, delay_ms=3), LinkSpec())["rtt_stdev_ms"], 3.0)
