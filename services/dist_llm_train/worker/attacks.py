"""What a Byzantine worker sends instead of its honest update (config `attack.kind`, strength `attack.scale`).

Every attack is `attack(update, samples, scale, generator) -> Tensor[d]` in `ATTACKS`: `update` is this step's
honest update [d] and `samples` [s, d] are honest updates the attacker computed itself (e.g. its last s updates,
this one included). An attacker cannot see the other workers' updates, so the attacks that need the honest mean
and spread (alie, ipm) estimate them from `samples`; with iid shards, the spread of one worker's own mini-batch
updates approximates the spread across workers. Each Byzantine worker computes its own estimate, so they do not
collude exactly as in the papers, where all send the same vector.

| kind      | sends                                         | scale means                 | against                      |
|-----------|-----------------------------------------------|-----------------------------|------------------------------|
| sign_flip | -scale * update                               | strength (10: far outlier)  | mean; caught by Krum, median  |
| scaled    | scale * update                                | strength                    | mean                          |
| gaussian  | N(0, (scale * rms(update))^2 I), rms = ||update|| / sqrt(d) | noise level    | mean                          |
| alie      | mu - scale * sigma, per coordinate (Baruch et al. 2019, "A little is enough") | z | median, trimmed mean, Krum |
| ipm       | -scale * mu (Xie et al. 2019, inner-product manipulation) | epsilon           | Krum, median for small eps    |

mu and sigma are the coordinate-wise mean and standard deviation (n-1 denominator) of `samples`. ALIE only works
when z is small enough that the vector stays inside the honest spread: Baruch et al. take
z_max = Phi^-1((n - s) / n) with s = floor(n/2 + 1) - f, which `alie_z_max` computes (0.57 for n = 7, f = 2;
0.35 for n = 11, f = 2); use it as `attack.scale` for alie, not the default 10 meant for sign_flip.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, get_args

import torch
from torch import Tensor

from ..ml.config import AttackName

Attack = Callable[[Tensor, Tensor, float, torch.Generator], Tensor]


def sign_flip(update: Tensor, samples: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    return -scale * update


def scaled(update: Tensor, samples: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    return scale * update


def gaussian(update: Tensor, samples: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    rms = torch.linalg.vector_norm(update) / math.sqrt(update.numel())
    return scale * rms * torch.randn(update.shape, generator=generator)


def alie(update: Tensor, samples: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """mu - z sigma per coordinate; ValueError with fewer than 2 samples (no spread to estimate)."""
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(f"alie needs at least 2 honest samples [s, d] to estimate their spread, got {list(samples.shape)}")
    return samples.mean(dim=0) - scale * samples.std(dim=0)


def ipm(update: Tensor, samples: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    if samples.dim() != 2 or samples.shape[0] < 1:
        raise ValueError(f"ipm needs at least 1 honest sample [s, d] to estimate the mean, got {list(samples.shape)}")
    return -scale * samples.mean(dim=0)


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s z for n workers of which f attack: under a normal model of the honest values, about
    s = floor(n/2 + 1) - f of them lie below mu - z sigma, so that value with the f attackers' copies holds the
    majority that median-like rules and Krum look for. ValueError when no such s exists (0 < s < n fails)."""
    supporters = math.floor(n / 2 + 1) - f
    if not 0 < supporters < n:
        raise ValueError(f"alie_z_max needs 0 < floor(n/2 + 1) - f < n: n={n}, f={f}")
    return NormalDist().inv_cdf((n - supporters) / n)


ATTACKS: dict[str, Attack] = {"sign_flip": sign_flip, "scaled": scaled, "gaussian": gaussian, "alie": alie, "ipm": ipm}
if set(ATTACKS) != set(get_args(AttackName)) - {"none"}:
    raise ImportError(f"ATTACKS {sorted(ATTACKS)} do not match AttackName {sorted(get_args(AttackName))}")
