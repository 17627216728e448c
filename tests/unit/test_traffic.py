"""The traffic tool's summary arithmetic, with figures checkable by hand."""

from dist_llm_train.netem.traffic import rtt_summary


def test_rtt_summary():
    summary = rtt_summary([1.0, None, 3.0, 2.0, None])
    assert summary == {"count": 5, "mean_ms": 2.0, "stdev_ms": (2 / 3) ** 0.5, "p50_ms": 2.0, "p99_ms": 3.0,
                       "loss_pct": 40.0}


def test_rtt_summary_all_lost():
    assert rtt_summary([None, None]) == {"count": 2, "mean_ms": None, "stdev_ms": None, "p50_ms": None,
                                         "p99_ms": None, "loss_pct": 100.0}
