"""ps/evaluation.py: a loss, a diverged model's non-finite loss, and an evaluation that fails are three
different results, so the PS can tell a diverged run from a broken evaluation."""

import math

import pytest
import torch

from dist_llm_train.ml.config import ModelConfig
from dist_llm_train.ml.data import load_corpus, split, validation_batches
from dist_llm_train.ml.model import build_model, count_parameters
from dist_llm_train.ml.train import evaluate, flat_parameters
from dist_llm_train.ps.evaluation import Evaluator


def test_results_tell_a_loss_a_diverged_model_and_a_failure_apart():
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=16, layers=1), seed=0)
    val = split(load_corpus(None, 32), 0.05, 32)[1]
    evaluator = Evaluator(model, {"slice": validation_batches(val, 4, 32, 1)})
    params = flat_parameters(model)
    evaluator.submit(0, params)
    evaluator.submit(1, 2e37 * torch.randn(count_parameters(model), generator=torch.Generator().manual_seed(0)))
    evaluator.submit(2, params[:-1])  # one parameter short: load_flat refuses it
    (v0, s0, loss0, error0), (v1, _, loss1, error1), (v2, _, loss2, error2) = evaluator.results(wait=True)
    evaluator.close()

    assert (v0, v1, v2) == (0, 1, 2) and s0 == "slice"
    assert math.isclose(loss0, math.log(256), rel_tol=0.05) and error0 is None
    assert not math.isfinite(loss1) and error1 is None
    assert math.isnan(loss2) and error2.startswith("ValueError: flat parameters: expected float32")


def test_the_slice_and_the_final_set_are_evaluated_on_their_own_batches():
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=16, layers=1), seed=0)
    val = split(load_corpus(None, 32), 0.05, 32)[1]
    slice_, final = validation_batches(val, 4, 32, 1), validation_batches(val, 4, 32, 3)
    evaluator = Evaluator(model, {"slice": slice_, "final": final})
    params = flat_parameters(model)
    evaluator.submit(5, params)
    evaluator.submit(5, params, on="final")
    (v0, s0, loss0, _), (v1, s1, loss1, _) = evaluator.results(wait=True)
    evaluator.close()

    assert (v0, s0, v1, s1) == (5, "slice", 5, "final")
    assert loss0 == evaluate(model, slice_) and loss1 == evaluate(model, final) and loss0 != loss1


def test_an_unknown_set_is_refused():
    model = build_model(ModelConfig(embed_dim=8, hidden_dim=16, layers=1), seed=0)
    evaluator = Evaluator(model, {"slice": []})
    try:
        with pytest.raises(KeyError, match="no validation set 'full'"):
            evaluator.submit(0, flat_parameters(model), on="full")
    finally:
        evaluator.close()
