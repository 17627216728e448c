"""Server-side optimizer steps on numbers small enough to follow by hand, and their checkpoint state."""

import pytest
import torch

from dist_llm_train.ml.config import MLConfig
from dist_llm_train.ps.optimizer import Adam, OuterNesterov, Sgd, build_optimizer


def test_sgd_momentum_two_steps():
    sgd = Sgd(2, lr=0.5, momentum=0.9)
    params = torch.tensor([1.0, 2.0])
    sgd.step(params, torch.tensor([1.0, -1.0]))  # buf = [1, -1]; p -= 0.5 buf
    assert torch.allclose(params, torch.tensor([0.5, 2.5]))
    sgd.step(params, torch.tensor([1.0, 1.0]))  # buf = 0.9 [1, -1] + [1, 1] = [1.9, 0.1]
    assert torch.allclose(params, torch.tensor([0.5 - 0.95, 2.5 - 0.05]))


def test_lr_scale_scales_the_step():
    sgd = Sgd(1, lr=0.5, momentum=0.0)
    params = torch.tensor([1.0])
    sgd.step(params, torch.tensor([1.0]), lr_scale=0.25)  # staleness 4
    assert params.item() == pytest.approx(1.0 - 0.125)


def test_adam_first_steps_move_by_lr_times_the_sign():
    adam = Adam(2, lr=0.1, momentum=0.9)
    params = torch.tensor([1.0, 1.0])
    g = torch.tensor([2.0, -0.5])
    adam.step(params, g)  # m_hat = g, v_hat = g^2: the step is lr * g / |g|
    assert torch.allclose(params, torch.tensor([0.9, 1.1]))
    adam.step(params, torch.zeros(2))  # m = 0.09 g, v = 0.000999 g^2; corrected by 1 - 0.9^2, 1 - 0.999^2
    m_hat = 0.09 / 0.19
    v_hat = 0.000999 / (1 - 0.999**2)
    assert torch.allclose(params, torch.tensor([0.9 - 0.1 * m_hat / v_hat**0.5, 1.1 + 0.1 * m_hat / v_hat**0.5]))


def test_outer_nesterov_moves_along_the_delta():
    # Workers moved the parameter from 1.0 up by delta = +0.1. Outer gradient g = -0.1.
    outer = OuterNesterov(1)  # lr 0.7, momentum 0.9
    params = torch.tensor([1.0])
    outer.step(params, torch.tensor([0.1]))  # buf = -0.1; p -= 0.7 (-0.1 + 0.9 * -0.1) = p + 0.133
    assert params.item() == pytest.approx(1.133)
    outer.step(params, torch.tensor([0.1]))  # buf = -0.19; p -= 0.7 (-0.1 - 0.171) = p + 0.1897
    assert params.item() == pytest.approx(1.3227)


@pytest.mark.parametrize("make", [lambda: Sgd(3, 0.1, 0.9), lambda: Adam(3, 0.01, 0.9), lambda: OuterNesterov(3)])
def test_state_round_trip_continues_identically(make):
    generator = torch.Generator().manual_seed(0)
    first, params = make(), torch.zeros(3)
    for _ in range(3):
        first.step(params, torch.randn(3, generator=generator))
    second, copy = make(), params.clone()
    second.load_state(first.state())
    update = torch.randn(3, generator=generator)
    first.step(params, update)
    second.step(copy, update)
    assert torch.equal(params, copy)
    assert all(isinstance(t, torch.Tensor) for t in first.state().values())


def test_state_is_a_copy():
    sgd = Sgd(2, 0.1, 0.9)
    state = sgd.state()
    sgd.step(torch.zeros(2), torch.ones(2))
    assert torch.equal(state["momentum_buffer"], torch.zeros(2))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({}, "has tensors \\[\\], expected \\['exp_avg', 'exp_avg_sq', 'step'\\]"),
        ({"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3), "step": torch.zeros(1)}, "step: torch.float32"),
        ({"exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(3), "step": torch.zeros(1, dtype=torch.int64)}, "exp_avg: torch.float32 \\[4\\]"),
    ],
)
def test_load_state_refuses_a_mismatch_and_keeps_its_own(state, message):
    adam = Adam(3, 0.01, 0.9)
    adam.step(torch.zeros(3), torch.ones(3))
    before = adam.state()
    with pytest.raises(ValueError, match=message):
        adam.load_state(state)
    assert all(torch.equal(before[name], tensor) for name, tensor in adam.state().items())


def test_step_refuses_an_update_of_another_shape():
    with pytest.raises(ValueError, match="update has shape \\[2\\], parameters \\[3\\]"):
        Sgd(3, 0.1, 0.9).step(torch.zeros(3), torch.zeros(2))


def test_build_optimizer_follows_the_config():
    assert isinstance(build_optimizer(MLConfig(), 4), Sgd)
    adam = build_optimizer(MLConfig.model_validate({"optimizer": {"name": "adam", "lr": 0.01}}), 4)
    assert isinstance(adam, Adam) and adam.lr == 0.01
    outer = build_optimizer(MLConfig.model_validate({"local": {"steps": 50}}), 4)
    assert isinstance(outer, OuterNesterov) and (outer.sgd.lr, outer.sgd.momentum, outer.sgd.nesterov) == (0.7, 0.9, True)
