"""ps/evaluation.py: a loss, a diverged model's non-finite loss, and an evaluation that fails are three
different results, so the PS can tell a diverged run from a broken evaluation."""

import math

import torch

from dist_llm_train.ml.config import ModelConfig
from dist_llm_train.ml.data import load_corpus, split, validation_batches
from dist_llm_train.ml.model import build_model, count_parameters
from dist_llm_train.ml.train import flat_parameters
from dist_llm_train.ps.evaluation import Evaluator


def test_results_tell_a_loss_a_diverged_model_and_a_failure_apart():
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=16, layers=1), seed=0)
    val = split(load_corpus(None, 32), 0.05, 32)[1]
    evaluator = Evaluator(model, validation_batches(val, 4, 32, 1))
    params = flat_parameters(model)
    evaluator.submit(0, params)
    evaluator.submit(1, 2e37 * torch.randn(count_parameters(model), generator=torch.Generator().manual_seed(0)))
    evaluator.submit(2, params[:-1])  # one parameter short: load_flat refuses it
    (v0, loss0, error0), (v1, loss1, error1), (v2, loss2, error2) = evaluator.results(wait=True)
    evaluator.close()

    assert (v0, v1, v2) == (0, 1, 2)
    assert math.isclose(loss0, math.log(256), rel_tol=0.05) and error0 is None
    assert not math.isfinite(loss1) and error1 is None
    assert math.isnan(loss2) and error2.startswith("ValueError: flat parameters: expected float32")
