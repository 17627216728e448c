"""When an update is absurd and when a worker's training has diverged: one bound for the PS and the workers.

The PS refuses a pushed update whose L2 norm is above `ml.max_update_norm` (a token holder's 3e38 per
coordinate is finite, passes the wire's NaN / Inf check, and would overflow the parameters a few steps later).
A worker checks its own honest update against the same bound before sending it: non-finite loss or update,
or a norm above the bound, means its training diverged, and it tells the PS instead of pushing (ml_loop.py).
So an honest worker is never refused by the bound: it either sends or reports.

The default is RMS_BOUND * sqrt(d): a root-mean-square of 10 per coordinate, for parameters initialised at
about 0.06 RMS. Honest updates measured (single worker, serial, bundled corpus; max over the run):

| model (d)                          | update                              | norm: median / max | max / sqrt(d) |
|------------------------------------|-------------------------------------|--------------------|---------------|
| ml_ci LSTM (49,920)                | H = 1 gradient, SGD 0.5, 600 steps  | 0.22 / 0.92        | 0.0041        |
| ml_ci transformer (77,056)         | H = 1 gradient, SGD 0.5, 300 steps  | 0.26 / 3.8         | 0.014         |
| ml_ci LSTM                         | H = 50 Adam delta, lr 1e-3, 30 rnds | 1.0 / 8.1          | 0.036         |
| ml_ci LSTM                         | H = 50 Adam delta, lr 1e-2, 20 rnds | 7.3 / 27           | 0.12          |
| default LSTM (938,240), ml_demo    | H = 1 gradient, 200 steps           | MEASURING          |               |
| default LSTM, ml_diloco            | H = 50 Adam delta, lr 1e-3, 6 rnds  | MEASURING          |               |

An Adam delta moves each coordinate by at most about 3 x inner_lr per step (|m| / sqrt(v) <= (1 - b1) /
sqrt(1 - b2) = 3.2), so H x inner_lr x 3.2 bounds its RMS: 0.16 for DiLoCo's 50 x 1e-3, 1.6 for 50 x 1e-2.
Gradients are smaller still. A run whose updates exceed 10 per coordinate is one whose parameters move by
100x their scale per step: diverged, or an attack. Cost: one norm over the update, 0.12 ms per 1 M (float32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import MLConfig

RMS_BOUND = 10.0  # default ml.max_update_norm / sqrt(d)


def max_update_norm(ml: MLConfig, numel: int) -> float:
    """The run's bound: `ml.max_update_norm`, or RMS_BOUND * sqrt(numel) when it is null."""
    return ml.max_update_norm if ml.max_update_norm is not None else RMS_BOUND * math.sqrt(numel)


def update_norm(update: Tensor) -> float:
    """L2 norm of a float32 vector; NaN or Inf when it holds them. Recomputed in float64 when float32 overflows
    (any coordinate above 1.8e19), so a refusal states the real size."""
    norm = torch.linalg.vector_norm(update).item()
    if norm == math.inf:
        norm = torch.linalg.vector_norm(update, dtype=torch.float64).item()
    return norm


def divergence(loss: float, update: Tensor, bound: float) -> str | None:
    """Why a worker's own step diverged (non-finite loss or update, or an update norm above `bound`), or None."""
    if not math.isfinite(loss):
        return f"training loss is {loss}"
    norm = update_norm(update)
    if not math.isfinite(norm):
        return "the update holds NaN or Inf"
    if norm > bound:
        return f"update norm {norm:.4g} is above ml.max_update_norm {bound:.4g}"
    return None
