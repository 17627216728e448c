"""The update-norm bound shared by the PS (refuses above it) and the workers (report divergence above it):
its default, the norm it compares, the worker's verdict, and real honest updates of ml_ci far below it."""

import math
from pathlib import Path

import pytest
import torch

from dist_llm_train.config import load_run_config
from dist_llm_train.ml.data import BatchSampler, load_corpus, split
from dist_llm_train.ml.divergence import RMS_BOUND, divergence, max_update_norm, update_norm
from dist_llm_train.ml.model import build_model, count_parameters
from dist_llm_train.ml.train import LocalSteps, flat_parameters, gradient, load_flat
from dist_llm_train.ps.optimizer import build_optimizer
from dist_llm_train.schema import ConfigError

ML_CI = Path(__file__).resolve().parents[2] / "configs" / "ml_ci.yaml"


def test_the_default_bound_is_ten_per_coordinate_in_rms():
    ml = load_run_config(ML_CI).ml
    assert max_update_norm(ml, 49_920) == pytest.approx(RMS_BOUND * math.sqrt(49_920)) == pytest.approx(2234.3, abs=0.1)
    assert max_update_norm(load_run_config(ML_CI, {"ml.max_update_norm": 5.0}).ml, 49_920) == 5.0


@pytest.mark.parametrize("value", [0, -1.0])
def test_the_bound_must_be_positive(value):
    with pytest.raises(ConfigError, match="max_update_norm"):
        load_run_config(ML_CI, {"ml.max_update_norm": value})


def test_update_norm_states_the_size_of_a_vector_that_overflows_float32():
    assert update_norm(torch.tensor([3.0, 4.0])) == 5.0
    poisoned = torch.full((49_920,), 3e38)  # finite, but its float32 norm overflows
    assert update_norm(poisoned) == pytest.approx(3e38 * math.sqrt(49_920), rel=1e-6)
    assert math.isnan(update_norm(torch.tensor([1.0, float("nan")])))


@pytest.mark.parametrize(
    ("loss", "update", "verdict"),
    [
        (2.0, [3.0, 4.0], None),
        (float("nan"), [3.0, 4.0], "training loss is nan"),
        (float("inf"), [3.0, 4.0], "training loss is inf"),
        (2.0, [1.0, float("nan")], "the update holds NaN or Inf"),
        (2.0, [1.0, float("-inf")], "the update holds NaN or Inf"),
        (2.0, [30.0, 40.0], "update norm 50 is above ml.max_update_norm 10"),
    ],
)
def test_divergence_names_what_went_wrong(loss, update, verdict):
    assert divergence(loss, torch.tensor(update), bound=10.0) == verdict


def test_honest_ml_ci_updates_stay_far_below_the_default_bound():
    """100 SGD steps of H = 1 gradients and 2 rounds of H = 50 Adam deltas (inner lr 1e-3) of ml_ci's model,
    serially on one shard: every norm at least 80 times below the bound (ml/divergence.py has the table)."""
    config = load_run_config(ML_CI)
    ml = config.ml
    model = build_model(ml.model, config.seed)
    bound = max_update_norm(ml, count_parameters(model))
    train, _ = split(load_corpus(ml.data.path, ml.data.seq_len), ml.data.val_fraction, ml.data.seq_len)
    batches = BatchSampler(train, ml.data.batch_size, ml.data.seq_len, seed=1)
    params, optimizer = flat_parameters(model), build_optimizer(ml, count_parameters(model))
    norms = []
    for _ in range(100):
        load_flat(model, params)
        grad, _ = gradient(model, *next(batches))
        norms.append(update_norm(grad))
        optimizer.step(params, grad)
    local = LocalSteps(model, inner_lr=1e-3)
    for _ in range(2):
        start = flat_parameters(model)
        delta, _ = local.run(batches, 50)
        norms.append(update_norm(delta))
        assert torch.equal(delta, flat_parameters(model) - start)

    assert max(norms) < bound / 80, (max(norms), bound)
    assert min(norms) > 0
