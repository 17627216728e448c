"""ml/model.py: shapes, the default parameter count, determinism per seed, causality."""

import pytest
import torch

from dist_llm_train.ml.config import ModelConfig
from dist_llm_train.ml.model import build_model, count_parameters, sinusoidal_positions
from dist_llm_train.ml.train import flat_parameters

TINY = {
    "lstm": ModelConfig(embed_dim=8, hidden_dim=16, layers=2),
    "transformer": ModelConfig(arch="transformer", embed_dim=8, hidden_dim=16, layers=2, heads=2),
}


@pytest.mark.parametrize("arch", TINY)
def test_logits_have_one_row_per_byte_and_position(arch):
    model = build_model(TINY[arch], seed=0)
    x = torch.randint(0, 256, (3, 11))

    logits = model(x)

    assert logits.shape == (3, 11, 256)
    assert logits.dtype == torch.float32


def test_default_lstm_has_the_documented_938240_parameters():
    # embedding 256*64 + layer 1 4*256*(64+256)+2*4*256 + layer 2 4*256*512+2*4*256 + head 256*256+256
    expected = 256 * 64 + (4 * 256 * 320 + 2048) + (4 * 256 * 512 + 2048) + (256 * 256 + 256)

    assert count_parameters(build_model(ModelConfig(), seed=0)) == expected == 938_240


@pytest.mark.parametrize("arch", TINY)
def test_same_seed_gives_identical_parameters_and_another_seed_does_not(arch):
    a = flat_parameters(build_model(TINY[arch], seed=7))
    b = flat_parameters(build_model(TINY[arch], seed=7))
    c = flat_parameters(build_model(TINY[arch], seed=8))

    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)

    build_model(TINY["lstm"], seed=5)

    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("arch", TINY)
def test_a_position_sees_no_later_byte(arch):
    model = build_model(TINY[arch], seed=0).eval()
    x = torch.randint(0, 256, (1, 12))
    changed = x.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256

    with torch.no_grad():
        before, after = model(x), model(changed)

    assert torch.allclose(before[0, :8], after[0, :8], atol=1e-6)
    assert not torch.allclose(before[0, 8:], after[0, 8:], atol=1e-6)


def test_sinusoidal_positions_start_at_sin0_cos0_and_keep_an_odd_width():
    code = sinusoidal_positions(5, 7)

    assert code.shape == (5, 7)
    assert torch.equal(code[0, :4], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.allclose(code[1, :2], torch.tensor([torch.sin(torch.tensor(1.0)), torch.cos(torch.tensor(1.0))]))
