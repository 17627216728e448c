"""The userspace delayer on a real link: two network namespaces joined by a veth pair, the
delayer on the receiver's ingress (see `testbed.DelayedLink`). Needs CAP_NET_ADMIN and
CAP_SYS_ADMIN: root on the host, or the test container of `make test`.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time

import pytest

from dist_llm_train.netem.testbed import SERVICES, DelayedLink, VethPair
from dist_llm_train.netem.traffic import rtt_summary

QUEUE = 7


def _namespaces_available() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(not _namespaces_available(),
                                reason="cannot create network namespaces (needs CAP_SYS_ADMIN and CAP_NET_ADMIN)")


@pytest.fixture
def link(tmp_path):
    with VethPair() as pair:  # closing kills the delayer, the servers and the namespaces
        yield DelayedLink(pair, tmp_path, QUEUE)


def within(measured, expected):
    """The fidelity tolerance of the issue: max(10 %, 2 ms)."""
    return abs(measured - expected) <= max(0.1 * expected, 2.0)


# Robust statistics: on a loaded 2-core machine (load 7-11 while these were written) the delayer,
# the probe and the echo server are sometimes descheduled for tens of milliseconds, and a few
# such stalls move the mean of 300 probes by 5 ms (seen) or inflate a stdev; the median and the
# interquartile range see the delayer's distribution through that. The tolerance,
# max(10 %, 2 ms), is applied to them.
def median(rtts):
    return statistics.median(r for r in rtts if r is not None)


def sigma(rtts):
    """The stdev of a normal distribution with the same interquartile range."""
    q1, _, q3 = statistics.quantiles([r for r in rtts if r is not None], n=4)
    return (q3 - q1) / 1.349


def test_delay_raises_rtt_by_the_configured_amount(link):
    base = median(link.probe(200, 0.002))
    link.start_delayer(delay_ms=50)
    delayed = link.probe(300, 0.005)
    assert None not in delayed
    assert within(median(delayed) - base, 50), (base, rtt_summary(delayed))
    stats = link.wait_stats(lambda s: s["released"] >= 300)
    assert stats["packets_seen"] == 300 and stats["dropped_loss"] == 0 and stats["gso"] is True
    assert stats["late_ms"]["p50"] < 1.0, stats  # the release loop is on time, typically 0.1 ms


def test_jitter_has_the_configured_stdev(link):
    base = median(link.probe(200, 0.002))
    link.start_delayer(delay_ms=50, jitter_ms=5)
    rtts = link.probe(250, 0.016)
    # Probes 16 ms apart almost never wait for a predecessor (P ~ 0.1 %), so the order the
    # delayer keeps does not skew them; 250 draws leave the mean within ~0.3 ms of 50.
    assert abs(sigma(rtts) - 5) <= 0.3 * 5, (sigma(rtts), rtt_summary(rtts), link.stats())
    assert within(median(rtts) - base, 50), (base, rtt_summary(rtts), link.stats())


def test_loss_is_per_packet_and_matches_the_rate(link):
    link.start_delayer(delay_ms=1, loss_pct=5, seed=11)
    rtts = link.probe(2000, 0.001)
    lost = sum(r is None for r in rtts)
    assert abs(100 * lost / len(rtts) - 5) <= 1
    stats = link.wait_stats(lambda s: s["packets_seen"] >= 2000)
    assert stats["gso"] is False  # segments, not 64 KB aggregates, meet the loss draw
    assert stats["dropped_loss"] == lost  # every lost probe was dropped by the delayer, no other drop
    assert stats["overflow_drops"] == 0 and stats["socket_drops"] == 0 and stats["enobufs"] == 0


def test_tcp_throughput_does_not_collapse(link):
    # Queued in the sender's OUTPUT chain a stream collapses to 0.5-2.5 Mbit/s at 50 ms; on the
    # receiver's ingress it carries hundreds of Mbit/s. 50 Mbit/s leaves room for a loaded machine.
    link.start_delayer(delay_ms=20)
    mbit = link.tcp_mbit(link.tcp_send(seconds=2, warmup_s=0.5))
    assert mbit >= 50, mbit
    stats = link.wait_stats(lambda s: s["queued"] == 0)
    assert stats["overflow_drops"] == 0 and stats["socket_drops"] == 0


def test_sighup_changes_the_delay_without_losing_queued_packets(link):
    delayer = link.start_delayer(delay_ms=40)
    probes = link.probe(600, 0.005, background=True)
    time.sleep(1.5)
    link.write_spec(delay_ms=80)
    delayer.send_signal(signal.SIGHUP)
    link.wait_stats(lambda s: s["spec"]["delay_ms"] == 80)
    rtts = link.collect(probes)
    assert None not in rtts  # packets queued at the switch were kept
    assert within(median(rtts[:200]), 40)
    assert within(median(rtts[-200:]), 80)


def test_sighup_to_loss_turns_gso_off_and_drops(link):
    delayer = link.start_delayer(delay_ms=2)
    assert None not in link.probe(100, 0.002)
    link.write_spec(delay_ms=2, loss_pct=20)
    delayer.send_signal(signal.SIGHUP)
    stats = link.wait_stats(lambda s: s["spec"]["loss_pct"] == 20)
    assert stats["gso"] is False  # the queue was reconfigured in place
    rtts = link.probe(500, 0.002)
    assert 10 <= 100 * rtts.count(None) / len(rtts) <= 30
    assert link.wait_stats(lambda s: s["packets_seen"] >= 600)["dropped_loss"] == rtts.count(None)


def test_bad_spec_on_sighup_keeps_the_old_spec(link):
    delayer = link.start_delayer(delay_ms=10)
    link.spec_file.write_text('{"delay_ms": -5, "jitter_ms": 0, "loss_pct": 0, "rate_mbit": null}')
    delayer.send_signal(signal.SIGHUP)
    stats = link.wait_stats(lambda s: s["spec_error"] is not None)
    assert "delay_ms: must be >= 0" in stats["spec_error"] and stats["spec"]["delay_ms"] == 10
    assert delayer.poll() is None


def test_killed_delayer_black_holes_the_link(link):
    delayer = link.start_delayer(delay_ms=1)
    assert None not in link.probe(20, 0.005)
    delayer.kill()
    delayer.wait(5)
    assert link.probe(50, 0.005) == [None] * 50  # loud: no rule bypass, nothing passes undelayed


def test_sigterm_releases_every_queued_packet_and_exits_0(link):
    delayer = link.start_delayer(delay_ms=1500)
    probes = link.probe(20, 0.01, background=True)
    link.wait_stats(lambda s: s["queued"] == 20)
    delayer.send_signal(signal.SIGTERM)
    assert delayer.wait(5) == 0
    rtts = link.collect(probes)
    assert None not in rtts and max(rtts) < 1400  # released early, not dropped, not held to due
    assert link.stats()["released"] == 20


def test_start_errors_exit_with_their_codes(link):
    link.write_spec(delay_ms=-1)
    bad = link.run_delayer()
    _, err = bad.communicate(timeout=10)
    assert bad.returncode == 2 and "spec.json: delay_ms: must be >= 0" in err
    link.start_delayer(delay_ms=1)
    second = link.run_delayer()  # the same queue number: the kernel refuses a second binder
    _, err = second.communicate(timeout=10)
    assert second.returncode == 3 and f"cannot bind NFQUEUE {QUEUE}" in err


OVERFLOW = """
import json, sys, time
from dist_llm_train.netem import nfqueue
queue = nfqueue.Queue(int(sys.argv[1]), maxlen=10000, gso=True, rcvbuf=4096)
print("bound", flush=True)
time.sleep(1.5)  # the sender floods meanwhile; the socket buffer holds only a few messages
got = queue.receive()
queue.send(nfqueue.verdict(queue.queue_num, got[-1].id, nfqueue.NF_ACCEPT, batch=True))
print(json.dumps({"read": len(got), "enobufs": queue.enobufs,
                  "user_dropped": nfqueue.read_counters(queue.queue_num).user_dropped}))
"""


def test_socket_buffer_overflow_is_counted_not_fatal(link):
    binder = link.pair.popen("b", sys.executable, "-c", OVERFLOW, str(QUEUE), stdout=subprocess.PIPE, text=True,
                             env={"PYTHONPATH": SERVICES})
    assert binder.stdout.readline().strip() == "bound"
    link.pair.run("b", "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "vb", "-j", "NFQUEUE",
                  "--queue-num", str(QUEUE))
    link.probe(200, 0.001)  # none answered: nobody releases them within the probe's timeout
    result = json.loads(binder.communicate(timeout=10)[0])
    assert result["enobufs"] >= 1 and result["user_dropped"] > 0  # the kernel dropped, and said so
    assert 0 < result["read"] < 200
