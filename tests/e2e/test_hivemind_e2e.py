"""The hivemind trainer through the real compose stack, started as a user starts it:
`make up MODE=ml CONFIG=configs/ml_hivemind_ci.yaml PROFILE=high_rtt WORKERS=3` (make reads ml.trainer from the
config and runs the PS and workers from the hivemind image). Three peers train, worker 0 ends the run at its
epoch budget (or its time budget), and the row says trainer=hivemind with the bytes the sidecar counted at the workers' interfaces;
meanwhile the TCP round trip between two peers, on the port hivemind listens on, is the preset's: the emulated
links carry the peer-to-peer traffic, not only the traffic to the PS; and hivemind's own connections use the
preset's congestion control (cubic; this host's default is bbr), which the sidecar set in the peers' namespaces."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import time

from dist_llm_train.netem.preset import load_preset

from .stack import REPO

PEER_PORT = 31337 + 1 + 1  # hive/identity.PORT + 1 + index of the peer dialled (worker-2: index 1)
CONNECT_RTT = """
import socket, statistics, sys, time
samples = []
for _ in range(15):
    s = socket.socket(); s.settimeout(5); t = time.perf_counter()
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))  # the SYN / SYN-ACK exchange: one round trip
    except ConnectionRefusedError:  # a peer already gone answers with a RST after the same round trip
        pass
    samples.append(1000 * (time.perf_counter() - t)); s.close(); time.sleep(0.2)
print(statistics.median(samples))
"""


def peer_sockets(stack, timeout_s: float = 60.0) -> str:
    """`ss -tin` of worker-1's established TCP connections, once one of them is hivemind's (a port of 31337-31340)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sockets = stack.compose("exec", "-T", "--index", "1", "worker", "ss", "-tinH", "state", "established",
                                timeout=60).stdout
        if re.search(r":3133[7-9]\b|:31340\b", sockets) or time.monotonic() > deadline:
            return sockets
        time.sleep(2)


def test_make_up_hivemind_trains_over_the_emulated_peer_links(make_stack):
    stack = make_stack(config="configs/ml_hivemind_ci.yaml", profile="high_rtt", workers=3, mode="ml")
    image = os.environ.get("IMAGE", "dist-llm-train:dev")
    make = subprocess.run(
        ["make", "--no-print-directory", "up", "MODE=ml", f"CONFIG={stack.config}", "PROFILE=high_rtt", "WORKERS=3",
         f"IMAGE={image}", f"COMPOSE_PROJECT_NAME={stack.project}", f"HOST_UID={os.getuid()}", f"HOST_GID={os.getgid()}"],
        env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    images = {stack.compose("ps", "--format", "{{.Image}}", service).stdout.strip() for service in ("worker", "ps")}
    assert all(i.split(":")[0].endswith("-hivemind") for i in images), images  # make chose the hivemind image

    stack.wait_for(lambda s: s["run"]["state"] == "running", 300, "the run to start")
    peer = f"{stack.project}-worker-2"
    rtt = stack.compose("exec", "-T", "--index", "1", "worker", "python3", "-c", CONNECT_RTT, peer, str(PEER_PORT),
                        timeout=60)
    preset = load_preset("high_rtt", REPO / "netem")
    expected = preset.link_at("worker", 0, 0).delay_ms + preset.link_at("worker", 1, 0).delay_ms
    assert abs(float(rtt.stdout) - expected) <= max(0.1 * expected, 2.0), (rtt.stdout, expected)
    sockets = peer_sockets(stack)
    assert set(re.findall(r"^\s+([a-z]+) wscale:", sockets, re.M)) == {"cubic"}, sockets

    status = stack.wait_end(timeout=400)
    run = status["run"]
    # the epoch budget, or (a slow shared host, rounds that timed out) the time budget
    assert run["state"] == "finished" and run["reason"].startswith(("max_versions 15", "max_time_s")), run
    (row,) = csv.DictReader(open(stack.runs_dir / run["id"] / "row.csv", newline=""))
    assert row["trainer"] == "hivemind" and row["protocol"] == "sync" and row["num_workers"] == "3"
    assert row["tcp_cc"] == "cubic", row
    assert float(row["final_val_loss"]) < float(row["initial_val_loss"]) - 0.5, row
    # fp16 gradients of 49,920 parameters, all-reduced 15 times among 3 peers: each peer sends 2/3 of its
    # 100 KB gradient and 2/3 of the averaged parts back per epoch, at least about 2.5 MB up over the run
    assert int(row["iface_bytes_up"]) > 2_500_000 and int(row["iface_bytes_down"]) > 2_500_000, row
    assert row["bytes_up"] == "" and row["updates_accepted"] == ""  # no PS: nothing counted at its socket
    curve = list(csv.DictReader(open(stack.runs_dir / run["id"] / "curve.csv", newline="")))
    evaluated = [int(r["version"]) for r in curve if r["val_loss"]]
    assert evaluated[0] == 0 and all(v % 5 == 0 for v in evaluated[:-1]) and len(evaluated) >= 2, evaluated
