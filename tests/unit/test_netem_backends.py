"""Exact argv per backend: what each LinkSpec becomes, including change and removal."""

from __future__ import annotations

import pytest

from dist_llm_train.netem.backends import BACKENDS, choose
from dist_llm_train.netem.backends.base import queue_packets_in_force, queue_seconds, tbf_args
from dist_llm_train.netem.backends.tc_netem import NetemBackend, netem_limit
from dist_llm_train.netem.backends.userspace import UserspaceBackend
from dist_llm_train.netem.preset import LinkSpec

SETUP = [
    "tc qdisc add dev eth0 root handle 1: htb default 1",
    "tc class add dev eth0 parent 1: classid 1:1 htb rate 10gbit quantum 60000",
    "tc class add dev eth0 parent 1: classid 1:2 htb rate 10gbit quantum 60000",
    "tc filter add dev eth0 parent 1: protocol arp prio 1 u32 match u32 0 0 flowid 1:2",
    "ip link add dlt-ifb0 type ifb",
    "ip link set dev dlt-ifb0 up",
    "tc qdisc add dev eth0 handle ffff: ingress",
    "tc filter add dev eth0 parent ffff: protocol ip prio 1 u32 match u32 0 0 action mirred egress redirect dev dlt-ifb0",
]
REMOVE = ["tc qdisc del dev eth0 root", "tc qdisc del dev eth0 ingress", "ip link del dlt-ifb0"]
RULE = "-t mangle {} PREROUTING -i eth0 -m comment --comment dist-llm-train -j NFQUEUE --queue-num 42"
CELLULAR = LinkSpec(delay_ms=40, jitter_ms=8, loss_pct=1, rate_mbit=10)


def lines(argvs) -> list[str]:
    return [" ".join(a) for a in argvs]


def test_tbf_sizing_by_hand():
    # 10 Mbit/s = 1.25 MB/s: burst 5 ms = 6250 B; queue 0.1 + 2 * (40 + 16) ms = 0.212 s = 265000 B.
    assert queue_seconds(CELLULAR) == pytest.approx(0.212)
    assert tbf_args(CELLULAR) == ["tbf", "rate", "10000000bit", "burst", "6250", "limit", "265000"]
    # 1 Mbit/s: 5 ms is 625 B, below two frames: burst 3028.
    assert tbf_args(LinkSpec(rate_mbit=1))[4] == "3028"


def test_queue_packets_sets_the_rate_limiters_queue():
    # 362 frames of 1514 B = 548068 B, whatever the delay; without it the BDP rule's 265000 B = 175 frames.
    china_korea = LinkSpec(delay_ms=304, loss_pct=0.25, rate_mbit=6.25, queue_packets=362)
    assert tbf_args(china_korea) == ["tbf", "rate", "6250000bit", "burst", "3907", "limit", "548068"]
    assert queue_packets_in_force(china_korea) == 362
    assert queue_packets_in_force(CELLULAR) == 175
    assert queue_packets_in_force(LinkSpec(delay_ms=5)) is None
    assert queue_packets_in_force(china_korea.model_copy(update={"down": True})) is None
    # netem holds the delay line too: 6.25 Mbit/s = 516.0 frames/s x 0.304 s = 157 in flight, + 362.
    assert netem_limit(china_korea) == 157 + 362


@pytest.mark.parametrize("name, leaf, from_unlimited", [
    ("netem", "netem delay 40ms 8ms distribution normal loss 1% rate 20000000bit limit 1000", ["change", "replace"]),
    ("userspace", "tbf rate 20000000bit burst 12500 limit 530000", ["replace", "replace"])])
def test_a_rate_step_changes_the_qdiscs_in_place(name, leaf, from_unlimited):
    # A step up (rate 10 -> 20 Mbit/s): `tc qdisc change`, so the tbf keeps its queue and the flows.
    backend = BACKENDS[name]()
    step = CELLULAR.model_copy(update={"rate_mbit": 20})
    assert lines(backend.change(step, CELLULAR)) == [
        f"tc qdisc change dev eth0 parent 1:1 {leaf}",
        "tc qdisc change dev dlt-ifb0 root tbf rate 20000000bit burst 12500 limit 530000",
    ]
    assert backend.change(CELLULAR, CELLULAR) == []  # nothing moved: nothing run
    # Another kind of qdisc (pfifo -> tbf when a cap appears, up -> down, down -> up) is replaced.
    assert [a[2] for a in backend.change(CELLULAR, CELLULAR.model_copy(update={"rate_mbit": None}))] == from_unlimited
    down = CELLULAR.model_copy(update={"down": True})
    assert [a[2] for a in backend.change(down, CELLULAR)] == ["replace", "replace"]
    assert [a[2] for a in backend.change(CELLULAR, down)] == ["replace", "replace"]


