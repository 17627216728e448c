"""Byzantine updates: each attack on hand-checkable inputs, and ALIE doing what it is for."""

from typing import get_args

import pytest
import torch

from dist_llm_train.ml.config import AttackName
from dist_llm_train.ps.aggregation import aggregate
from dist_llm_train.worker.attacks import ATTACKS, alie_z_max

UPDATE = torch.tensor([1.0, -2.0])
NONE = torch.zeros(0, 2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_configured_attack_is_registered():
    assert set(ATTACKS) == set(get_args(AttackName)) - {"none"}


def test_sign_flip_and_scaled():
    assert torch.equal(ATTACKS["sign_flip"](UPDATE, NONE, 10.0, gen()), torch.tensor([-10.0, 20.0]))
    assert torch.equal(ATTACKS["scaled"](UPDATE, NONE, 10.0, gen()), torch.tensor([10.0, -20.0]))


def test_gaussian_noise_scales_with_the_update_rms():
    update = torch.full((100_000,), -2.0)  # rms 2
    sent = ATTACKS["gaussian"](update, NONE, 3.0, gen())
    assert sent.std().item() == pytest.approx(6.0, rel=0.02) and abs(sent.mean().item()) < 0.05
    assert torch.equal(sent, ATTACKS["gaussian"](update, NONE, 3.0, gen()))


def test_alie_is_mean_minus_z_std():
    samples = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])  # mean [2, 1], std (n-1) [2, 0]
    assert torch.equal(ATTACKS["alie"](UPDATE, samples, 0.5, gen()), torch.tensor([1.0, 1.0]))


def test_alie_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 honest samples"):
        ATTACKS["alie"](UPDATE, UPDATE.unsqueeze(0), 1.0, gen())


def test_ipm_is_minus_epsilon_times_the_mean():
    samples = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(ATTACKS["ipm"](UPDATE, samples, 0.5, gen()), torch.tensor([-1.0, -1.5]))


@pytest.mark.parametrize(("n", "f", "z"), [(7, 2, 0.5659), (11, 2, 0.3488), (50, 12, 0.5828)])
def test_alie_z_max(n, f, z):
    # s = floor(n/2 + 1) - f; z = Phi^-1((n - s) / n): n=7: s=2, Phi^-1(5/7); n=11: s=4, Phi^-1(7/11)
    assert alie_z_max(n, f) == pytest.approx(z, abs=1e-4)


def test_alie_z_max_refuses_an_impossible_majority():
    with pytest.raises(ValueError, match="n=3, f=2"):
        alie_z_max(3, 2)


def test_alie_slips_past_krum_where_sign_flip_does_not():
    # 5 honest updates around mu; 2 attackers, each estimating mu and sigma from 5 gradients of its own.
    g = gen(3)
    mu = torch.randn(2000, generator=g)
    honest = mu + torch.randn(5, 2000, generator=g)
    z = alie_z_max(7, 2)
    sneaky = torch.stack([ATTACKS["alie"](honest[0], mu + torch.randn(5, 2000, generator=g), z, g) for _ in range(2)])
    flipped = torch.stack([ATTACKS["sign_flip"](honest[i], NONE, 10.0, g) for i in range(2)])
    assert set(aggregate("krum", torch.cat([honest, sneaky]), 2).selected) <= {5, 6}
    assert set(aggregate("krum", torch.cat([honest, flipped]), 2).selected) <= {0, 1, 2, 3, 4}
