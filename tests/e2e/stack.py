"""Drive a real compose stack from a test: up (through compose, or `make up` as users type it),
poll the controller, exec, down.

Tests run in a container that has the Docker socket and the repository mounted at its host path
(`make test-e2e`), or on a host with Docker; either way the relative bind mounts of compose.yaml
resolve on the daemon's side. Each stack gets its own project name, token file, runs folder and a
free controller port, so it never meets a user's stack (nor the user's .env).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dist_llm_train.netem import helpers

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = ("RUN_TOKEN", "SIDECAR_TOKEN", "PS_TOKEN", "OPERATOR_TOKEN")  # what `make up` writes to .env
END_STATES = {"finished", "timeout", "stopped", "failed"}


@dataclass
class Stack:
    project: str
    config: str = "configs/basic_ci.yaml"
    profile: str = "lan"
    workers: int = 4
    mode: str = "basic"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        home = REPO / ".e2e" / self.project
        self.runs_dir = home / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        (home / "checkpoints").mkdir(parents=True, exist_ok=True)
        # The stack's credentials (RUN_TOKEN and the role credentials), in a file of its own that compose
        # reads (ENV_FILE for make): written by `make up` itself, or by `up` below as make would.
        self.env_file = home / ".env"

    @property
    def env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}  # they would override the file
        return {
            **inherited,
            "COMPOSE_PROJECT_NAME": self.project,
            "ENV_FILE": str(self.env_file),
            "CONFIG": self.config,
            "PROFILE": self.profile,
            "WORKERS": str(self.workers),
            "RUNS_HOST_DIR": str(self.runs_dir),
            "CHECKPOINTS_HOST_DIR": str(self.runs_dir.parent / "checkpoints"),
            "CONTROLLER_PORT": "0",
            **self.extra_env,
        }

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "--env-file", str(self.env_file), "--project-directory", str(REPO),
               "-f", str(REPO / "compose.yaml")]
        if self.mode == "ml":
            cmd += ["--profile", "ml"]
        return subprocess.run(cmd + list(args), env=self.env, cwd=REPO, check=check,
                              capture_output=True, text=True, timeout=timeout)

    def up(self) -> None:
        """`docker compose up -d`: the stack without the Makefile's image build and checks."""
        if not self.env_file.exists():
            self.env_file.touch(mode=0o600)
            self.env_file.write_text("".join(f"{name}={secrets.token_hex(16)}\n" for name in CREDENTIALS))
        result = self.compose("up", "-d", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"compose up failed:\n{result.stdout}\n{result.stderr}\n{self.logs()}")

    def make(self, target: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """`make TARGET PROFILE=.. MODE=.. WORKERS=.. CONFIG=..`, as a user types it in the repository;
        the project, token file, runs folder and port come from `env`. With `check`, a failure raises."""
        result = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target, f"PROFILE={self.profile}",
                                 f"MODE={self.mode}", f"WORKERS={self.workers}", f"CONFIG={self.config}"],
                                env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"make {target} failed:\n{result.stdout}\n{result.stderr}\n{self.logs()}")
        return result

    def down(self) -> None:
        """As `make down` does it: the sidecar first (it removes its rules and its helpers), any helper a dead
        sidecar left, then the rest."""
        self.compose("stop", "--timeout", "30", "netem", check=False)
        helpers.sweep(self.project)
        self.compose("--profile", "ml", "down", "-v", "--remove-orphans", "--timeout", "30", check=False)

    def logs(self, service: str = "") -> str:
        result = self.compose("logs", "--no-color", *([service] if service else []), check=False)
        return result.stdout[-20000:]

    def controller_get(self, path: str) -> dict:
        code = ("import json,urllib.request as u;"
                f"print(u.urlopen('http://127.0.0.1:8000{path}', timeout=5).read().decode())")
        result = self.compose("exec", "-T", "controller", "python3", "-c", code, timeout=30)
        return json.loads(result.stdout)

    def status(self) -> dict:
        return self.controller_get("/status")

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except (subprocess.CalledProcessError, json.JSONDecodeError, subprocess.TimeoutExpired):
                pass
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last status {last}\n{self.logs()}")

    def wait_end(self, timeout: float = 180) -> dict:
        return self.wait_for(lambda s: s["run"]["state"] in END_STATES, timeout, "the end of the run")

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def helpers(self, target: str | None = None) -> list[str]:
        """The ids of the sidecar's helper containers in this project (of one target container, given its id)."""
        label = f"{helpers.HELPER_OF}={self.project}"
        if target is not None:
            full = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", target], capture_output=True, text=True)
            label = f"{helpers.HELPER_TARGET}={full.stdout.strip()}"
        found = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True,
                               timeout=60)
        return found.stdout.split()
