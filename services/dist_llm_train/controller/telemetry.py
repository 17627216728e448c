"""Per-worker telemetry: exponentially weighted moving averages of what workers measure.

ewma_new = alpha * sample + (1 - alpha) * ewma_old; the first sample is taken as it is.
With alpha = 0.3 a step change is 66 % absorbed after 3 samples and 97 % after 10, so at one
sample per second the scheduler sees a worker slow down within a few seconds, while a single
outlier moves the average by only 30 %.
"""

from __future__ import annotations

from typing import Any

# sample field -> stored EWMA column
EWMA_FIELDS = {
    "tokens_per_sec": "ewma_tokens_per_sec",
    "step_time_s": "ewma_step_time_s",
    "rtt_ms": "rtt_ms",
    "down_mbit": "down_mbit",
}
# fields whose newest value replaces the previous one
LATEST_FIELDS = ("epoch", "batch", "compute_utilization", "bytes_up", "bytes_down", "staleness")


def ewma(previous: float | None, sample: float, alpha: float) -> float:
    return sample if previous is None else alpha * sample + (1.0 - alpha) * previous


def merge(previous: dict[str, Any], sample: dict[str, Any], alpha: float) -> dict[str, Any]:
    """The stored telemetry after one sample; fields absent from the sample (None) keep their value."""
    merged = dict(previous)
    for field, column in EWMA_FIELDS.items():
        if sample.get(field) is not None:
            merged[column] = ewma(previous.get(column), float(sample[field]), alpha)
    for field in LATEST_FIELDS:
        if sample.get(field) is not None:
            merged[field] = sample[field]
    merged["samples"] = (previous.get("samples") or 0) + 1
    return merged
