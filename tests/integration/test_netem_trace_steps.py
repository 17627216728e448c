"""A trace step on real network namespaces: the sidecar's NamespaceLink moves the tbf's rate with
`tc qdisc change`, read back with `tc -s qdisc show`, without deleting the qdisc (same handle, its
counters keep counting), and the delayer takes the step's delay.

Needs root or NET_ADMIN + NET_RAW + SYS_ADMIN (the test container of `make test` has them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_llm_train.bench.trace import follow
from dist_llm_train.netem.backends import choose
from dist_llm_train.netem.preset import load_preset
from dist_llm_train.netem.nslink import NamespaceLink
from dist_llm_train.netem.testbed import VethPair

NETEM_DIR = Path(__file__).resolve().parents[2] / "netem"


@pytest.fixture
def pair():
    with VethPair() as p:
        p.name_eth0()
        echo = p.python("b", "dist_llm_train.netem.traffic", "udp-echo", "--port", "7001", stdout=subprocess.PIPE,
                        text=True)
        assert echo.stdout.readline().strip() == "ready"
        yield p


UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
# UDP to b's echo server: a's egress tbf carries the datagrams, its ifb tbf the echoes.
TRAFFIC = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
          "[s.sendto(b'x' * 100, ('10.77.0.2', 7001)) for _ in range(20)]"


def qdisc(pair, dev: str) -> dict:
    """The tbf on `dev` (the ifb's root, or eth0's leaf under 1:1): handle, rate in bit/s, Sent bytes."""
    shown = pair.run("a", "tc", "-s", "qdisc", "show", "dev", dev)
    block = next(b for b in re.split(r"\n(?=qdisc )", shown) if b.startswith("qdisc tbf"))
    number, unit = re.search(r"rate ([\d.]+)([KMG]?)bit", block).groups()
    return {"handle": block.split()[2], "rate": round(float(number) * UNITS[unit]),
            "sent": int(re.search(r"Sent (\d+) bytes", block).group(1))}


def send_traffic(pair) -> None:
    pair.run("a", sys.executable, "-c", TRAFFIC)
    time.sleep(0.2)  # the ICMP errors come back through the 20-40 ms delayer


def test_a_trace_step_changes_the_tbf_in_place_and_the_delayers_delay(pair, tmp_path):
    # Prepare: worker 1 of `varying` follows congestion_periodic.csv: 24.37 -> 5.86 Mbit/s, 20 -> 40 ms at t = 15.
    preset = load_preset("varying", NETEM_DIR)
    before, after = preset.link_at("worker", 1, 14.5), preset.link_at("worker", 1, 15.0)
    assert (before.rate_mbit, before.delay_ms, after.rate_mbit, after.delay_ms) == (24.37, 20, 5.86, 40)
    link = NamespaceLink(choose("userspace")[0], pair.netns("a"), "a", seed=1, workdir=tmp_path)
    link.apply(before)
    try:
        send_traffic(pair)
        ifb, egress = qdisc(pair, "dlt-ifb0"), qdisc(pair, "eth0")
        assert ifb["rate"] == egress["rate"] == 24_370_000 and ifb["sent"] > 0 and egress["sent"] > 0
        # Execute
        link.change(after)
        send_traffic(pair)
        # Check: the new rate, the same qdiscs (a replaced one starts again from 0 bytes), the new delay.
        ifb2, egress2 = qdisc(pair, "dlt-ifb0"), qdisc(pair, "eth0")
        assert ifb2["rate"] == egress2["rate"] == 5_860_000
        assert ifb2["handle"] == ifb["handle"] and ifb2["sent"] > ifb["sent"]
        assert egress2["handle"] == egress["handle"] and egress2["sent"] > egress["sent"]
        deadline = time.monotonic() + 5
        while (link.delayer_stats() or {}).get("spec", {}).get("delay_ms") != 40 and time.monotonic() < deadline:
            time.sleep(0.05)  # the delayer re-reads its spec on SIGHUP and writes its stats a moment later
        assert link.delayer_stats()["spec"]["delay_ms"] == 40
    finally:
        assert link.remove() == []


def test_a_bulk_flow_keeps_flowing_through_a_step_down(tmp_path):
    # A step from 24 to 6 Mbit/s (a smaller tbf bucket) once stalled the link for 10 s: aggregates queued
    # under the big bucket were longer than the new one, and tbf never sends those.
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "step.csv").write_text("t_s,rate_mbit,delay_ms,loss_pct\n0,24,10,\n2,6,20,\n5,6,,\n")
    (tmp_path / "step.yaml").write_text("workers: [{trace: traces/step.csv, trace_end: hold}]")
    series = follow(load_preset(str(tmp_path / "step.yaml"), tmp_path), 0, 5, "cubic")
    assert min(series["wire"][:2]) > 0.85 * 24
    assert min(series["wire"][2:]) > 0.85 * 6, series


def test_a_bulk_flow_keeps_flowing_through_a_phase_that_lowers_the_rate(tmp_path):
    # The same step down by a phase, on a link without a trace (so without the peak bucket): the tbf is
    # deleted and added again (backends/base.py), and the flow goes on at the new rate. Changed in place it
    # stalled: 0.68, 0, 0 Mbit/s after the step. The new tbf counts from 0 (the step's wire bucket is
    # meaningless): the flow's goodput says it.
    (tmp_path / "phase.yaml").write_text(
        "workers: [{rate_mbit: 24, delay_ms: 10}]\n"
        "phases: [{name: slow, start_s: 2, duration_s: 600, targets: [workers], link: {rate_mbit: 6, delay_ms: 20}}]\n")
    series = follow(load_preset(str(tmp_path / "phase.yaml"), tmp_path), 0, 5, "cubic")
    assert series["trace"] == [24, 24, 6, 6, 6]
    assert min(series["wire"][:2]) > 0.85 * 24
    assert min(series["wire"][3:]) > 0.85 * 6 and min(series["goodput"][2:]) > 0.8 * 6, series
