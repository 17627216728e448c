"""Robust aggregation measured, not asserted: 2 of 7 workers (and 2 of 11 for Bulyan, n >= 4f+3) send their
gradient sign-flipped and scaled by 10. The mean follows them uphill; Krum, the median, the trimmed mean and
Bulyan keep learning. Sync rounds, so every window holds both attackers; real processes on loopback.

Measured (ml_ci.yaml, 100 versions, loaded 2-core machine): mean 5.51 -> 3e3-4e4 nats/byte (uphill, still
finite); krum 5.51 -> 2.2."""

import pytest
from ml_support import ml_run, number, row_of

LEARNS = 2.8  # a robust rule gets below this in 100 versions; the unigram entropy of the text is about 2.9


def attacked_run(tmp_path, log, rule, workers):
    overrides = {"workers.count": workers, "ml.staleness.protocol": "sync", "ml.aggregation.rule": rule,
                 "ml.aggregation.f": 2, "ml.attack.kind": "sign_flip", "ml.attack.workers": [0, 1],
                 "ml.attack.scale": 10.0, "ml.budget.max_versions": 100}
    with ml_run(tmp_path, log, overrides) as run:
        run.start()
        final = run.wait_end(150)
        return row_of(run, final)


@pytest.mark.slow
@pytest.mark.parametrize(("rule", "workers"), [("mean", 7), ("krum", 7), ("median", 7), ("trimmed_mean", 7),
                                               ("mean", 11), ("bulyan", 11)])
def test_sign_flip_attack(tmp_path, process_log, rule, workers):
    row = attacked_run(tmp_path, process_log, rule, workers)
    initial, final = number(row, "initial_val_loss"), number(row, "final_val_loss")
    assert row["aggregation"] == rule and int(row["num_workers"]) == workers
    assert initial == pytest.approx(5.51, abs=0.05)
    if rule == "mean":
        # pushed uphill: worse than the untrained model, or diverged (the PS then ends the run as failed)
        assert final is None or final > initial, row
        assert row["status"] in ("finished", "failed")
    else:
        assert row["status"] == "finished", row
        assert final < LEARNS, row
