"""Per-update L2 clipping and Gaussian noise on the aggregate (the Gaussian mechanism of DP-SGD / DP-FedAvg).

Convention: each of the n updates of a window is clipped to L2 norm <= clip_norm C, the rule aggregates them, and
noise N(0, sigma^2 I) with

    sigma = noise_multiplier * C / n

is added to the aggregate. For the mean this is noise of std noise_multiplier * C on the sum of the n clipped
updates, whose sensitivity to adding or removing one update is C: the noise multiplier z means what it means in
DP-SGD accounting (with n fixed per window; a sync window that shrinks raises sigma, since n is the window actually
aggregated). For median, trimmed mean, Krum and Bulyan the same noise is added, but their sensitivity is not
C / n, so no privacy claim follows from z there. No accountant is kept: epsilon is not computed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def clip_updates(updates: Tensor, clip_norm: float) -> tuple[Tensor, Tensor]:
    """Each row of `updates` [n, d] scaled to L2 norm <= clip_norm; returns (clipped, the norms before clipping).

    A row already within the norm is returned unchanged (factor exactly 1), so clipping is a no-op on small updates.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    factors = (clip_norm / norms.clamp_min(clip_norm)).unsqueeze(1)
    return updates * factors, norms


def noise_std(noise_multiplier: float, clip_norm: float, window: int) -> float:
    """sigma = noise_multiplier * clip_norm / window (see the module docstring)."""
    return noise_multiplier * clip_norm / window


def add_noise(aggregate: Tensor, std: float, generator: torch.Generator) -> Tensor:
    """aggregate + N(0, std^2 I), drawn from `generator` (seeded by the PS, so a run's noise is reproducible)."""
    return aggregate + std * torch.randn(aggregate.shape, generator=generator)
