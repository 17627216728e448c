"""EWMA of worker telemetry, checked by hand."""

from __future__ import annotations

import pytest

from dist_llm_train.controller.telemetry import ewma, merge


def test_first_sample_is_taken_as_is():
    assert ewma(None, 8.0, 0.3) == 8.0


@pytest.mark.parametrize("previous, sample, alpha, expected", [
    (10.0, 20.0, 0.5, 15.0),
    (10.0, 20.0, 0.25, 12.5),
    (10.0, 20.0, 1.0, 20.0),
    (100.0, 0.0, 0.3, 70.0),
])
def test_ewma_weights_the_newest_sample_by_alpha(previous, sample, alpha, expected):
    assert ewma(previous, sample, alpha) == pytest.approx(expected)


def test_merge_averages_rates_and_keeps_latest_counters():
    state = merge({}, {"tokens_per_sec": 100.0, "step_time_s": 2.0, "epoch": 1, "batch": 3, "rtt_ms": 10.0}, 0.5)
    state = merge(state, {"tokens_per_sec": 200.0, "batch": 4, "down_mbit": 80.0, "compute_utilization": 0.5}, 0.5)

    assert state["ewma_tokens_per_sec"] == pytest.approx(150.0)
    assert state["ewma_step_time_s"] == 2.0  # absent from the second sample: unchanged
    assert state["rtt_ms"] == 10.0
    assert state["down_mbit"] == 80.0
    assert (state["epoch"], state["batch"], state["compute_utilization"]) == (1, 4, 0.5)
    assert state["samples"] == 2


def test_a_step_change_is_absorbed_geometrically():
    value = None
    for _ in range(3):
        value = ewma(value if value is not None else 0.0, 1.0, 0.3)

    assert value == pytest.approx(1 - 0.7 ** 3)  # 66 % after three samples, as telemetry.py says
