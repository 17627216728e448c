"""The userspace backend on real network namespaces: a LinkSpec applied through the sidecar's
own code (NamespaceLink: tbf + ifb + NFQUEUE rule + delayer) measurably delays, drops and caps
traffic; a down link passes nothing; a dead delayer black-holes the link; removal leaves nothing.

Needs root or NET_ADMIN + NET_RAW + SYS_ADMIN (the test container of `make test` has them).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from dist_llm_train.netem.backends import choose
from dist_llm_train.netem.backends.base import IFB
from dist_llm_train.netem.preset import LinkSpec
from dist_llm_train.netem.probe import Endpoint, Server, run_client, expected, judge, measure_pair
from dist_llm_train.netem.nslink import NamespaceLink
from dist_llm_train.netem.testbed import ADDRESSES, DEVICES, VethPair


@pytest.fixture
def pair():
    """Two namespaces joined by a veth pair whose ends are both named eth0, as in a container."""
    with VethPair() as p:
        for side in ("a", "b"):
            p.run(side, "ip", "link", "set", DEVICES[side], "down")
            p.run(side, "ip", "link", "set", DEVICES[side], "name", "eth0")
            p.run(side, "ip", "link", "set", "eth0", "up")
        yield p


def netns(pair, side: str) -> str:
    return f"/proc/{pair.holders[side].pid}/ns/net"


def udp_probe(pair, count: int, interval_s: float) -> dict:
    """RTT summary and loss of `count` UDP echoes a -> b (server in b, client in a)."""
    server = pair.python("b", "dist_llm_train.netem.traffic", "udp-echo", "--port", "7101",
                         stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    client = pair.python("a", "dist_llm_train.netem.traffic", "udp-probe", "--host", ADDRESSES["b"], "--port", "7101",
                         "--count", str(count), "--interval", str(interval_s), "--size", "16",
                         stdout=subprocess.PIPE, text=True)
    out, _ = client.communicate(timeout=60)
    server.kill()
    server.wait()
    server.stdout.close()
    return json.loads(out)


def leftovers(pair, side: str) -> str:
    """What of ours remains in a namespace: qdiscs other than the defaults, the ifb, the rule."""
    qdiscs = pair.run(side, "tc", "qdisc", "show", "dev", "eth0")
    links = pair.run(side, "ip", "-o", "link", "show")
    rules = pair.run(side, "iptables-nft", "-t", "mangle", "-S", "PREROUTING")
    found = [line for line in qdiscs.splitlines() if "noqueue" not in line]
    found += [line for line in links.splitlines() if IFB in line]
    found += [line for line in rules.splitlines() if "NFQUEUE" in line]
    return "\n".join(found)


def test_delay_loss_rate_take_effect_and_removal_leaves_nothing(pair, tmp_path):
    # Prepare: a's link delays 20 ms, drops 10 % of what a receives, caps both directions at 8 Mbit/s.
    backend, _ = choose("userspace")
    link = NamespaceLink(backend, netns(pair, "a"), "a", seed=3, workdir=tmp_path)
    baseline = udp_probe(pair, 200, 0.002)
    # Execute
    link.apply(LinkSpec(delay_ms=20, loss_pct=10, rate_mbit=8))
    impaired = udp_probe(pair, 1000, 0.002)
    a = Endpoint("a", netns(pair, "a"), ADDRESSES["a"], link.link)
    b = Endpoint("b", netns(pair, "b"), ADDRESSES["b"], LinkSpec())
    sink_b, sink_a = Server(b), Server(a)
    try:
        up = run_client(a, "tcp", "--host", b.address, "--port", str(sink_b.tcp_port), "--seconds", "2", "--warmup", "1",
                     timeout_s=30)["mbit"]
        down = run_client(b, "tcp", "--host", a.address, "--port", str(sink_a.tcp_port), "--seconds", "2", "--warmup", "1",
                       timeout_s=30)["mbit"]
    finally:
        sink_b.close()
        sink_a.close()
    stats = link.delayer_stats()
    failures = link.remove()
    # Assert: the delay is added once per round trip, the loss is near 10 %, the cap holds both
    # ways (TCP through 10 % loss cannot fill it, but must not exceed it), nothing is left.
    assert 19.0 <= impaired["p50_ms"] - baseline["p50_ms"] <= 23.0, (baseline, impaired)
    assert 6.0 <= impaired["loss_pct"] <= 14.0, impaired
    assert 0.5 < up <= 8.4 and 0.5 < down <= 8.4, (up, down)
    assert stats["packets_seen"] > 1000 and stats["dropped_loss"] > 50, stats
    assert failures == []
    assert leftovers(pair, "a") == ""
    assert link.delayer is None


def test_rate_cap_without_loss_is_met_both_ways(pair, tmp_path):
    # A loss-free capped link: one TCP flow fills it to 85-105 % in each direction.
    backend, _ = choose("userspace")
    link = NamespaceLink(backend, netns(pair, "a"), "a", seed=1, workdir=tmp_path)
    link.apply(LinkSpec(delay_ms=5, rate_mbit=10))
    try:
        measured = measure_pair(Endpoint("a", netns(pair, "a"), ADDRESSES["a"], link.link),
                                Endpoint("b", netns(pair, "b"), ADDRESSES["b"], LinkSpec()))
    finally:
        assert link.remove() == []
    exp = expected(LinkSpec(delay_ms=5, rate_mbit=10), LinkSpec())
    assert exp == {"rtt_ms": 5.0, "rtt_stdev_ms": 0.0, "loss_pct": 0.0, "mbit": 10.0,
                   "mathis_up_mbit": None, "mathis_down_mbit": None}  # no loss: no Mathis bound
    verdict = judge(measured, exp)
    assert verdict["mbit"] is True, measured
    # The median, within the verdict's tolerance (max(10 %, 2 ms)): quiet, the mean is 5.2 ms with a
    # 0.05 ms stdev, but one Python stall of a few 100 ms among 500 echoes on a loaded CI machine moves
    # the mean by 1 ms (a CI run saw it leave the tolerance). `make verify` judges the mean, on a quiet host.
    assert abs(measured["rtt_p50_ms"] - exp["rtt_ms"]) <= 2.0, measured
    assert measured["rtt_samples"] == 500 and measured["loss_samples"] == 2500
    assert leftovers(pair, "a") == ""


def test_down_passes_nothing_either_way_and_recovers(pair, tmp_path):
    backend, _ = choose("userspace")
    link = NamespaceLink(backend, netns(pair, "a"), "a", seed=1, workdir=tmp_path)
    link.apply(LinkSpec(delay_ms=2))
    try:
        link.change(LinkSpec(delay_ms=2, down=True))
        during = udp_probe(pair, 100, 0.002)
        # b -> a must be cut too: b probes an echo server in a.
        link.change(LinkSpec(delay_ms=2))
        after = udp_probe(pair, 100, 0.002)
    finally:
        assert link.remove() == []
    assert during["loss_pct"] == 100.0
    assert after["loss_pct"] == 0.0 and 1.5 <= after["p50_ms"] <= 6.0, after


def test_egress_is_cut_when_down(pair, tmp_path):
    # a down link must also stop what a sends (b receives none of it), not only what a receives.
    backend, _ = choose("userspace")
    link = NamespaceLink(backend, netns(pair, "a"), "a", seed=1, workdir=tmp_path)
    link.apply(LinkSpec(delay_ms=1, down=True))
    count = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 7102)); "
             "s.settimeout(1.5); print('ready', flush=True); n = 0\n"
             "try:\n    while True: s.recv(100); n += 1\nexcept OSError: print(n)")
    send = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"[s.sendto(b'x', ('{ADDRESSES['b']}', 7102)) for _ in range(50)]")
    try:
        receiver = pair.popen("b", "python3", "-c", count, stdout=subprocess.PIPE, text=True)
        assert receiver.stdout.readline().strip() == "ready"
        pair.run("a", "python3", "-c", send)
        received_down = int(receiver.communicate(timeout=10)[0])
        link.change(LinkSpec(delay_ms=1))
        receiver = pair.popen("b", "python3", "-c", count, stdout=subprocess.PIPE, text=True)
        assert receiver.stdout.readline().strip() == "ready"
        pair.run("a", "python3", "-c", send)
        received_up = int(receiver.communicate(timeout=10)[0])
    finally:
        assert link.remove() == []
    assert (received_down, received_up) == (0, 50)


def test_dead_delayer_black_holes_the_link_and_is_reported(pair, tmp_path):
    backend, _ = choose("userspace")
    link = NamespaceLink(backend, netns(pair, "a"), "a", seed=1, workdir=tmp_path)
    link.apply(LinkSpec(delay_ms=5))
    try:
        assert link.delayer_problem() is None
        link.delayer.kill()
        link.delayer.wait()
        problem = link.delayer_problem()
        dead = udp_probe(pair, 100, 0.002)
        link.restart_delayer()
        alive = udp_probe(pair, 100, 0.002)
    finally:
        assert link.remove() == []
    assert problem is not None and "exited with code -9" in problem
    assert dead["loss_pct"] == 100.0  # black-holed, never silently undelayed
    assert alive["loss_pct"] == 0.0 and alive["p50_ms"] >= 4.5
