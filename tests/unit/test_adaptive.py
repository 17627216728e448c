"""compression.policy adaptive: the choice table (ml/adaptive.py), its edge cases, the link meter, the config."""

from __future__ import annotations

import math

import pytest
import torch

from dist_llm_train.config import load_run_config
from dist_llm_train.ml.adaptive import MIN_TRANSFER_S, LinkMeter, choose
from dist_llm_train.ml.codecs import encode, make, nbytes
from dist_llm_train.schema import ConfigError

D = 1_000_000  # dense fp32: 4,000,000 bytes; fp16 2,000,000; int8 1,000,004; top-k 6 bytes per value kept
ML_CI = "configs/ml_ci.yaml"


def mbit_for(budget_bytes: float, compute_s: float = 1.0, comm_budget: float = 0.5) -> float:
    """The link rate at which B = comm_budget * compute_s * R / 8 is `budget_bytes`."""
    return budget_bytes * 8 / (comm_budget * compute_s) / 1e6


@pytest.mark.parametrize("link_mbit, compute_s, codec, ratio", [
    (100.0, 1.0, "none", 1.0),  # B = 6.25 MB
    (mbit_for(4_000_000.5), 1.0, "none", 1.0),  # just above dense: it fits
    (mbit_for(3_999_999.5), 1.0, "fp16", 1.0),
    (50.0, 1.0, "fp16", 1.0),  # B = 3.125 MB
    (mbit_for(2_000_000.5), 1.0, "fp16", 1.0),
    (20.0, 1.0, "int8", 1.0),  # B = 1.25 MB
    (mbit_for(1_000_004.5), 1.0, "int8", 1.0),
    (mbit_for(1_000_003.5), 1.0, "topk", 166_667 / D),  # just below int8: top-k, k = floor(B / 6), under d/6
    (8.0, 1.0, "topk", 83_333 / D),  # B = 500 KB
    (8.0, 0.1, "topk", 8_333 / D),  # a tenth of the compute time: a tenth of the budget
    (0.01, 1.0, "topk", 0.001),  # B = 625 bytes: floored at min_ratio
    (math.inf, 1.0, "none", 1.0),  # faster than anything measured
    # the start choice and the inputs that say nothing: top-k at min_ratio
    (None, 1.0, "topk", 0.001),
    (math.nan, 1.0, "topk", 0.001),
    (0.0, 1.0, "topk", 0.001),
    (-3.0, 1.0, "topk", 0.001),
    (100.0, math.nan, "topk", 0.001),
    (100.0, -1.0, "topk", 0.001),
    (100.0, 0.0, "topk", 0.001),  # B = 0: nothing fits, the floor
    (math.inf, 0.0, "topk", 0.001),  # no compute time is no budget, however fast the link
])
def test_choice_table(link_mbit, compute_s, codec, ratio):
    choice = choose(link_mbit, compute_s, D, comm_budget=0.5, min_ratio=0.001)

    assert (choice.codec, choice.ratio) == (codec, pytest.approx(ratio, rel=1e-9))
    assert choice.nbytes == make(codec, ratio=ratio).payload_bytes(D)


@pytest.mark.parametrize("link_mbit, compute_s", [(3.0, 0.2), (8.0, 1.0), (40.0, 2.0), (1000.0, 0.05)])
def test_the_choice_fits_the_budget_unless_floored(link_mbit, compute_s):
    for comm_budget in (0.1, 0.5, 2.0):
        choice = choose(link_mbit, compute_s, D, comm_budget, min_ratio=1e-4)
        seconds = choice.nbytes * 8 / (link_mbit * 1e6)
        floored = choice.codec == "topk" and choice.ratio == 1e-4
        assert floored or seconds <= comm_budget * compute_s * (1 + 1e-9), (comm_budget, choice, seconds)


@pytest.mark.parametrize("codec, ratio", [("none", 1.0), ("fp16", 1.0), ("int8", 1.0), ("topk", 0.01),
                                          ("topk", 0.3), ("topk", 1e-6)])
