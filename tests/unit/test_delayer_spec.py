"""The delayer's pure parts: spec validation, queue sizing, the release timeline."""

import json
import statistics

import pytest

from dist_llm_train.netem.delayer import Spec, SpecError, Timeline, load_spec, queue_maxlen

GOOD = {"delay_ms": 50, "jitter_ms": 5, "loss_pct": 1.5, "rate_mbit": None}


def write(tmp_path, content) -> str:
    path = tmp_path / "spec.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_load_spec(tmp_path):
    assert load_spec(write(tmp_path, GOOD)) == Spec(50.0, 5.0, 1.5, None)
    assert load_spec(write(tmp_path, GOOD | {"rate_mbit": 20})).rate_mbit == 20.0


@pytest.mark.parametrize("content, message", [
    ("{", "cannot read spec"),
    ([1, 2], "expected a JSON object"),
    (GOOD | {"delay": 5}, "delay: unknown field"),
    ({k: v for k, v in GOOD.items() if k != "jitter_ms"}, "jitter_ms: missing"),
    (GOOD | {"delay_ms": "50"}, "delay_ms: expected a finite number"),
    (GOOD | {"loss_pct": True}, "loss_pct: expected a finite number"),
    (GOOD | {"delay_ms": None}, "delay_ms: expected a finite number"),
    ('{"delay_ms": NaN, "jitter_ms": 0, "loss_pct": 0, "rate_mbit": null}', "delay_ms: expected a finite number"),
    (GOOD | {"delay_ms": -1}, "delay_ms: must be >= 0"),
    (GOOD | {"jitter_ms": -0.5}, "jitter_ms: must be >= 0"),
    (GOOD | {"loss_pct": 100.5}, "loss_pct: must be within 0-100"),
    (GOOD | {"rate_mbit": 0}, "rate_mbit: must be > 0 or null"),
])
def test_load_spec_refuses_with_file_and_field(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path)
    assert path in str(err.value)


def test_missing_spec_file_is_named(tmp_path):
    with pytest.raises(SpecError, match="nope.json"):
        load_spec(str(tmp_path / "nope.json"))


@pytest.mark.parametrize("spec, expected", [
    (Spec(50, 0, 0, None), 10000),  # 1 Gbit/s = 83333 packets/s * 60 ms * 2
    (Spec(50, 10, 0, 100), 1667),  # 100 Mbit/s = 8333 packets/s * 100 ms * 2
    (Spec(0, 0, 0, 10), 1024),  # never below the kernel's default
])
def test_queue_maxlen_follows_the_bandwidth_delay_product(spec, expected):
    assert queue_maxlen(spec) == expected


def test_constant_delay_releases_at_arrival_plus_delay():
    timeline = Timeline(Spec(20, 0, 0, None), seed=1)
    assert timeline.admit(1.0) == pytest.approx((1.02, 1.02))
    assert timeline.admit(1.005) == pytest.approx((1.025, 1.025))


def test_release_keeps_arrival_order():
    timeline = Timeline(Spec(20, 0, 0, None), seed=1)
    timeline.spec = Spec(5, 0, 0, None)  # as after SIGHUP to a shorter delay
    timeline.last_release = 1.02
    assert timeline.admit(1.001) == pytest.approx((1.006, 1.02))  # due earlier, but leaves after its predecessor


def test_jitter_is_a_normal_sample_truncated_at_zero_delay():
    timeline = Timeline(Spec(10, 5, 0, None), seed=3)
    delays = []
    for i in range(4000):
        arrival = i * 1.0  # far apart: order never binds
        due, release = timeline.admit(arrival)
        assert due == release
        delays.append((due - arrival) * 1000)
    assert min(delays) >= 0
    assert statistics.fmean(delays) == pytest.approx(10, abs=0.3)
    assert statistics.pstdev(delays) == pytest.approx(5, rel=0.05)
    heavy = Timeline(Spec(1, 10, 0, None), seed=3)
    assert sum(heavy.admit(float(i))[0] == float(i) for i in range(1000)) > 300  # truncated to 0


def test_loss_is_seeded_and_close_to_the_rate():
    def drops(seed):
        timeline = Timeline(Spec(0, 0, 10, None), seed=seed)
        return [timeline.admit(float(i)) is None for i in range(5000)]

    assert drops(7) == drops(7)
    assert drops(7) != drops(8)
    assert sum(drops(7)) / 5000 == pytest.approx(0.10, abs=0.015)


def test_changing_jitter_does_not_change_which_packets_are_lost():
    a, b = Timeline(Spec(0, 0, 10, None), 7), Timeline(Spec(0, 20, 10, None), 7)
    assert [a.admit(i) is None for i in range(500)] == [b.admit(i) is None for i in range(500)]
