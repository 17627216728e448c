"""ml/train.py: flat vectors, gradients, local Adam steps, evaluation, and real learning on the
bundled corpus."""

import math

import pytest
import torch

from dist_llm_train.ml.config import ModelConfig
from dist_llm_train.ml.data import BatchSampler
from dist_llm_train.ml.model import build_model, count_parameters
from dist_llm_train.ml.train import (
    LocalSteps,
    evaluate,
    flat_parameters,
    gradient,
    load_flat,
    loss_of,
    set_threads,
)
from ml_reference import reference_run

TINY = ModelConfig(embed_dim=8, hidden_dim=16, layers=1)
TINY_TRANSFORMER = ModelConfig(arch="transformer", embed_dim=8, hidden_dim=16, layers=1, heads=2)
TEXT = b"the quick brown fox jumps over the lazy dog. " * 40


def batch(seed=0, batch_size=4, seq_len=12):
    return next(BatchSampler(TEXT, batch_size, seq_len, seed))


def test_flat_round_trip_carries_every_parameter_into_another_model():
    source, target = build_model(TINY, seed=1), build_model(TINY, seed=2)
    x, _ = batch()

    load_flat(target, flat_parameters(source))

    assert flat_parameters(target).shape == (count_parameters(source),)
    assert torch.equal(flat_parameters(target), flat_parameters(source))
    assert torch.equal(target(x), source(x))


def test_load_flat_keeps_the_parameter_tensors_so_an_optimizer_stays_attached():
    model = build_model(TINY, seed=0)
    before = [id(p) for p in model.parameters()]

    load_flat(model, torch.zeros(count_parameters(model)))

    assert [id(p) for p in model.parameters()] == before
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())


@pytest.mark.parametrize(
    "flat",
    [torch.zeros(5), torch.zeros(2, 3), torch.zeros(0)],
    ids=["too short", "not flat", "empty"],
)
def test_load_flat_refuses_a_wrong_shape(flat):
    with pytest.raises(ValueError, match=r"expected float32 \[\d+\]"):
        load_flat(build_model(TINY, seed=0), flat)


def test_load_flat_refuses_a_wrong_dtype():
    model = build_model(TINY, seed=0)
    with pytest.raises(ValueError, match="got torch.float64"):
        load_flat(model, torch.zeros(count_parameters(model), dtype=torch.float64))


def test_gradient_matches_a_finite_difference_and_leaves_the_model_unchanged():
    model = build_model(TINY, seed=0)
    x, y = batch()
    weights = flat_parameters(model)
    direction = torch.randn(weights.shape, generator=torch.Generator().manual_seed(0))
    direction /= direction.norm()

    grad, loss = gradient(model, x, y)

    assert torch.equal(flat_parameters(model), weights)
    assert all(p.grad is None for p in model.parameters())
    h = 1e-2

    def loss_at(w):
        load_flat(model, w)
        with torch.no_grad():
            return loss_of(model, x, y).item()

    slope = (loss_at(weights + h * direction) - loss_at(weights - h * direction)) / (2 * h)
    assert slope == pytest.approx(torch.dot(grad, direction).item(), rel=0.02, abs=1e-4)
    assert loss == pytest.approx(loss_at(weights), abs=1e-6)


def test_untrained_model_scores_about_ln256_nats_per_byte():
    model = build_model(TINY, seed=0)

    loss = evaluate(model, [batch(seed) for seed in range(3)])

    assert loss == pytest.approx(math.log(256), abs=0.1)


@pytest.mark.parametrize("cfg", [TINY, TINY_TRANSFORMER], ids=["lstm", "transformer"])
def test_local_steps_return_the_parameter_change_and_keep_adam_state_across_rounds(cfg):
    model = build_model(cfg, seed=0)
    local = LocalSteps(model, inner_lr=1e-2)
    batches = BatchSampler(TEXT, 4, 12, seed=0)
    start = flat_parameters(model)

    delta, first_loss = local.run(batches, steps=5)

    assert torch.allclose(flat_parameters(model), start + delta, atol=1e-7)
    load_flat(model, start)  # as when the worker pulls fresh parameters from the PS
    local.run(batches, steps=5)
    states = local.optimizer.state.values()
    assert states and all(int(state["step"]) == 10 for state in states)
    _, later_loss = local.run(batches, steps=20)
    assert later_loss < first_loss - 0.5  # 30 Adam steps on repeated text learn something


def test_set_threads_takes_a_count_or_every_core():
    previous = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_threads(None) == torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(previous)


def test_sgd_on_the_bundled_corpus_drives_validation_loss_far_below_its_start():
    # Measured (torch 2.13 host and 2.6 image): 5.514 -> 1.894 nats/byte after 300 steps;
    # seeds 1-3 reach 1.88-1.91. 2.2 leaves margin for float differences, yet fails a model that
    # learned no more than byte frequencies (3.01 on this validation text) or byte pairs (a
    # smoothed bigram table: 2.31).
    _, initial, final = reference_run(steps=300)

    assert initial == pytest.approx(math.log(256), abs=0.1)
    assert final < 2.2