def test_payload_bytes_is_what_encode_sends(codec, ratio):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3))
    assert make(codec, ratio=ratio).payload_bytes(x.numel()) == nbytes(encode(x, codec, ratio))


def test_link_meter_needs_an_rtt_then_subtracts_it_and_the_time_the_ps_held_the_request():
    meter = LinkMeter()
    meter.transfer(1_000_000, 2.0)
    assert meter.mbit is None  # no RTT yet: a transfer's time cannot be split

    meter.rtt(0.1)
    meter.transfer(1_000_000, 1.6, held_s=0.5)  # 1.0 s moving 8 Mbit
    assert (meter.rtt_s, meter.mbit) == (0.1, pytest.approx(8.0))
    meter.transfer(1_000_000, 0.6)  # 0.5 s moving: 16 Mbit/s, smoothed
    assert meter.mbit == pytest.approx(0.7 * 8 + 0.3 * 16)
    meter.rtt(0.2)
    assert meter.rtt_s == pytest.approx(0.7 * 0.1 + 0.3 * 0.2)


def test_link_meter_ignores_nonsense_and_floors_a_transfer_below_its_resolution():
    meter = LinkMeter()
    for bad in (math.nan, math.inf, -1.0):
        meter.rtt(bad)
    assert meter.rtt_s is None
    meter.rtt(0.05)
    meter.transfer(1000, math.nan)
    meter.transfer(0, 1.0)
    assert meter.mbit is None
    meter.transfer(125, 0.01)  # faster than the RTT: counted as MIN_TRANSFER_S
    assert meter.mbit == pytest.approx(125 * 8 / MIN_TRANSFER_S / 1e6)


def test_adaptive_policy_config_loads_with_stated_defaults():
    compression = load_run_config(ML_CI, {"ml.compression.policy": "adaptive"}).ml.compression
    assert (compression.comm_budget, compression.min_ratio, compression.label) == (0.5, 0.001, "adaptive")
    assert load_run_config(ML_CI).ml.compression.label == "none"


@pytest.mark.parametrize("overrides, field", [
    ({"ml.compression.policy": "smart"}, "ml.compression.policy"),
    ({"ml.compression.comm_budget": 0}, "ml.compression.comm_budget"),
    ({"ml.compression.comm_budget": "half"}, "ml.compression.comm_budget"),
    ({"ml.compression.min_ratio": 0}, "ml.compression.min_ratio"),
    ({"ml.compression.min_ratio": 1.5}, "ml.compression.min_ratio"),
])
def test_bad_adaptive_fields_are_refused_naming_file_and_field(overrides, field):
    with pytest.raises(ConfigError) as refused:
        load_run_config(ML_CI, overrides)
    assert str(refused.value).startswith(f"{ML_CI}: {field}: "), str(refused.value)


def test_adaptive_policy_is_refused_under_hivemind():
    with pytest.raises(ConfigError, match="compression.policy adaptive: hivemind"):
        load_run_config(ML_CI, {"ml.compression.policy": "adaptive", "ml.trainer": "hivemind",
                                "ml.staleness.protocol": "sync"})


def test_decision_log_writes_one_row_per_push_and_appends_on_resume(tmp_path):
    from dist_llm_train import wire
    from dist_llm_train.ps.decisions import COLUMNS, FILE, DecisionLog

    x = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    log = DecisionLog(tmp_path)
    log.record(1.5, "w0", wire.Push(1, 0, encode(x, "topk", 0.05), 2.0, 0.25, 16, "topk", 0.05, 7.5, 42.0))
    log.record(2.0, "w1", wire.Push(2, 0, encode(x, "none", 1.0), 2.0, 0.5, 16))  # nothing measured yet
    log.close()
    DecisionLog(tmp_path).close()  # a resumed PS: no second header

    lines = (tmp_path / FILE).read_text().splitlines()
    assert lines == [",".join(COLUMNS), "1.5,w0,7.5,42,0.25,topk,0.05,300,topk,0.05",
                     "2,w1,,,0.5,none,1,4000,none,1"]
