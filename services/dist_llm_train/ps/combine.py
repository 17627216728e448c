"""One window of accepted updates -> the one update the server optimizer applies. Pure: no socket, no PS state.

    (1) each row clipped to L2 <= `privacy.clip_norm`;
    (2) with `staleness.scale_lr` each row multiplied by lr_scale(s) = 1 / max(1, s), before aggregating, so a
        stale row weighs less in a mean and a robust rule sees it as smaller (scaling the aggregate instead
        would need one staleness per window);
    (3) `aggregation.rule` (ps/aggregation.py);
    (4) Gaussian noise of std noise_multiplier * clip_norm / n, drawn from the caller's generator.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..ml.config import MLConfig
from .aggregation import aggregate
from .privacy import add_noise, clip_updates, noise_std
from .staleness import lr_scale


def combine(updates: Sequence[Tensor], staleness: Sequence[int], ml: MLConfig, noise: torch.Generator) -> Tensor:
    """The step's update [d] from n updates [d] and their staleness. Draws from `noise` only when noise is
    configured. ValueError when the rule's condition fails for this window (`aggregation.aggregate`).

    One row with nothing to clip, scale or noise is returned as it is (a view of the received frame for
    codec none): every rule whose condition holds for one row returns that row, so a pass over it is saved.
    """
    n = len(updates)
    rows = updates[0].unsqueeze(0) if n == 1 else torch.stack(list(updates))
    if ml.privacy.clip_norm is not None:
        rows, _ = clip_updates(rows, ml.privacy.clip_norm)
    scales = [lr_scale(s) if ml.staleness.scale_lr else 1.0 for s in staleness]
    if any(scale != 1.0 for scale in scales):
        rows = rows * torch.tensor(scales).unsqueeze(1)
    agg = ml.aggregation
    value = rows[0] if n == 1 else aggregate(agg.rule, rows, agg.f, agg.multi_krum_m).value
    if ml.privacy.noise_multiplier > 0:
        value = add_noise(value, noise_std(ml.privacy.noise_multiplier, ml.privacy.clip_norm, n), noise)
    return value
