"""When an update is absurd and when a worker's training has diverged: one bound for the PS and the workers.

The PS refuses a pushed update whose L2 norm is above `ml.max_update_norm` (a token holder's 3e38 per
coordinate is finite, passes the wire's NaN / Inf check, and would overflow the parameters a few steps later).
A worker checks its own honest update against the same bound before sending it: non-finite loss or update,
or a norm above the bound, means its training diverged, and it tells the PS instead of pushing (ml_loop.py).
So an honest worker is never refused by the bound: it either sends or reports.

The default is RMS_BOUND * sqrt(d): a root-mean-square of 10 per coordinate, for parameters initialised at
0.14 (default model) to 0.41 (ml_ci) RMS. Honest updates measured (one worker, serially, bundled corpus, the
server optimizer applying each update; torch 2.13, 2 cores):

| model (d)                          | update                                 | norm: median / max | max / sqrt(d) |
|------------------------------------|----------------------------------------|--------------------|---------------|
| ml_ci LSTM (49,920)                | H = 1 gradient, SGD 0.5, 600 steps     | 0.22 / 0.92        | 0.0041        |
| ml_ci as transformer (77,056)      | H = 1 gradient, SGD 0.5, 300 steps     | 0.26 / 3.8         | 0.014         |
| default LSTM (938,240), ml_demo    | H = 1 gradient, Adam 0.002, 200 steps  | 0.38 / 1.7         | 0.0017        |
| ml_ci LSTM                         | H = 50 Adam delta, lr 1e-3, 30 rounds  | 1.0 / 8.1          | 0.036         |
| ml_ci LSTM                         | H = 50 Adam delta, lr 1e-2, 20 rounds  | 7.3 / 27           | 0.12          |
| default LSTM, ml_diloco            | H = 50 Adam delta, lr 1e-3, 6 rounds   | 6.2 / 13           | 0.014         |

The largest, 0.12 per coordinate at 10x DiLoCo's inner lr, is 83x below the bound; gradients are 700x below
it and more. A delta grows with H x inner_lr: Adam moves a coordinate by about inner_lr per step, at most
about 3.2 x inner_lr ((1 - b1) / sqrt(1 - b2), Kingma & Ba 2015, 2.1), so settings with H x inner_lr of 3 or
more can reach 10 per coordinate honestly: set `ml.max_update_norm` for them. Anything above the bound moves
the parameters by 25-70x their scale in one step: a diverged run (measured: server lr x1e6 on ml_ci, gradient
norms 5e3-4e5 within 2 versions) or an attack. Cost: one norm over the update, 0.12 ms per 1 M (float32).
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
