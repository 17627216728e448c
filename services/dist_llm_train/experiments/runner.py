"""`dist-llm-train run-experiments`: run every cell of a matrix as its own compose stack.

For each cell: write the resolved config to runs/.matrix/<key>.yaml, `docker compose up` with that
config and preset, wait in the controller's container until the run ends (past the config's
timeout_s + STOP_MARGIN_S, ask the controller to stop it), collect the row the controller wrote,
then `docker compose down -v` (the sidecar removes its rules, the controller's state goes) and move
on. The runner runs where the repository sits at its host path (`make experiments` mounts it so),
so the runs folder it reads is the one the stack's containers write.

Resume: runs/.matrix/done.json maps each cell key to its run and status; a restart skips the
cells that ended with a row of their own (any status but `failed`), and runs again the failed ones
and those whose run folder was deleted.

Failure: a cell whose stack never gets healthy, whose run fails or never ends, or that leaves no
row becomes a row with status `failed` and the reason (written through results.write_run, so the
merged CSVs stay consistent), its compose logs are kept in runs/.matrix/<key>.log, and the matrix
goes on. The stack is torn down in `finally`, also on SIGINT and SIGTERM.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from ..results import atomic_write, is_folder_name, read_rows, safe_run_id, write_run
from ..schema import ConfigError
from ..controller.health import GATE_TIMEOUT_S
from ..controller.runstate import END_STATES, VERSIONED, package_versions
from ..netem import helpers, tcp
from ..netem.preset import load_preset
from ..settings import ROLE_TOKENS, TCP_CC_CHOICES
from .matrix import Cell, expand, load_matrix, with_overrides

OK_STATUS = "finished"  # the row status of a run that ended as planned (controller/runstate.py)
FAILED_STATUS = "failed"
MATRIX_DIR = ".matrix"
DEFAULT_PROJECT = "dlt-exp"
# The controller ends a run itself timeout_s after its start (and fails one whose links are never
# ready after GATE_TIMEOUT_S); the margin only matters for a stuck controller.
STOP_MARGIN_S = 60.0
ROW_GRACE_S = 60.0  # after the end (or a stop request), how long the controller has to write the row
UP_TIMEOUT_S = 600.0  # compose up waits for the healthchecks (controller, sidecar, PS)
DOWN_TIMEOUT_S = 180.0
LOG_TAIL = 300  # lines of each service's log kept for a failed cell


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", default="experiments/matrix.yaml", help="the matrix (YAML)")
    parser.add_argument("--profiles", nargs="+", help="run these WAN presets instead of each study's")
    parser.add_argument("--configs", nargs="+", help="run these configs in the studies of their mode")
    parser.add_argument("--glob", dest="pattern", help="like --configs, the files this pattern matches")
    parser.add_argument("--repeats", type=int, help="repeats of every combination instead of each study's")
    parser.add_argument("--runs", default="runs", help="the runs folder, inside the repository")
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="COMPOSE_PROJECT_NAME of the stacks")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and the work planned for each, and exit")


def main(args: argparse.Namespace) -> int:
    root = Path.cwd()
    try:
        matrix = with_overrides(load_matrix(args.matrix), args.matrix, root, args.profiles, args.configs, args.pattern,
                                args.repeats)
        cells = expand(matrix, args.matrix, root, root / "netem")
    except ConfigError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    runs_dir = Path(args.runs).resolve()
    bound = sum(c.config.timeout_s + STOP_MARGIN_S for c in cells)
    print(f"{args.matrix}: {len(cells)} cells; at most {clock(bound)} if every run reached its timeout")
    if args.dry_run:
        for i, cell in enumerate(cells, 1):
            print(f"[{i}/{len(cells)}] {cell.label()}  key {cell.key}\n      {cell.planned_work()}")
        return 0
    problem = tcp_problem({c.profile for c in cells}, root / "netem")
    if problem is not None:
        print(f"refused: {problem}", file=sys.stderr)
        return 3
    runs_dir.mkdir(parents=True, exist_ok=True)
    run_as_owner_of(runs_dir)
    command = "dist-llm-train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with signals_as_interrupts():
        try:
            with sole_runner(runs_dir):
                failed = Runner(root, runs_dir, args.project, command).run_all(cells)
        except ConfigError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: the stack is down; run the same command again to resume", flush=True)
            return 130
    return 1 if failed else 0


def tcp_problem(profiles: set[str], netem_dir: Path) -> str | None:
    """Why a cell's containers could not use its preset's TCP congestion control on this host (TCP_CC, passed
    on to every stack, overrides the presets), before any cell starts; None when every one can."""
    override = os.environ.get("TCP_CC") or None
    if override not in (None, *TCP_CC_CHOICES):
        return f"TCP_CC: expected one of {', '.join(TCP_CC_CHOICES)}, got {override!r}"
    for profile in sorted(profiles):
        problem = tcp.preset_problem(load_preset(profile, netem_dir, override))
        if problem is not None:
            return problem
    return None


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ---- resume state -------------------------------------------------------------------------------

def done_path(runs_dir: Path) -> Path:
    return runs_dir / MATRIX_DIR / "done.json"


def read_done(runs_dir: Path) -> dict[str, dict[str, Any]]:
    """Cell key -> what its run gave; {} before the first cell. A corrupt file is refused, not reset."""
    path = done_path(runs_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); fix or delete it (rows are not affected)") from None


def is_done(entry: dict[str, Any] | None, runs_dir: Path) -> bool:
    return (entry is not None and entry.get("status") != FAILED_STATUS and is_folder_name(entry.get("run_id"))
            and (runs_dir / entry["run_id"] / "row.csv").is_file())


# ---- rows of failed cells -----------------------------------------------------------------------

def failure_row(cell: Cell, run_id: str, reason: str, started_at: str) -> dict[str, Any]:
    """The row of a cell that produced none: what the cell was, status `failed` and why."""
    config, ml = cell.config, cell.config.ml
    return {
        "config": config.name, "mode": config.mode, "profile": cell.profile, "netem_profile": cell.profile,
        "repeat": cell.repeat, "num_workers": cell.workers, "status": FAILED_STATUS, "reason": reason,
        "run_id": run_id, "config_hash": config.digest(), "scheduler": config.controller.scheduler,
        "protocol": ml.staleness.protocol if ml else None, "codec": ml.compression.label if ml else None,
        "aggregation": ml.aggregation.rule if ml else None, "started_at": started_at,
        "trainer": ml.trainer if ml else None,
    }


def record_failure(runs_dir: Path, cell: Cell, reason: str, started: datetime, run_id: str | None = None,
                   context: dict[str, Any] | None = None) -> str:
    """Write a failed cell's row and provenance; returns its run id (named like the controller's).
    `context` (the preset, image id, versions) joins the provenance, as a controller's run.json has it."""
    run_id = run_id or f"{started:%Y%m%dT%H%M%SZ}-{cell.config.name}-failed-{cell.key[:8]}"
    started_at = started.isoformat(timespec="seconds")
    provenance = {"config": cell.config.model_dump(mode="json"), "profile": cell.profile, "cell": cell_summary(cell),
                  "failure": reason, "log": f"{MATRIX_DIR}/{cell.key}.log", **(context or {})}
    write_run(runs_dir, run_id, failure_row(cell, run_id, reason, started_at), provenance)
    return run_id


