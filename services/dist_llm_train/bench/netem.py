"""`dist-llm-train bench netem`: how faithfully, and at what cost, this machine emulates each preset.

Run by `make bench-netem` in a container with the Docker socket and the repository at its host
path. For every preset it brings up the real stack (basic mode, one worker per distinct worker
link, `configs/basic_demo.yaml`), waits for the sidecar to report ready, runs
`dist-llm-train verify --profile P --json` inside the sidecar and prints measured beside preset
with the verdicts, then takes the stack down. Backend: userspace, and netem too where the kernel
has sch_netem (else it says so). The backend's own cost comes from `bench delayer` (another
module), run in a container with NET_ADMIN, NET_RAW and SYS_ADMIN.

The workers are paused while verify measures (the run's task traffic would queue in the very
links being measured; their namespaces stay). The machine's other load shows in every figure:
the record is taken on a quiet host.
Exit status: 0 when every judged figure is within tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from ..netem import helpers
from ..netem.preset import available, load_preset
from ..netem.verify import print_table, table_rows
from ..settings import ROLE_TOKENS

REPO = Path.cwd()  # the repository at its host path (make bench-netem runs here), so bind mounts resolve
IMAGE = os.environ.get("IMAGE", "dist-llm-train:dev")
CAPS = ["--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--cap-add", "SYS_ADMIN"]
READY_TIMEOUT_S = 240
PAUSE_SETTLE_S = 3.0  # a 256 kB task download queued at 5 Mbit/s takes 0.4 s to drain


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profiles", default=None,
                        help="comma-separated presets (default: every one in netem/ without a trace)")
    parser.add_argument("--skip-cost", action="store_true", help="do not run the delayer cost benchmark")


def kernel_has_netem() -> bool:
    code = "from dist_llm_train.netem.backends import kernel_has_netem; print(kernel_has_netem())"
    done = subprocess.run(["docker", "run", "--rm", *CAPS, IMAGE, "python3", "-c", code],
                          capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"cannot probe the kernel for sch_netem: {done.stderr.strip()}")
    return done.stdout.strip() == "True"


class BenchStack:
    """One compose project of the real stack, under REPO/.e2e/<project> (bind mounts resolve there)."""

    def __init__(self, profile: str, backend: str, workers: int):
        self.project = f"dlt-bench-{profile.replace('_', '-')}-{secrets.token_hex(3)}"
        self.home = REPO / ".e2e" / self.project
        (self.home / "runs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "RUN_TOKEN": secrets.token_hex(16),
                    **{name: secrets.token_hex(16) for name in ROLE_TOKENS.values()},
                    "CONFIG": "configs/basic_demo.yaml", "PROFILE": profile, "WORKERS": str(workers),
                    "NETEM_BACKEND": backend, "RUNS_HOST_DIR": str(self.home / "runs"), "CONTROLLER_PORT": "0"}

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "compose", "--project-directory", str(REPO), "-f", str(REPO / "compose.yaml"),
                               *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def sidecar_state(self) -> dict | None:
        done = self.compose("exec", "-T", "netem", "cat", "/run/dlt-netem/state.json", timeout=30)
        return json.loads(done.stdout) if done.returncode == 0 and done.stdout else None

    def __enter__(self) -> "BenchStack":
        up = self.compose("up", "-d")
        if up.returncode:
            self.__exit__()
            raise RuntimeError(f"compose up failed: {up.stderr[-2000:]}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            state = self.sidecar_state()
            if state and state["ready"]:
                return self
            time.sleep(2)
        logs = self.compose("logs", "--no-color", "netem").stdout[-3000:]
        self.__exit__()
        raise RuntimeError(f"the sidecar was not ready within {READY_TIMEOUT_S} s:\n{logs}")

    def __exit__(self, *exc) -> None:
        self.compose("unpause", "worker")
        self.compose("stop", "--timeout", "30", "netem")  # first: it removes its rules and helpers
        helpers.sweep(self.project)
        self.compose("--profile", "ml", "down", "-v", "--remove-orphans", "--timeout", "30")
        shutil.rmtree(self.home, ignore_errors=True)


def fidelity(profile: str, backend: str) -> dict:
    """verify's JSON report for one preset on one backend (with the sidecar's own probe added)."""
    preset = load_preset(profile, REPO / "netem")
    workers = len({preset.link_for("worker", i) for i in range(len(preset.workers))})
    with BenchStack(profile, backend, workers) as stack:
        probe = stack.sidecar_state()["probe"]
        # Frozen workers send nothing, so the run's task traffic does not queue in the links
        # being measured; their namespaces (and rules) stay, and verify's probes run from the sidecar.
        stack.compose("pause", "worker")
        time.sleep(PAUSE_SETTLE_S)  # what was in flight drains from the rate limiters' queues
        done = stack.compose("exec", "-T", "netem", "dist-llm-train", "verify", "--profile", profile, "--json",
                             timeout=900)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {"results": [], "problems": [f"verify failed: {done.stderr.strip()[-1000:]}"], "ok": False}
        for result in [*report["results"], *([probe] if probe else [])]:  # "worker-1", not "dlt-bench-good-1a2b3c-worker-1"
            result["pair"] = [name.removeprefix(f"{stack.project}-") for name in result["pair"]]
    return {**report, "sidecar_probe": probe}


def main(args: argparse.Namespace) -> int:
    if not (REPO / "compose.yaml").is_file():
        print(f"bench netem: no compose.yaml in {REPO}: run it from the repository (make bench-netem)")
        return 2
    # A traced preset never holds its links still for a measurement: `bench trace` measures those.
    profiles = args.profiles.split(",") if args.profiles else [
        p for p in available(REPO / "netem") if not load_preset(p, REPO / "netem").traces]
    backends = ["userspace"]
    if kernel_has_netem():
        backends.append("netem")
    else:
        print("This kernel has no sch_netem: the netem-backend table is not measured here.\n")
    ok = True
    for backend in backends:
        print(f"== fidelity, backend {backend} (tolerances: RTT max(10 %, 2 ms), stdev 30 % (1 ms floor), "
              "loss 1 pp, TCP 85-105 % of loss-free caps up to 50 Mbit/s)")
        for profile in profiles:
            started = time.monotonic()
            try:
                report = fidelity(profile, backend)
            except RuntimeError as exc:
                print(f"\n-- {profile}: NOT MEASURED: {exc}")
                ok = False
                continue
            rows = []
            for result in report["results"]:
                rows += table_rows(" <-> ".join(result["pair"]), result["measured"], result["expected"],
                                   result["verdict"])
            print(f"\n-- {profile} ({time.monotonic() - started:.0f} s)")
            probe = report["sidecar_probe"]
            if probe:
                print(f"sidecar's probe before the run ({' <-> '.join(probe['pair'])}): RTT {probe['rtt_ms']:.2f} ms "
                      f"(p50 {probe['rtt_p50_ms']:.2f}), stdev {probe['rtt_stdev_ms']:.2f} ms, loss {probe['loss_pct']:.2f} %, "
                      f"TCP {probe['mbit_up']:.1f} / {probe['mbit_down']:.1f} Mbit/s")
            if rows:
                print_table(rows)
            for problem in report["problems"]:
                print(f"PROBLEM: {problem}")
            ok = ok and report["ok"]
    if not args.skip_cost:
        print("\n== cost of the userspace backend (bench delayer, on a veth pair in a container)", flush=True)
        done = subprocess.run(["docker", "run", "--rm", *CAPS, IMAGE, "python3", "-m", "dist_llm_train.bench.delayer"],
                              capture_output=True, text=True, timeout=900)
        print(done.stdout + done.stderr[-2000:])
        ok = ok and done.returncode == 0
    return 0 if ok else 1
