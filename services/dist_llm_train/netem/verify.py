"""`dist-llm-train verify --profile X`: measure the running stack's links against the preset.

Run inside the netem sidecar (`make verify PROFILE=x` = `docker compose exec netem dist-llm-train
verify --profile x`), beside the sidecar it checks. For every worker, against the PS (when there
is one) and the controller, it measures RTT, jitter, round-trip loss and TCP throughput both
ways (probe.py) and prints them beside what the preset promises, with the tolerance. Pairs whose
two links equal a pair already measured are not measured again (the table says which pair stood
for them); instead every impaired container's rules and delayer are checked directly. A
measurement is timed to fall between two phase changes of the preset. It also prints the TCP
settings in force in every container (congestion control, buffers, ECN, SACK) beside what the
preset asks for, and, on lossy pairs, the Mathis bound of one loss-based flow beside the measured
TCP figures; `--congestion-control cubic,bbr` measures one flow each way again with each algorithm
(chosen per socket), to show what the choice does on these links.

Exit status: 0 all within tolerance; 1 a figure out of tolerance or a rule missing; 2 cannot run
(sidecar not running, another profile applied, no containers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..schema import ConfigError
from .backends.base import ns_run
from .preset import Preset, load_preset
from .probe import (LOSS_SAMPLES, LOSS_TOLERANCE_PP, RATE_JUDGED_UP_TO_MBIT, RATE_RANGE, RTT_SAMPLES, RTT_TOLERANCE,
                    STDEV_TOLERANCE, TCP_SECONDS, Endpoint, ProbeError, expected, judge, measure_pair, measure_tcp,
                    schedule)
from .helpers import address, socket_path
from .sidecar import STATE_FILE
from .targets import Target, find_targets


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=None, help="the preset the stack should be running (default: NETEM_PROFILE)")
    parser.add_argument("--netem-dir", default=None, help="folder of the presets (default: NETEM_DIR)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document")
    parser.add_argument("--congestion-control", default=None,
                        help="comma-separated algorithms: measure one TCP flow each way with each, per pair")
    parser.add_argument("--tcp-seconds", type=float, default=None,
                        help="length of those flows after their warm-up (default: max(10 s, 30 RTTs))")


def measurement_seconds(plan: dict) -> float:
    return (RTT_SAMPLES * plan["rtt_interval_s"] + LOSS_SAMPLES * plan["loss_interval_s"] + 2 * plan["timeout_s"]
            + 2 * (plan["tcp_warmup_s"] + TCP_SECONDS) + 5)


def wait_for_quiet_window(preset: Preset, t0_wall: float | None, seconds: float,
                          containers: list[tuple[str, int]]) -> float:
    """Sleep until the links of `containers` stay unchanged (and up) for `seconds`; return t then."""
    t = 0.0 if t0_wall is None else time.time() - t0_wall
    start = preset.quiet_window(t, seconds, containers)
    if start is None:
        raise SystemExit(f"verify: the phases or traces of {preset.name} never leave these links unchanged and up "
                         f"for the {seconds:.0f} s a measurement takes (a traced link is measured by "
                         "`make bench-trace`, netem/README.md)")
    if start > t:
        print(f"waiting {start - t:.1f} s for the links to stay unchanged for {seconds:.0f} s", file=sys.stderr)
        time.sleep(start - t + 0.3)
    return start if t0_wall is None else time.time() - t0_wall


def rule_problems(backend_name: str, target: Target, netns: str, delayer_pid: int | None) -> list[str]:
    """What is missing of the rules (and process) the backend installs in this container."""
    def show(*argv: str) -> str:
        return ns_run(netns, argv, 10).stdout

    problems = []
    qdiscs = show("tc", "qdisc", "show")
    for needle, what in (("htb 1: dev eth0 root", "egress htb"), ("ingress ffff: dev eth0", "ingress qdisc"),
                         ("dev dlt-ifb0 root", "ifb shaping")):
        if needle not in qdiscs.replace("qdisc ", ""):
            problems.append(f"{target.name}: no {what}")
    if backend_name == "userspace":
        if "NFQUEUE --queue-num" not in show("iptables-nft", "-t", "mangle", "-S", "PREROUTING"):
            problems.append(f"{target.name}: no NFQUEUE rule")
        if not delayer_pid or ns_run(netns, ["test", "-d", f"/proc/{delayer_pid}"], 10).returncode:
            problems.append(f"{target.name}: its delayer is not running")
    return problems


def fmt(value, unit: str) -> str:
    return "-" if value is None else f"{value:.2f} {unit}"


def table_rows(pair: str, measured: dict, exp: dict, verdict: dict) -> list[list[str]]:
    def ok(key):
        return {True: "yes", False: "NO", None: "not judged"}[verdict[key]]

    rel, floor = RTT_TOLERANCE
    srel, sfloor = STDEV_TOLERANCE
    cap = exp["mbit"]
    low, high = RATE_RANGE
    rate_tol = "-" if verdict["mbit"] is None else f"{low * cap:.1f}-{high * cap:.1f} Mbit/s"
    mathis = [
        ["", "TCP Mathis bound up / down", f"{fmt(exp['mathis_up_mbit'], 'Mbit/s')} / {fmt(exp['mathis_down_mbit'], 'Mbit/s')}",
         f"{measured['mbit_up']:.1f} ({measured.get('tcp_cc_up')}) / {measured['mbit_down']:.1f} ({measured.get('tcp_cc_down')})",
         "shown", "not judged"]] if exp.get("mathis_up_mbit") or exp.get("mathis_down_mbit") else []
    return [
        [pair, "RTT mean", fmt(exp["rtt_ms"], "ms"), fmt(measured["rtt_ms"], "ms"),
         f"±{max(rel * exp['rtt_ms'], floor):.2f} ms", ok("rtt_ms")],
        ["", "RTT stdev", fmt(exp["rtt_stdev_ms"], "ms"), fmt(measured["rtt_stdev_ms"], "ms"),
         f"±{max(srel * exp['rtt_stdev_ms'], sfloor):.2f} ms", ok("rtt_stdev_ms")],
        ["", "loss (round trip)", fmt(exp["loss_pct"], "%"), fmt(measured["loss_pct"], "%"),
         f"±{LOSS_TOLERANCE_PP:g} pp", ok("loss_pct")],
        ["", "TCP up / down", "unlimited" if cap is None else f"{cap:g} Mbit/s",
         f"{measured['mbit_up']:.1f} / {measured['mbit_down']:.1f} Mbit/s", rate_tol, ok("mbit")],
        *mathis,
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["pair", "figure", "preset", "measured", "tolerance", "within"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def tcp_lines(preset: Preset, targets: list[Target], links: dict) -> tuple[list[str], list[str]]:
    """(one line per container: the TCP settings in force beside the preset's, problems where they differ)."""
    lines, problems = [], []
    for target in targets:
        want = preset.link_for(target.role, target.index).tcp.congestion_control
        got = (links.get(target.name) or {}).get("tcp_in_force")
        if got is None:
            lines.append(f"  {target.name}: not set yet (preset: {want})")
            continue
        lines.append(f"  {target.name}: {got['congestion_control']} (preset: {want}); rmem {got['rmem']}, "
                     f"wmem {got['wmem']}, ecn {got['ecn']}, sack {got['sack']}")
        if want != "host" and got["congestion_control"] != want:
            problems.append(f"{target.name}: TCP congestion control {got['congestion_control']}, preset {want}")
    return lines, problems


def queue_lines(targets: list[Target], links: dict) -> list[str]:
    """One line per rate-limited container: its rate limiter's queue in force, and where the size comes from."""
    lines = []
    for target in targets:
        entry = links.get(target.name) or {}
        if entry.get("queue_packets_in_force") is not None:
            source = "the preset's queue_packets" if entry.get("queue_packets") is not None else "from the BDP rule"
            lines.append(f"  {target.name}: {entry['queue_packets_in_force']} packets ({source})")
    return lines or ["  (no rate limiter installed)"]


def main(args: argparse.Namespace) -> int:
    from .. import settings as settings_module

    try:
        settings = settings_module.from_env()
        preset = load_preset(args.profile or settings.profile or "lan", Path(args.netem_dir or settings.netem_dir),
                             settings.tcp_cc)
        state = json.loads(STATE_FILE.read_text())
        algorithms = [a for a in (args.congestion_control or "").split(",") if a]
    except ConfigError as exc:
        print(f"verify: refused: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError):
        print(f"verify: no sidecar state in {STATE_FILE}: run this inside a running netem sidecar "
              "(make verify PROFILE=...)", file=sys.stderr)
        return 2
    if state["profile"] != preset.name:
        print(f"verify: the sidecar applies '{state['profile']}', not '{preset.name}': "
              f"`make up PROFILE={preset.name}` first, or verify PROFILE={state['profile']}", file=sys.stderr)
        return 2
    import docker

    client = docker.from_env()
    targets, netns, gone = [], {}, []
    for target in sorted(find_targets(client, state["project"]).values(), key=lambda t: (t.role, t.index)):
        sock = socket_path(target.id)  # the sidecar's helper in that container's namespace
        if sock.exists():
            netns[target.id] = address(sock)
            targets.append(target)
        else:
            gone.append(f"{target.name}: the sidecar has no helper in its namespace")
    workers = [t for t in targets if t.role == "worker"]
    peers = [t for t in targets if t.role == "ps"] + [t for t in targets if t.role == "controller"]
    if not workers or not peers:
        print("verify: no worker or no controller/PS is running in this stack", file=sys.stderr)
        return 2

    tcp_summary, problems = tcp_lines(preset, targets, state["links"])
    problems += gone
    for target in targets:
        entry = state["links"].get(target.name)
        if entry is None:
            problems.append(f"{target.name}: the sidecar has not applied its link")
        elif entry["installed"]:
            problems += rule_problems(state["backend"], target, netns[target.id],
                                      (entry.get("delayer") or {}).get("pid"))

    results, rows, skipped, measured_by_links = [], [], [], {}
    for worker in workers:
        for peer in peers:
            pair = f"{worker.name} <-> {peer.name}"
            t = wait_for_quiet_window(preset, state.get("t0"), measurement_seconds(
                schedule(preset.link_for(worker.role, worker.index), preset.link_for(peer.role, peer.index))),
                [(worker.role, worker.index), (peer.role, peer.index)])
            a_link, b_link = preset.link_at(worker.role, worker.index, t), preset.link_at(peer.role, peer.index, t)
            key = (a_link, b_link)
            if key in measured_by_links:
                skipped.append(f"{pair}: same links as {measured_by_links[key]}, not measured again")
                continue
            measured_by_links[key] = pair
            if not args.json:
                print(f"measuring {pair} (t = {t:.0f} s) ...", flush=True)
            try:
                measured = measure_pair(Endpoint(worker.name, netns[worker.id], worker.address, a_link),
                                        Endpoint(peer.name, netns[peer.id], peer.address, b_link))
            except ProbeError as exc:
                problems.append(f"{pair}: {exc}")
                continue
            exp = expected(a_link, b_link, state["backend"])
            verdict = judge(measured, exp)
            a_end, b_end = (Endpoint(worker.name, netns[worker.id], worker.address, a_link),
                            Endpoint(peer.name, netns[peer.id], peer.address, b_link))
            by_algorithm = {}
            for algorithm in algorithms:
                seconds = args.tcp_seconds or max(10.0, 30 * exp["rtt_ms"] / 1000)
                try:
                    by_algorithm[algorithm] = measure_tcp(a_end, b_end, algorithm, seconds)
                except ProbeError as exc:
                    problems.append(f"{pair}: TCP with {algorithm}: {exc}")
            results.append({"pair": [worker.name, peer.name], "links": [a_link.model_dump(), b_link.model_dump()],
                            "expected": exp, "measured": measured, "verdict": verdict, "tcp_by_algorithm": by_algorithm})
            rows += table_rows(pair, measured, exp, verdict)
            for algorithm, got in by_algorithm.items():
                rows.append(["", f"TCP up / down, {algorithm}, {got['seconds']:.0f} s", "-",
                             f"{got['mbit_up']:.2f} / {got['mbit_down']:.2f} Mbit/s", "shown", "not judged"])
    failed = problems or any(v is False for r in results for v in r["verdict"].values())
    if args.json:
        print(json.dumps({"profile": preset.name, "backend": state["backend"], "results": results,
                          "tcp": {t.name: state["links"].get(t.name, {}).get("tcp_in_force") for t in targets},
                          "queue_packets": {t.name: state["links"].get(t.name, {}).get("queue_packets_in_force")
                                            for t in targets},
                          "problems": problems, "ok": not failed}))
    else:
        print(f"\nprofile {preset.name}, backend {state['backend']}; RTT from {RTT_SAMPLES} UDP echoes, loss from "
              f"{RTT_SAMPLES + LOSS_SAMPLES}, TCP judged for loss-free caps up to {RATE_JUDGED_UP_TO_MBIT:g} Mbit/s")
        print_table(rows)
        print("\nTCP in force (netem/README.md, 'TCP'):")
        print("\n".join(tcp_summary))
        print("\nRate limiter queue in force (netem/README.md, 'queue_packets'):")
        print("\n".join(queue_lines(targets, state["links"])))
        print("(a run in progress sends its own traffic through these links: on capped links it queues with the "
              "probes and raises the RTT; the sidecar's probe before the run, in runs/<run_id>/link.json, is quiet)")
        for line in skipped:
            print(line)
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print("\nwithin tolerance" if not failed else "\nOUT OF TOLERANCE (see above)")
    return 1 if failed else 0