def cell_summary(cell: Cell) -> dict[str, Any]:
    return {"key": cell.key, "study": cell.study, "config": cell.config_path, "profile": cell.profile,
            "repeat": cell.repeat, "workers": cell.workers, "seed": cell.config.seed, "sweep": dict(cell.sweep)}


# ---- the controller side ------------------------------------------------------------------------

def watch_run(deadline_s: float, grace_s: float, url: str = "http://127.0.0.1:8000") -> None:
    """Run inside the controller's container: poll /status until the run has ended and its row is
    written; `deadline_s` after the run started (the wait for the links does not count: the
    controller bounds it itself) ask the controller to stop the run (as the operator: the
    controller's container holds OPERATOR_TOKEN); give up `grace_s` after the end
    or after the stop. Prints one JSON line with the last `run` status seen (null if the controller
    never answered), whether the runner stopped it, and the last error."""
    import urllib.request

    start, stopped, ended_at, run, error = time.monotonic(), False, None, None, None
    while True:
        try:
            with urllib.request.urlopen(f"{url}/status", timeout=5) as answer:
                run, error = json.load(answer)["run"], None
        except (OSError, ValueError, KeyError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None and run is not None and run.get("state") == "waiting":
            start = time.monotonic()  # the clock runs from the start of the run (or of silence)
        elapsed = time.monotonic() - start
        if run is not None and run.get("state") in END_STATES:
            ended_at = elapsed if ended_at is None else ended_at
            if run.get("row_written") or elapsed - ended_at > grace_s:
                break
        elif elapsed > deadline_s and not stopped:
            body = json.dumps({"reason": f"experiment runner: no end after {deadline_s:.0f} s"}).encode()
            request = urllib.request.Request(f"{url}/run/stop", data=body, method="POST", headers={
                "Authorization": f"Bearer {os.environ['RUN_TOKEN']}", "X-Role-Token": os.environ["OPERATOR_TOKEN"],
                "Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=10).close()
            except OSError as exc:
                error = f"stop request failed: {exc}"
            stopped = True
        if elapsed > deadline_s + grace_s:
            break
        time.sleep(1.0)
    print(json.dumps({"run": run, "stopped": stopped, "error": error}), flush=True)


# ---- the runner ---------------------------------------------------------------------------------

class CellFailed(Exception):
    """A cell that gave no row of its own; the message is the row's reason."""

    def __init__(self, reason: str, run_id: str | None = None):
        super().__init__(reason)
        self.run_id = run_id


def read_watch(stdout: str, stderr: str) -> tuple[dict[str, Any], str | None, str | None]:
    """What watch_run printed last: (the whole line, the run id, the run state). CellFailed if it
    printed nothing readable, or a run id that is not one: the id becomes a folder name under the
    runs folder, so the controller's answer must not choose the path."""
    try:
        seen = json.loads(stdout.strip().splitlines()[-1])
        run = seen["run"] or {}
        run_id, state = run.get("id"), run.get("state")
    except (IndexError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise CellFailed(f"could not watch the run: {last_line(stderr)}") from None
    try:
        return seen, None if run_id is None else safe_run_id(run_id), state
    except ValueError as exc:
        raise CellFailed(f"the controller answered a bad run id: {exc}") from None


class Runner:
    def __init__(self, root: Path, runs_dir: Path, project: str, command: str):
        self.root, self.runs_dir, self.project, self.command = root, runs_dir, project, command
        self.matrix_dir = runs_dir / MATRIX_DIR
        self.matrix_dir.mkdir(parents=True, exist_ok=True)
        self.image_id = image_id(os.environ.get("IMAGE", "dist-llm-train:dev"))

    def run_all(self, cells: list[Cell]) -> int:
        """Run every cell not done yet; returns how many failed."""
        done = read_done(self.runs_dir)
        todo = {c.key for c in cells if not is_done(done.get(c.key), self.runs_dir)}
        print(f"{len(cells) - len(todo)} cells already done, {len(todo)} to run", flush=True)
        start, ran, failed = time.monotonic(), 0, 0
        for i, cell in enumerate(cells, 1):
            prefix = f"[{i}/{len(cells)}] {cell.label()}"
            if cell.key not in todo:
                print(f"{prefix}  done before: {done[cell.key]['status']} ({done[cell.key]['run_id']})", flush=True)
                continue
            elapsed = time.monotonic() - start
            eta = clock(elapsed / ran * len(todo)) if ran else "?"
            print(f"{prefix}  elapsed {clock(elapsed)}  ETA {eta}", flush=True)
            began = time.monotonic()
            entry = self.run_cell(cell)
            todo.discard(cell.key)
            ran += 1
            failed += entry["status"] == FAILED_STATUS
            done[cell.key] = entry
            atomic_write(done_path(self.runs_dir), json.dumps(done, indent=2, sort_keys=True).encode())
            why = f" ({entry['reason']})" if entry.get("reason") else ""
            print(f"[{i}/{len(cells)}] -> {entry['status']}{why} run {entry['run_id']} in "
                  f"{clock(time.monotonic() - began)}", flush=True)
        print(f"matrix done in {clock(time.monotonic() - start)}: {ran} ran, {failed} failed, "
              f"rows in {self.runs_dir}/runs_<mode>.csv; `make report` builds tables and plots", flush=True)
        return failed

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        started = datetime.now(timezone.utc)
        env = self.cell_env(cell)
        try:
            run_id, status, reason = self.run_stack(cell, env)
        except Exception as exc:  # noqa: BLE001 - any failure of one cell becomes its row; the matrix goes on
            reason = str(exc) if isinstance(exc, CellFailed) else f"runner error: {type(exc).__name__}: {exc}"
            self.keep_logs(cell, env)
            run_id = record_failure(self.runs_dir, cell, reason, started, getattr(exc, "run_id", None),
                                    self.provenance(cell))
            status = FAILED_STATUS
        finally:
            self.tear_down(cell, env)
        return {**cell_summary(cell), "run_id": run_id, "status": status, "reason": reason,
                "command": self.command, "started_at": started.isoformat(timespec="seconds")}

    def run_stack(self, cell: Cell, env: dict[str, str]) -> tuple[str, str, str]:
        """Up, wait for the end, read the row. Returns (run id, status, reason) or raises CellFailed."""
        if cell.mode == "ml" and cell.config.ml.trainer == "hivemind":
            env["TRAINER_IMAGE"] = self.hivemind_image()
        atomic_write(self.matrix_dir / f"{cell.key}.yaml",
                     yaml.safe_dump(cell.config.model_dump(mode="json"), sort_keys=False).encode())
        self.tear_down(cell, env)  # a stack an interrupted runner left would resume its old run
        if cell.mode == "ml":  # a fresh folder (tear_down emptied it): the PS resumes from any checkpoint it finds
            self.checkpoints(cell).mkdir(parents=True)
        up = self.compose(cell, env, "up", "-d", "--remove-orphans", timeout=UP_TIMEOUT_S)
        if up.returncode != 0:
            raise CellFailed(f"stack never healthy: {last_line(up.stderr)}")
        deadline = cell.config.timeout_s + STOP_MARGIN_S
        code = f"from dist_llm_train.experiments.runner import watch_run; watch_run({deadline}, {ROW_GRACE_S})"
        watch = self.compose(cell, env, "exec", "-T", "controller", "python3", "-c", code,
                             timeout=GATE_TIMEOUT_S + deadline + ROW_GRACE_S + 60)
        seen, run_id, state = read_watch(watch.stdout, watch.stderr)
        if state not in END_STATES:
            raise CellFailed(f"run did not end within timeout_s + {STOP_MARGIN_S + ROW_GRACE_S:.0f} s "
                             f"(last state {state}; {seen['error'] or 'controller answering'})", run_id)
        row_file = self.runs_dir / run_id / "row.csv"
        if not row_file.is_file():
            raise CellFailed(f"run {run_id} ended as {state} but wrote no row within {ROW_GRACE_S:.0f} s", run_id)
        row = read_rows(row_file)[0]
        return run_id, row["status"], row.get("reason", "")

    def provenance(self, cell: Cell) -> dict[str, Any]:
        """What a failed cell's run.json carries besides its config: the preset, image and versions."""
        return {"preset": load_preset(cell.profile, self.root / "netem").as_dict(), "image_id": self.image_id,
                "versions": {"python": sys.version.split()[0], **package_versions(VERSIONED)}}

    def cell_env(self, cell: Cell) -> dict[str, str]:
        env = {**os.environ, "COMPOSE_PROJECT_NAME": self.project, "RUN_TOKEN": secrets.token_hex(16),
               **{name: secrets.token_hex(16) for name in ROLE_TOKENS.values()},
               "CONFIG": f"/runs/{MATRIX_DIR}/{cell.key}.yaml", "PROFILE": cell.profile,
               "WORKERS": str(cell.workers), "REPEAT": str(cell.repeat), "RUNS_HOST_DIR": str(self.runs_dir),
               "CONTROLLER_PORT": "0", "IMAGE_ID": self.image_id}
        if cell.mode == "ml":
            env["CHECKPOINTS_HOST_DIR"] = str(self.checkpoints(cell))
        return env

    def hivemind_image(self) -> str:
        """The image of a hivemind cell's PS and workers; CellFailed when it is not built (compose would build
        the main Dockerfile under its name instead)."""
        image = os.environ.get("HIVEMIND_IMAGE", "dist-llm-train-hivemind:dev")
        if not image_id(image):
            raise CellFailed(f"the hivemind image {image} is not built: `make image-hivemind` (make experiments "
                             "builds it when the matrix names hivemind)")
        return image

    def checkpoints(self, cell: Cell) -> Path:
        return self.matrix_dir / "checkpoints" / cell.key

    def compose(self, cell: Cell, env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "--ansi", "never", "--project-directory", str(self.root),
                   "-f", str(self.root / "compose.yaml")]
        command += ["--profile", "ml"] if cell.mode == "ml" or args[0] == "down" else []
        try:
            return subprocess.run(command + list(args), env=env, cwd=self.root, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CellFailed(f"docker compose {args[0]} took longer than {timeout:.0f} s") from None

    def keep_logs(self, cell: Cell, env: dict[str, str]) -> None:
        try:
            logs = self.compose(cell, env, "logs", "--no-color", "--tail", str(LOG_TAIL), timeout=60)
            atomic_write(self.matrix_dir / f"{cell.key}.log", (logs.stdout + logs.stderr).encode())
        except CellFailed as exc:
            print(f"  could not keep the logs: {exc}", flush=True)

    def tear_down(self, cell: Cell, env: dict[str, str]) -> None:
        """`down -v`, not interruptible: a second Ctrl-C must not leave rules or containers behind."""
        with signals_ignored():
            try:
                self.compose(cell, env, "stop", "--timeout", "30", "netem", timeout=DOWN_TIMEOUT_S)
                if helpers.sweep(self.project):  # the sidecar removes its helpers as it stops, unless it died
                    print("  removed helper containers a dead sidecar left", flush=True)
                down = self.compose(cell, env, "down", "-v", "--remove-orphans", "--timeout", "30",
                                    timeout=DOWN_TIMEOUT_S)
                if down.returncode != 0:
                    print(f"  compose down failed: {last_line(down.stderr)}", flush=True)
            except CellFailed as exc:
                print(f"  {exc}; remove the project {self.project} by hand", flush=True)
            shutil.rmtree(self.checkpoints(cell), ignore_errors=True)


def image_id(image: str) -> str:
    """The id of the image the stacks run (recorded in each run's provenance); '' if unknown."""
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else ""


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# ---- process plumbing ---------------------------------------------------------------------------

def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM (docker stop, CI cancel) unwinds like Ctrl-C, through every `finally`."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def sole_runner(runs_dir: Path) -> Iterator[None]:
    """One runner per runs folder at a time: two would overwrite each other's done.json."""
    path = runs_dir / MATRIX_DIR / "runner.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{runs_dir}: another experiment runner is using this runs folder") from None
        yield


@contextmanager
def signals_ignored() -> Iterator[None]:
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_as_owner_of(runs_dir: Path, socket: Path = Path("/var/run/docker.sock")) -> None:
    """As root (the driver container), become the owner of the runs folder, keeping the Docker
    socket's group: what the runner writes there must stay writable by the user and by the stack's
    containers, which run as that user (a root-owned merge lock would lock the controller out)."""
    owner = runs_dir.stat()
    if os.getuid() != 0 or owner.st_uid == 0:
        return
    os.setgroups([socket.stat().st_gid] if socket.exists() else [])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)
