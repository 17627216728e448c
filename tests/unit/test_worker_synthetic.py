"""A synthetic task's compute time: tokens / rate, refused when no run could wait for it."""

from __future__ import annotations

import threading

import pytest

from dist_llm_train.worker.synthetic import MAX_COMPUTE_S, TaskRefused, compute_seconds


@pytest.mark.parametrize("tokens, rate, seconds", [
    (50_000, 50_000.0, 1.0),
    (80_000, 50_000.0 * 0.001, 1600.0),  # the slowest preset factor on the default speed: slow, not absurd
    (0, 50_000.0, 0.0),
    (4096, 4096 / MAX_COMPUTE_S, MAX_COMPUTE_S),
])
def test_compute_time_is_tokens_over_rate(tokens, rate, seconds):
    assert compute_seconds(tokens, rate) == pytest.approx(seconds)


@pytest.mark.parametrize("tokens, rate, words", [
    (4096, 50_000.0 * 1e-300, "would compute for 8.19e+298 s"),  # speed 1e-300: the worker died on OverflowError
    (4096, 5e-324 * 0.001, "not a positive finite number"),  # underflows to 0: a division by zero
    (4096, 0.0, "not a positive finite number"),
    (4096, -50_000.0, "not a positive finite number"),
    (4096, float("nan"), "not a positive finite number"),
    (4096, float("inf"), "not a positive finite number"),
    (10**12, 1.0, "more than 86400 s"),
    (4097, 4096 / MAX_COMPUTE_S, "more than 86400 s"),
], ids=["speed-1e-300", "underflow", "zero", "negative", "nan", "inf", "huge-task", "just-over"])
def test_absurd_compute_time_is_refused_saying_why(tokens, rate, words):
    with pytest.raises(TaskRefused, match=words.replace("+", r"\+")):
        compute_seconds(tokens, rate)


def test_every_accepted_time_can_be_waited_for():
    assert MAX_COMPUTE_S < threading.TIMEOUT_MAX  # above it, Event.wait raised OverflowError
