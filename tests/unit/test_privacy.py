"""Clipping and Gaussian noise of the aggregate."""

import pytest
import torch

from dist_llm_train.ps.privacy import add_noise, clip_updates, noise_std


def test_clip_scales_long_rows_and_leaves_short_ones_exactly():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clipped, norms = clip_updates(updates, 1.0)
    assert torch.allclose(clipped[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(clipped[1:], updates[1:])
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 0.0]))


def test_clipped_rows_have_the_clip_norm():
    updates = 10 * torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    clipped, _ = clip_updates(updates, 2.5)
    assert torch.allclose(torch.linalg.vector_norm(clipped, dim=1), torch.full((6,), 2.5))


def test_noise_std_convention():
    # z * C / n: z = 1, C = 2, a window of 4 updates
    assert noise_std(1.0, 2.0, 4) == 0.5


def test_noise_has_the_stated_std_and_is_reproducible():
    aggregate = torch.full((200_000,), 3.0)
    noisy = add_noise(aggregate, 0.5, torch.Generator().manual_seed(7))
    assert (noisy - 3.0).std().item() == pytest.approx(0.5, rel=0.01)
    assert abs((noisy - 3.0).mean().item()) < 0.005
    assert torch.equal(noisy, add_noise(aggregate, 0.5, torch.Generator().manual_seed(7)))
    assert not torch.equal(noisy, add_noise(aggregate, 0.5, torch.Generator().manual_seed(8)))


def test_zero_noise_leaves_the_aggregate():
    aggregate = torch.tensor([1.0, -2.0])
    assert torch.equal(add_noise(aggregate, 0.0, torch.Generator().manual_seed(0)), aggregate)
