"""A delayed link between two network namespaces, for the delayer's tests and benchmark.

Each namespace is held by a `sleep` child made with `unshare --net` and entered with
`nsenter --net=/proc/<pid>/ns/net`. Unlike `ip netns add`, this needs no mount of /run/netns, so it
works inside a container that has only NET_ADMIN, NET_RAW and SYS_ADMIN. Traffic stays inside the
two namespaces (addresses 10.77.0.1 and 10.77.0.2 exist nowhere else).

Failure: a missing tool or capability raises subprocess.CalledProcessError from `VethPair()` with
the command's stderr; `close()` always kills every process it started, so the namespaces vanish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .backends.base import in_namespace

ADDRESSES = {"a": "10.77.0.1", "b": "10.77.0.2"}
DEVICES = {"a": "va", "b": "vb"}
SERVICES = str(Path(__file__).resolve().parents[2])  # the directory holding dist_llm_train


class VethPair:
    """Namespace `a` (device va, 10.77.0.1) <-> namespace `b` (device vb, 10.77.0.2)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []
        self.holders: dict[str, subprocess.Popen] = {}
        try:
            for side in ("a", "b"):
                self.holders[side] = self._hold_namespace()
            self.run("a", "ip", "link", "add", "va", "type", "veth", "peer", "name", "vb",
                     "netns", str(self.holders["b"].pid))
            for side in ("a", "b"):
                self.run(side, "ip", "link", "set", "lo", "up")
                self.run(side, "ip", "addr", "add", f"{ADDRESSES[side]}/24", "dev", DEVICES[side])
                self.run(side, "ip", "link", "set", DEVICES[side], "up")
        except BaseException:
            self.close()
            raise

    def _hold_namespace(self) -> subprocess.Popen:
        holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # unshare execs sleep only after unshare(2) succeeded
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/net") != mine:
                    return holder
            except FileNotFoundError:
                pass
            if holder.poll() is not None:
                raise subprocess.CalledProcessError(holder.returncode, "unshare --net (needs CAP_SYS_ADMIN)")
            time.sleep(0.005)
        holder.kill()
        raise TimeoutError("unshare --net did not create a namespace within 5 s")

    def name_eth0(self) -> None:
        """Rename both devices eth0, as in a container: the backends shape `eth0`."""
        for side in ("a", "b"):
            self.run(side, "ip", "link", "set", DEVICES[side], "down")
            self.run(side, "ip", "link", "set", DEVICES[side], "name", "eth0")
            self.run(side, "ip", "link", "set", "eth0", "up")

    def netns(self, side: str) -> str:
        return f"/proc/{self.holders[side].pid}/ns/net"

    def enter(self, side: str, *argv: str) -> list[str]:
        return in_namespace(f"/proc/{self.holders[side].pid}/ns/net", argv)

    def run(self, side: str, *argv: str, timeout: float = 30) -> str:
        """Run a command in the namespace; its stdout, or CalledProcessError with its stderr."""
        done = subprocess.run(self.enter(side, *argv), capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return done.stdout

    def popen(self, side: str, *argv: str, **kwargs) -> subprocess.Popen:
        """Start a process in the namespace; `close()` kills it if it is still running."""
        proc = subprocess.Popen(self.enter(side, *argv), **kwargs)
        self._procs.append(proc)
        return proc

    def python(self, side: str, module: str, *args: str, **kwargs) -> subprocess.Popen:
        """`python3 -m module args` in the namespace, with this package importable."""
        env = dict(os.environ, PYTHONPATH=SERVICES)
        return self.popen(side, sys.executable, "-m", module, *args, env=env, **kwargs)

    def close(self) -> None:
        for proc in [*self._procs, *self.holders.values()]:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for proc in self._procs:
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream:
                    stream.close()

    def __enter__(self) -> VethPair:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DelayedLink:
    """Namespace b of a VethPair runs a UDP echo server, a TCP sink and (once started) the
    delayer on queue `queue_num`, fed by `iptables -t mangle -A PREROUTING -i vb -j NFQUEUE`: the
    receiver's ingress, as in production. Requests a -> b are delayed, replies b -> a are not, so
    an RTT measured from a rises by the delay once."""

    ECHO_PORT, SINK_PORT = 7001, 7002

    def __init__(self, pair: VethPair, workdir: Path, queue_num: int = 7):
        self.pair = pair
        self.queue_num = queue_num
        self.spec_file = Path(workdir) / "spec.json"
        self.stats_file = Path(workdir) / "stats.json"
        self.delayer: subprocess.Popen | None = None
        for argv in (("udp-echo", "--port", str(self.ECHO_PORT)), ("tcp-sink", "--port", str(self.SINK_PORT))):
            server = pair.python("b", "dist_llm_train.netem.traffic", *argv, stdout=subprocess.PIPE, text=True)
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"traffic {argv[0]} did not start in namespace b")

    def write_spec(self, delay_ms: float, jitter_ms: float = 0.0, loss_pct: float = 0.0,
                   rate_mbit: float | None = None) -> None:
        self.spec_file.write_text(json.dumps(
            {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss_pct": loss_pct, "rate_mbit": rate_mbit}))

    def run_delayer(self, seed: int = 1) -> subprocess.Popen:
        """The delayer process on the current spec file (stdout and stderr piped)."""
        return self.pair.python("b", "dist_llm_train.netem.delayer", "--queue-num", str(self.queue_num),
                                "--spec-file", str(self.spec_file), "--stats-file", str(self.stats_file),
                                "--seed", str(seed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start_delayer(self, delay_ms: float, jitter_ms: float = 0.0, loss_pct: float = 0.0,
                      rate_mbit: float | None = None, seed: int = 1) -> subprocess.Popen:
        """Start the delayer, wait until it has bound its queue (first stats file), then add the
        NFQUEUE rule: in this order no packet meets a queue nobody listens to."""
        self.write_spec(delay_ms, jitter_ms, loss_pct, rate_mbit)
        self.delayer = self.run_delayer(seed)
        deadline = time.monotonic() + 10
        while not self.stats():
            if self.delayer.poll() is not None:
                raise RuntimeError(f"delayer exited {self.delayer.returncode}: {self.delayer.communicate()}")
            if time.monotonic() > deadline:
                raise TimeoutError("delayer wrote no stats within 10 s")
            time.sleep(0.02)
        self.pair.run("b", "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", DEVICES["b"], "-j", "NFQUEUE",
                      "--queue-num", str(self.queue_num))
        return self.delayer

    def stats(self) -> dict | None:
        try:
            return json.loads(self.stats_file.read_text())
        except (FileNotFoundError, ValueError):  # not written yet
            return None

    def wait_stats(self, predicate, timeout_s: float = 5.0) -> dict:
        """The first stats file for which predicate(stats) holds; TimeoutError with the last one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats and predicate(stats):
                return stats
            time.sleep(0.05)
        raise TimeoutError(f"delayer stats never satisfied the condition: {self.stats()}")

    def probe(self, count: int, interval_s: float, background: bool = False):
        """RTTs (ms, None = lost) of `count` UDP probes from a to b's echo server; with
        `background`, the running probe process (pass it to `collect`)."""
        proc = self.pair.python("a", "dist_llm_train.netem.traffic", "udp-probe", "--host", ADDRESSES["b"],
                                "--port", str(self.ECHO_PORT), "--count", str(count), "--interval", str(interval_s),
                                "--samples", stdout=subprocess.PIPE, text=True)
        return proc if background else self.collect(proc)

    @staticmethod
    def collect(proc: subprocess.Popen) -> list[float | None]:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode:
            raise RuntimeError(f"udp-probe exited {proc.returncode}")
        return json.loads(out)["rtts_ms"]

    def tcp_send(self, seconds: float, warmup_s: float, pace_mbit: float | None = None) -> subprocess.Popen:
        """One TCP stream a -> b; `tcp_mbit(proc)` waits for its figure."""
        pace = ["--pace-mbit", str(pace_mbit)] if pace_mbit else []
        return self.pair.python("a", "dist_llm_train.netem.traffic", "tcp-send", "--host", ADDRESSES["b"],
                                "--port", str(self.SINK_PORT), "--seconds", str(seconds), "--warmup", str(warmup_s),
                                *pace, stdout=subprocess.PIPE, text=True)

    @staticmethod
    def tcp_mbit(proc: subprocess.Popen) -> float:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode:
            raise RuntimeError(f"tcp-send exited {proc.returncode}")
        return json.loads(out)["mbit"]
