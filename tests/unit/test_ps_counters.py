"""ps/counters.py: the PS's counters survive a checkpoint's JSON meta, and an older checkpoint still reads."""

import json
from collections import Counter

import pytest

from dist_llm_train.ps.counters import Counters


def test_counters_round_trip_through_the_checkpoint_meta_with_the_runs_byte_totals():
    counters = Counters(7, 2, 9, Counter({0: 5, 3: 4}), Counter({"bad_array": 1}), Counter({"stale": 2}), 10, 20, 4096)
    meta = json.loads(json.dumps(counters.to_meta(bytes_up=1000, bytes_down=2000)))
    assert meta["staleness"] == {"0": 5, "3": 4} and (meta["bytes_up"], meta["bytes_down"]) == (1000, 2000)
    assert Counters.from_meta(meta) == Counters(7, 2, 9, Counter({0: 5, 3: 4}), Counter({"bad_array": 1}),
                                                Counter({"stale": 2}), 1000, 2000, 4096)


def test_an_older_checkpoint_without_refusals_or_tokens_reads_as_none_of_them():
    old = {"accepted": 1, "rejected": 0, "staleness_sum": 0, "staleness": {"0": 1}, "errors": {}, "bytes_up": 5,
           "bytes_down": 6}
    assert Counters.from_meta(old) == Counters(1, 0, 0, Counter({0: 1}), Counter(), Counter(), 5, 6, 0)


@pytest.mark.parametrize("damage", [{"staleness": {"x": 1}}, {"staleness": None}, {"errors": 3}])
def test_a_damaged_entry_raises_what_resume_catches(damage):
    meta = Counters().to_meta(0, 0) | damage
    with pytest.raises((KeyError, ValueError, TypeError, AttributeError)):
        Counters.from_meta(meta)
