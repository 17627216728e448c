"""ps/combine.py: a window of updates -> the step's update (clip, staleness scale, rule, noise), by hand."""

import pytest
import torch

from dist_llm_train.ml.config import MLConfig
from dist_llm_train.ps.combine import combine


def ml(**sections) -> MLConfig:
    return MLConfig.model_validate(sections)


def test_one_row_with_nothing_to_do_is_returned_as_it_is():
    update = torch.tensor([1.0, 2.0])
    value = combine([update], [3], ml(), torch.Generator())
    assert torch.equal(value, update) and value.data_ptr() == update.data_ptr()  # no copy


def test_rows_are_clipped_before_the_rule():
    # [3, 4] (norm 5) clipped to norm 1 -> [0.6, 0.8]; [0, 0.5] is within it; the mean: [0.3, 0.65]
    value = combine([torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.5])], [0, 0],
                    ml(privacy={"clip_norm": 1.0}, aggregation={"window": 2}), torch.Generator())
    assert torch.allclose(value, torch.tensor([0.3, 0.65]))


def test_staleness_scales_each_row_when_asked():
    rows, staleness = [torch.tensor([2.0]), torch.tensor([4.0])], [0, 2]  # scales 1 and 1/2: mean of 2 and 2
    scaled = ml(staleness={"scale_lr": True})
    assert torch.equal(combine(rows, staleness, scaled, torch.Generator()), torch.tensor([2.0]))
    assert torch.equal(combine(rows, staleness, ml(), torch.Generator()), torch.tensor([3.0]))
    assert torch.equal(combine([torch.tensor([4.0])], [4], scaled, torch.Generator()), torch.tensor([1.0]))


def test_the_configured_rule_aggregates_the_window():
    rows = [torch.tensor([1.0]), torch.tensor([100.0]), torch.tensor([2.0])]
    value = combine(rows, [0, 0, 0], ml(aggregation={"rule": "median", "f": 1, "window": 3}), torch.Generator())
    assert torch.equal(value, torch.tensor([2.0]))


def test_a_window_below_the_rules_condition_is_refused():
    with pytest.raises(ValueError, match="krum needs n >= 2f\\+3"):
        combine([torch.zeros(2)] * 4, [0] * 4, ml(aggregation={"rule": "krum", "f": 1, "window": 5}), torch.Generator())


def test_noise_has_the_configured_std_and_comes_from_the_callers_generator():
    # std = noise_multiplier * clip_norm / n = 2 * 1 / 2 = 1, on the mean of two zero rows
    config = ml(privacy={"clip_norm": 1.0, "noise_multiplier": 2.0}, aggregation={"window": 2})
    zeros = [torch.zeros(200_000)] * 2
    first = combine(zeros, [0, 0], config, torch.Generator().manual_seed(5))
    again = combine(zeros, [0, 0], config, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    assert first.std().item() == pytest.approx(1.0, rel=0.01) and abs(first.mean().item()) < 0.01