@pytest.mark.parametrize("name, egress", [("netem", ["change"]), ("userspace", ["del", "add"])])
def test_a_step_down_of_an_untraced_tbf_recreates_it_and_a_traced_one_is_changed(name, egress):
    # 10 -> 5 Mbit/s: the bucket shrinks from 6250 to 3125 B. Changed in place, a queued 64 KB aggregate
    # admitted under the old bucket would never leave; without a peak bucket the tbf is deleted and added
    # again (its queue dropped; `replace` of the same kind is a change). netem's own rate has no bucket.
    backend = BACKENDS[name]()
    step = CELLULAR.model_copy(update={"rate_mbit": 5})
    assert [a[2] for a in backend.change(step, CELLULAR)] == [*egress, "del", "add"]
    assert lines(backend.change(step, CELLULAR))[-2:] == [
        "tc qdisc del dev dlt-ifb0 root", "tc qdisc add dev dlt-ifb0 root tbf rate 5000000bit burst 3125 limit 132500"]
    traced = CELLULAR.model_copy(update={"trace": "traces/t.csv"})
    assert [a[2] for a in backend.change(traced.model_copy(update={"rate_mbit": 5}), traced)] == ["change", "change"]


def test_a_traced_links_tbf_splits_aggregates_so_a_step_down_never_stalls_it():
    # Peak bucket of two frames at 10 Gbit/s: the largest packet the tbf takes whole is 3028 B.
    traced = CELLULAR.model_copy(update={"trace": "traces/t.csv"})
    assert tbf_args(traced) == ["tbf", "rate", "10000000bit", "burst", "6250", "limit", "265000",
                                "peakrate", "10000000000bit", "mtu", "3028"]
    assert tbf_args(traced.model_copy(update={"rate_mbit": 8000}))[8] == "16000000000bit"  # always above the rate


def test_netem_apply_change_remove():
    backend = NetemBackend()
    assert lines(backend.apply(CELLULAR)) == SETUP + [
        "tc qdisc replace dev eth0 parent 1:1 netem delay 40ms 8ms distribution normal loss 1% rate 10000000bit limit 1000",
        "tc qdisc replace dev dlt-ifb0 root tbf rate 10000000bit burst 6250 limit 265000",
    ]
    assert lines(backend.change(LinkSpec(delay_ms=300))) == [
        "tc qdisc replace dev eth0 parent 1:1 netem delay 300ms limit 165126",
        "tc qdisc replace dev dlt-ifb0 root pfifo limit 1000",
    ]
    assert lines(backend.remove()) == REMOVE
    assert backend.delayer_spec(CELLULAR) is None


def test_netem_limit_covers_the_bandwidth_delay_product():
    # Unlimited, sized at 1000 Mbit/s = 82562.7 frames/s; held 0.3 s delay + 0.7 s rate queue; x2.
    assert netem_limit(LinkSpec(delay_ms=300)) == 165126
    assert netem_limit(LinkSpec(delay_ms=1, rate_mbit=1)) == 1000  # never below the kernel default


def test_userspace_apply_change_remove():
    backend = UserspaceBackend()
    assert lines(backend.apply(CELLULAR)) == SETUP + [
        "tc qdisc replace dev eth0 parent 1:1 tbf rate 10000000bit burst 6250 limit 265000",
        "tc qdisc replace dev dlt-ifb0 root tbf rate 10000000bit burst 6250 limit 265000",
        "iptables-nft " + RULE.format("-A"),
    ]
    assert lines(backend.change(LinkSpec(delay_ms=50))) == [
        "tc qdisc replace dev eth0 parent 1:1 pfifo limit 1000",
        "tc qdisc replace dev dlt-ifb0 root pfifo limit 1000",
    ]
    assert lines(backend.remove()) == ["iptables-nft " + RULE.format("-D")] + REMOVE
    assert backend.delayer_spec(CELLULAR) == {"delay_ms": 40, "jitter_ms": 8, "loss_pct": 1, "rate_mbit": 10}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_down_blackholes_both_directions(name):
    backend = BACKENDS[name]()
    assert lines(backend.change(CELLULAR.model_copy(update={"down": True}))) == [
        "tc qdisc replace dev eth0 parent 1:1 blackhole",
        "tc qdisc replace dev dlt-ifb0 root blackhole",
    ]


def test_forced_choice_and_unknown_name():
    assert choose("userspace")[0].name == "userspace"
    assert choose("netem")[0].name == "netem"
    with pytest.raises(ValueError, match="NETEM_BACKEND: unknown backend 'tc'"):
        choose("tc")


def test_auto_asks_the_probe_it_is_given_and_reads_its_answer():
    from dist_llm_train.netem.backends import probe_answer
    from dist_llm_train.netem.backends.base import LinkError

    assert choose("auto", lambda: True)[0].name == "netem"
    assert choose("auto", lambda: False)[0].name == "userspace"
    assert probe_answer(0, "", "here") is True
    assert probe_answer(2, "Error: Specified qdisc kind is unknown.", "here") is False
    with pytest.raises(LinkError, match="Operation not permitted"):
        probe_answer(1, "RTNETLINK answers: Operation not permitted", "a throwaway container")
