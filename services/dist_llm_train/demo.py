"""`dist-llm-train demo-basic | demo-ml`: a whole run as local processes on loopback, no Docker.

The controller (and for ML the parameter server) and N workers run as separate processes on
127.0.0.1 with a fresh random RUN_TOKEN, LINK_GATE=0 (no netem sidecar), the controller's
state in a temporary folder and the row in --runs-dir, exactly as compose would run them
except for the network. `--set key=value` overrides reach every process through a resolved
config file in the temporary folder. Exit 0 only if the run finished; children are always
reaped (also on Ctrl-C and SIGTERM). The integration tests drive runs through `LocalRun`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

import httpx
import yaml

from .config import RunConfig, load_run_config
from .schema import ConfigError
from .settings import ROLE_TOKENS

END_STATES = ("finished", "timeout", "stopped", "failed")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # services/, so children import this checkout


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="run config (default: configs/basic_demo.yaml or configs/ml_demo.yaml)")
    parser.add_argument("--workers", type=int, default=None, help="number of workers (default: workers.count)")
    parser.add_argument("--runs-dir", default="runs", help="where the row and provenance land (default ./runs)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up after this many seconds (default: the config's timeout_s + 30)")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="demo-ml: train on this UTF-8 text (gzip if .gz) instead of the bundled corpus "
                             "(the same as --set ml.data.path=PATH)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, dotted, value in YAML (repeatable): --set tasks.count=10")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. tasks.count=10")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return overrides


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRun:
    """A run's processes on loopback. Use as a context manager: leaving it reaps every child
    (SIGTERM, then SIGKILL after 5 s) and removes the temporary folder."""

    def __init__(self, config: RunConfig, runs_dir: Path, output: IO | None = None):
        self.config = config
        self.tmp = Path(tempfile.mkdtemp(prefix="dlt-demo-"))
        self.output = output  # children's stdout and stderr; None = this process's
        config_path = self.tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        self.db_path = self.tmp / "state" / "controller.db"
        self.runs_dir = Path(runs_dir).resolve()
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
            "RUN_TOKEN": secrets.token_hex(16),
            # every role's credential; each child gets only its own (spawn), as compose gives them
            **{name: secrets.token_hex(16) for name in ROLE_TOKENS.values()},
            "CONFIG": str(config_path),
            "CONTROLLER_URL": self.url,
            "PS_ADDRESS": f"tcp://127.0.0.1:{free_port()}",
            "STATE_DIR": str(self.tmp / "state"),
            "RUNS_DIR": str(self.runs_dir),
            "CHECKPOINT_DIR": str(self.tmp / "checkpoints"),
            "LINK_GATE": "0",
            "NETEM_PROFILE": "",  # loopback: nothing is emulated, and the row says so
            "WORKERS": str(config.workers.count),
        }
        self.env.pop("WORKER_INDEX", None)
        self.controller: subprocess.Popen | None = None
        self.ps: subprocess.Popen | None = None
        self.workers: dict[int, subprocess.Popen] = {}

    def __enter__(self) -> "LocalRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, *args: str) -> subprocess.Popen:
        """`dist-llm-train <role> ...` with the run's environment, less the role credentials not the role's."""
        own = {"controller": set(ROLE_TOKENS.values()), "ps": {ROLE_TOKENS["ps"]}}.get(args[0], set())
        env = {k: v for k, v in self.env.items() if k not in set(ROLE_TOKENS.values()) - own}
        return subprocess.Popen([sys.executable, "-m", "dist_llm_train", *args], env=env,
                                stdout=self.output, stderr=subprocess.STDOUT if self.output else None)

    def start(self) -> None:
        """Controller, then (ML) the PS, then every worker."""
        self.start_controller()
        if self.config.mode == "ml":
            self.ps = self.spawn("ps")
        for index in range(self.config.workers.count):
            self.start_worker(index)

    def start_controller(self, timeout_s: float = 30.0) -> None:
        port = self.url.rsplit(":", 1)[1]
        self.controller = self.spawn("controller", "--host", "127.0.0.1", "--port", port)
        self.wait_until(lambda: self.get("/healthz") is not None, timeout_s, "the controller to answer /healthz")

    def start_worker(self, index: int) -> None:
        self.workers[index] = self.spawn("worker", "--index", str(index))

    def kill(self, process: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=10)

    def get(self, path: str) -> dict[str, Any] | None:
        """GET an open route; None while the controller does not answer."""
        try:
            return httpx.get(self.url + path, timeout=5).json()
        except httpx.TransportError:
            return None

    def status(self) -> dict[str, Any] | None:
        return self.get("/status")

    def stop_run(self, reason: str) -> None:
        httpx.post(self.url + "/run/stop", json={"reason": reason}, timeout=10,
                   headers={"Authorization": f"Bearer {self.env['RUN_TOKEN']}",
                            "X-Role-Token": self.env["OPERATOR_TOKEN"]})

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            self.check_services()
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up after {timeout_s:g} s waiting for {what}")
            time.sleep(interval_s)

    def check_services(self) -> None:
        for role, process in (("controller", self.controller), ("ps", self.ps)):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the {role} exited with code {process.returncode}")

    def wait_end(self, timeout_s: float) -> dict[str, Any]:
        """The final /status once the run has ended; TimeoutError past timeout_s."""
        final: dict[str, Any] = {}

        def ended() -> bool:
            nonlocal final
            final = self.status() or {}
            return final.get("run", {}).get("state") in END_STATES

        self.wait_until(ended, timeout_s, "the end of the run", interval_s=0.5)
        return final

    def wait_workers_exit(self, timeout_s: float) -> dict[int, int | None]:
        """Workers leave by themselves once told the run is over; their exit codes (None: still running)."""
        deadline = time.monotonic() + timeout_s
        for process in self.workers.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return {index: process.poll() for index, process in self.workers.items()}

    def close(self) -> None:
        children = [*self.workers.values(), self.ps, self.controller]
        for process in children:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in children:
            if process is None:
                continue
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def summary(final: dict[str, Any], runs_dir: Path) -> str:
    run, tasks = final["run"], final["tasks"]
    lines = [
        f"run {run['id']}: {run['state']} after {run['elapsed_s']} s ({run['reason']})"
        + (f"; links degraded: {run['degraded']}" if run["degraded"] else ""),
        f"tasks: {tasks['completed']} completed of {tasks['total']}, {tasks['requeues']} requeued",
        f"{'worker':<20} {'status':<9} {'tokens/s':>10} {'step s':>8} {'rtt ms':>8} {'util':>6}",
    ]
    for w in final["workers"]:
        lines.append(f"{w['worker_id']:<20} {w['status']:<9} {fmt(w['ewma_tokens_per_sec'], 0):>10} "
                     f"{fmt(w['ewma_step_time_s'], 3):>8} {fmt(w['rtt_ms'], 2):>8} {fmt(w['compute_utilization'], 2):>6}")
    row = runs_dir / run["id"] / "row.csv"
    lines.append(f"row: {row}" if row.exists() else f"no row was written under {runs_dir}")
    return "\n".join(lines)


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(args: argparse.Namespace) -> int:
    mode = "basic" if args.command == "demo-basic" else "ml"
    path = args.config or f"configs/{mode}_demo.yaml"
    try:
        overrides = parse_overrides(args.set)
        if args.workers is not None:
            overrides["workers.count"] = args.workers
        if args.data is not None:
            if mode != "ml":
                raise ConfigError("--data: only demo-ml trains on text")
            overrides["ml.data.path"] = str(Path(args.data).resolve())  # the children run elsewhere
        config = load_run_config(path, overrides)
        if config.mode != mode:
            raise ConfigError(f"{path}: mode: is {config.mode!r}, but demo-{mode} runs a {mode} config")
        if config.ml is not None and config.ml.data.path is not None:
            from .ml.data import load_corpus  # torch: only here

            load_corpus(config.ml.data.path, config.ml.data.seq_len)  # a bad file is refused before anything starts
    except ConfigError as exc:
        print(f"demo: refused: {exc}", file=sys.stderr)
        return 2
    timeout_s = args.timeout or config.timeout_s + 30

    def terminated(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    runs_dir = Path(args.runs_dir)
    with LocalRun(config, runs_dir) as run:
        print(f"demo: {config.name} ({mode}), {config.workers.count} workers, controller at {run.url}", flush=True)
        try:
            run.start()
            final = run.wait_end(timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            print(f"demo: {exc}", file=sys.stderr)
            if run.controller is not None and run.controller.poll() is None:
                run.stop_run(f"demo-{mode}: {exc}")
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted; stopping every process", file=sys.stderr)
            return 130
        run.wait_workers_exit(timeout_s=3 * config.controller.heartbeat_interval_s + 5)
    print(summary(final, runs_dir.resolve()), flush=True)
    return 0 if final["run"]["state"] == "finished" else 1
