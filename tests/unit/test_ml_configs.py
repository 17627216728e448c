"""The shipped ML configs and the PS benchmark's matrix: each validates, each aggregation rule holds for its
window (the PS would refuse it otherwise), and a rule that cannot hold is refused with the fields named."""

from pathlib import Path

import pytest

from dist_llm_train.config import load_run_config
from dist_llm_train.experiments.matrix import expand, load_matrix
from dist_llm_train.ps.server import rule_window
from dist_llm_train.schema import ConfigError

REPO = Path(__file__).resolve().parents[2]
ML_CONFIGS = sorted((REPO / "configs").glob("ml_*.yaml"))


def test_the_ml_configs_are_shipped():
    assert {p.stem for p in ML_CONFIGS} >= {"ml_demo", "ml_ci", "ml_sync", "ml_topk", "ml_diloco", "ml_byzantine"}


@pytest.mark.parametrize("path", ML_CONFIGS, ids=lambda p: p.stem)
def test_every_ml_config_validates_and_its_rule_holds(path):
    config = load_run_config(path)
    n, smallest, line = rule_window(config)
    assert config.mode == "ml" and 1 <= smallest <= n and "holds" in line


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ml.aggregation.rule": "krum", "ml.aggregation.f": 1, "ml.aggregation.window": 4},
     r"krum needs n >= 2f\+3: window n=4, f=1 .*ml.aggregation.window = 4, protocol async"),
    ({"ml.staleness.protocol": "sync", "ml.aggregation.rule": "bulyan", "ml.aggregation.f": 1},
     r"bulyan needs n >= 4f\+3: window n=3, f=1 .*workers.count = 3, protocol sync"),
])
def test_a_rule_that_cannot_hold_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        rule_window(load_run_config(REPO / "configs" / "ml_ci.yaml", overrides))


def test_the_sync_round_waits_for_the_smallest_window_the_rule_holds_for():
    config = load_run_config(REPO / "configs" / "ml_byzantine.yaml")  # krum, f = 2, 7 workers
    assert rule_window(config)[:2] == (7, 7)
    median = load_run_config(REPO / "configs" / "ml_byzantine.yaml", {"ml.aggregation.rule": "median"})
    assert rule_window(median)[:2] == (7, 5)


def test_the_ps_benchmark_matrix_has_the_eight_cells_of_its_table():
    path = REPO / "experiments" / "bench_ps.yaml"
    cells = expand(load_matrix(path), str(path), REPO, REPO / "netem")
    seen = {(c.profile, c.config.ml.staleness.protocol, c.config.ml.compression.codec, c.config.ml.local.steps)
            for c in cells}
    assert seen == {(profile, protocol, codec, steps) for profile in ("lan", "high_rtt")
                    for protocol, codec, steps in (("sync", "none", 1), ("async", "none", 1), ("async", "topk", 1),
                                                   ("sync", "none", 50))}
    targets = {c.config.ml.budget.target_val_loss for c in cells}
    assert len(targets) == 1 and None not in targets


def test_check_refuses_a_rule_the_worker_count_breaks(capsys):
    from argparse import Namespace

    from dist_llm_train.check import main

    args = Namespace(config=str(REPO / "configs" / "ml_byzantine.yaml"), profile="lan", netem_dir=str(REPO / "netem"),
                     tcp_cc="host")  # the host's allowed TCP algorithms are tested apart (test_netem_tcp.py)
    assert main(Namespace(**vars(args), workers=7)) == 0
    assert main(Namespace(**vars(args), workers=5)) == 2
    assert "krum needs n >= 2f+3: window n=5, f=2" in capsys.readouterr().err
