"""The controller's state in SQLite: run meta, tasks, leases, workers, telemetry, reports.

Everything the controller must not lose lives here (STATE_DIR/controller.db), so a restarted
controller resumes the run where it stopped. The database is opened in WAL mode with
synchronous=NORMAL: a commit survives the controller process being killed (it is in the WAL
before the call returns); only a power cut may lose the last commits.

Every state change is one transaction: `transaction()` nests, so an operation that is a
transaction on its own (`mark_dead`, `complete`) can also be part of a larger one (a completion
that ends the run). Only the controller's event loop uses the connection; nothing here locks.

Heartbeat times are not stored: a restarted controller gives every live worker a fresh timeout
anyway (health.py), so writing them would cost a transaction per heartbeat for nothing.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .scheduling.base import TaskView, WorkerView
from .tasks import TaskSpec


class KeyInUse(ValueError):
    """A data key already registered by another live worker."""


class NameHeld(ValueError):
    """A live incarnation holds the name and the registration did not prove to be it."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),   -- one run per database
    run_id TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    config_json TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,                     -- waiting | running | finished | timeout | stopped | failed
    created_at REAL NOT NULL,                -- wall clock, seconds
    started_at REAL,                         -- when it entered 'running'
    ended_at REAL,
    reason TEXT,
    degraded_reason TEXT,                    -- set when the links were unhealthy during the run
    row_written INTEGER NOT NULL DEFAULT 0,
    bytes_served INTEGER NOT NULL DEFAULT 0, -- task inputs sent to workers
    bytes_received INTEGER NOT NULL DEFAULT 0 -- results accepted from workers
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    kind TEXT NOT NULL,                      -- synthetic | shard
    tokens INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    input_kb INTEGER NOT NULL,
    output_kb INTEGER NOT NULL,
    shard INTEGER,
    state TEXT NOT NULL,                     -- pending | assigned | completed
    worker_id TEXT,                          -- holder while assigned, completer once completed
    lease TEXT,                              -- current lease; the completing one once completed
    attempts INTEGER NOT NULL DEFAULT 0,     -- leases granted
    requeues INTEGER NOT NULL DEFAULT 0,     -- leases revoked
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, seq);
CREATE TABLE IF NOT EXISTS leases (
    lease TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    state TEXT NOT NULL,                     -- active | completed | revoked
    created_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,              -- <name>.<incarnation>
    name TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    capacity REAL NOT NULL,
    memory_mb INTEGER NOT NULL,
    status TEXT NOT NULL,                    -- alive | dead | replaced
    task_id TEXT,                            -- task held now (NULL = idle)
    registered_at REAL NOT NULL,
    idle_since REAL NOT NULL,
    ended_at REAL,
    UNIQUE (name, incarnation)
);
CREATE INDEX IF NOT EXISTS workers_by_status ON workers (status);
CREATE TABLE IF NOT EXISTS data_keys (       -- apart from workers: /status lists workers' columns
    worker_id TEXT PRIMARY KEY,
    data_key TEXT NOT NULL                   -- what the worker proves to the PS (dataplane.py)
);
CREATE TABLE IF NOT EXISTS worker_secrets (  -- apart from workers too: never shown
    worker_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL                -- SHA-256 (hex) of the secret its registration answered
);
CREATE TABLE IF NOT EXISTS telemetry (
    worker_id TEXT PRIMARY KEY,
    samples INTEGER NOT NULL,
    ewma_tokens_per_sec REAL,
    ewma_step_time_s REAL,
    rtt_ms REAL,                             -- EWMA of heartbeat round trips
    down_mbit REAL,                          -- EWMA of measured input download rates
    epoch INTEGER,
    batch INTEGER,
    compute_utilization REAL,
    bytes_up INTEGER,
    bytes_down INTEGER,
    staleness REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    kind TEXT PRIMARY KEY,                   -- links | ps
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""

TELEMETRY_COLUMNS = (
    "samples", "ewma_tokens_per_sec", "ewma_step_time_s", "rtt_ms", "down_mbit", "epoch", "batch",
    "compute_utilization", "bytes_up", "bytes_down", "staleness",
)
RUN_FIELDS = {"state", "started_at", "ended_at", "reason", "degraded_reason", "row_written"}


class StaleLease(Exception):
    """A lease that is not (or no longer) the task's current one: revoked, or someone else's."""


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # The connection is made here and used by the event loop's thread (and by tests).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._depth = 0
        self._views: dict[str, TaskView] = {}
        self._pending: set[str] = set()
        self._load_views()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit; nested calls join the outermost one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._load_views()  # the in-memory pending set may hold the rolled-back changes
            raise
        else:
            self.db.execute("COMMIT")
        finally:
            self._depth = 0

    # ---- the run ----------------------------------------------------------------------------

    def load_run(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM run WHERE id = 1").fetchone()
        return dict(row) if row else None

    def run_state(self) -> str:
        """The run's state alone (read on every heartbeat; the run row also holds the config)."""
        return self.db.execute("SELECT state FROM run WHERE id = 1").fetchone()[0]

    def create_run(self, run_id: str, digest: str, config: dict, state: str, tasks: list[TaskSpec],
                   now: float) -> None:
        """Forget whatever the database held and start a run with these tasks."""
        with self.transaction():
            for table in ("run", "tasks", "leases", "workers", "data_keys", "worker_secrets", "telemetry", "reports"):
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute(
                "INSERT INTO run (id, run_id, config_digest, config_json, mode, state, created_at, started_at)"
                " VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, digest, json.dumps(config, sort_keys=True), config["mode"], state, now,
                 now if state == "running" else None),
            )
            self.db.executemany(
                "INSERT INTO tasks (task_id, seq, kind, tokens, priority, memory_mb, input_kb, output_kb, shard, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                [(t.task_id, t.seq, t.kind, t.tokens, t.priority, t.memory_mb, t.input_kb, t.output_kb, t.shard)
                 for t in tasks],
            )
        self._load_views()

    def update_run(self, **fields: Any) -> None:
        unknown = set(fields) - RUN_FIELDS
        if unknown:
            raise KeyError(f"not a mutable run field: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction():
            self.db.execute(f"UPDATE run SET {assignments} WHERE id = 1", tuple(fields.values()))

    def add_bytes(self, served: int = 0, received: int = 0) -> None:
        with self.transaction():
            self.db.execute("UPDATE run SET bytes_served = bytes_served + ?, bytes_received = bytes_received + ?"
                            " WHERE id = 1", (served, received))

    # ---- workers ----------------------------------------------------------------------------

    def register_worker(self, name: str, index: int, capacity: float, memory_mb: int, now: float,
                        secret_hash: str, data_key: str | None = None, proves: Callable[[str], bool] = lambda _: False
                        ) -> tuple[str, list[tuple[str, str | None]]]:
        """A new incarnation of worker `name`, whose secret hashes to `secret_hash`. A live earlier incarnation
        is retired as 'replaced' (its process restarted, so it cannot be running its task any more) and its task
        requeued, but only when `proves(its secret hash)`: the caller showed that incarnation's secret; otherwise
        NameHeld, and nothing changes (once declared dead, the name is free). Returns (worker_id, [(retired
        worker_id, its requeued task id or None)]). KeyInUse (nothing changed) when `data_key` is another live
        worker's."""
        with self.transaction():
            if data_key is not None and self.db.execute(
                    "SELECT 1 FROM data_keys JOIN workers USING (worker_id) WHERE data_key = ? AND status = 'alive'"
                    " AND name != ?", (data_key, name)).fetchone():
                raise KeyInUse("data_key: registered by another live worker")
            live = self.db.execute(
                "SELECT worker_id, secret_hash FROM workers LEFT JOIN worker_secrets USING (worker_id)"
                " WHERE name = ? AND status = 'alive'", (name,)).fetchall()
            for old, old_hash in live:
                if old_hash is None or not proves(old_hash):
                    raise NameHeld(old)
            retired = [(old, self._retire(old, "replaced", now)) for old, _ in live]
            (last,) = self.db.execute(
                "SELECT COALESCE(MAX(incarnation), 0) FROM workers WHERE name = ?", (name,)).fetchone()
            worker_id = f"{name}.{last + 1}"
            self.db.execute(
                "INSERT INTO workers (worker_id, name, incarnation, idx, capacity, memory_mb, status,"
                " registered_at, idle_since) VALUES (?, ?, ?, ?, ?, ?, 'alive', ?, ?)",
                (worker_id, name, last + 1, index, capacity, memory_mb, now, now),
            )
            self.db.execute("INSERT INTO worker_secrets (worker_id, secret_hash) VALUES (?, ?)",
                            (worker_id, secret_hash))
            if data_key is not None:
                self.db.execute("INSERT INTO data_keys (worker_id, data_key) VALUES (?, ?)", (worker_id, data_key))
        return worker_id, retired

    def secret_hash(self, worker_id: str) -> str | None:
        """The hash of the secret `worker_id` registered with (None: unknown worker)."""
        row = self.db.execute("SELECT secret_hash FROM worker_secrets WHERE worker_id = ?", (worker_id,)).fetchone()
        return None if row is None else row[0]

    def live_secret_hashes(self, index: int) -> list[str]:
        """The secret hashes of the live workers at `index` (in a hivemind run, worker 0 reports as the PS)."""
        return [r[0] for r in self.db.execute(
            "SELECT secret_hash FROM workers JOIN worker_secrets USING (worker_id) WHERE status = 'alive' AND idx = ?",
            (index,))]

    def live_data_keys(self) -> dict[str, str]:
        """name -> data key of every live worker that registered one (what the PS admits)."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT name, data_key FROM workers JOIN data_keys USING (worker_id) WHERE status = 'alive'")}

    def worker(self, worker_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()

    def workers(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM workers LEFT JOIN telemetry USING (worker_id) ORDER BY idx, name, incarnation"
        ).fetchall()

    def alive_worker_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT worker_id FROM workers WHERE status = 'alive'")]

    def mark_dead(self, worker_id: str, now: float) -> tuple[bool, str | None]:
        """Declare a live worker dead and requeue its task, with its lease revoked, in one
        transaction. Returns (changed, requeued task id); a second call changes nothing."""
        with self.transaction():
            changed = self.db.execute("SELECT 1 FROM workers WHERE worker_id = ? AND status = 'alive'",
                                      (worker_id,)).fetchone() is not None
            return changed, self._retire(worker_id, "dead", now) if changed else None

    def _retire(self, worker_id: str, status: str, now: float) -> str | None:
        task_id = self.db.execute("SELECT task_id FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()[0]
        self.db.execute("UPDATE workers SET status = ?, task_id = NULL, ended_at = ? WHERE worker_id = ?",
                        (status, now, worker_id))
        if task_id is None:
            return None
        self.db.execute("UPDATE leases SET state = 'revoked', ended_at = ? WHERE task_id = ? AND state = 'active'",
                        (now, task_id))
        self.db.execute(
            "UPDATE tasks SET state = 'pending', worker_id = NULL, lease = NULL, requeues = requeues + 1"
            " WHERE task_id = ? AND state = 'assigned'", (task_id,))
        self._pending.add(task_id)
        return task_id

    # ---- telemetry --------------------------------------------------------------------------

    def telemetry(self, worker_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM telemetry WHERE worker_id = ?", (worker_id,)).fetchone()
        return {k: row[k] for k in TELEMETRY_COLUMNS} if row else {}

    def put_telemetry(self, worker_id: str, values: dict[str, Any], now: float) -> None:
        columns = ", ".join(TELEMETRY_COLUMNS)
        marks = ", ".join("?" for _ in TELEMETRY_COLUMNS)
        with self.transaction():
            self.db.execute(
                f"INSERT OR REPLACE INTO telemetry (worker_id, {columns}, updated_at) VALUES (?, {marks}, ?)",
                (worker_id, *(values.get(k) for k in TELEMETRY_COLUMNS), now))

    # ---- tasks ------------------------------------------------------------------------------

    def _load_views(self) -> None:
        # A task's attributes never change during a run, so its view is built once; which tasks
        # are pending is mirrored in memory too (assign and _retire keep it in step), so a
        # scheduling cycle does not read thousands of rows.
        rows = self.db.execute("SELECT * FROM tasks").fetchall()
        self._views = {r["task_id"]: TaskView(r["task_id"], r["seq"], r["tokens"], r["priority"], r["memory_mb"],
                                              r["input_kb"], r["output_kb"]) for r in rows}
        self._pending = {r["task_id"] for r in rows if r["state"] == "pending"}

    def pending_views(self) -> list[TaskView]:
        return sorted((self._views[t] for t in self._pending), key=lambda view: view.seq)

    def idle_worker_views(self) -> list[WorkerView]:
        return [WorkerView(*r) for r in self.db.execute(
            "SELECT w.worker_id, w.idx, w.capacity, w.memory_mb, w.idle_since,"
            " t.ewma_tokens_per_sec, t.rtt_ms, t.down_mbit"
            " FROM workers w LEFT JOIN telemetry t USING (worker_id)"
            " WHERE w.status = 'alive' AND w.task_id IS NULL ORDER BY w.idle_since, w.worker_id")]

    def task(self, task_id: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()

    def held_task(self, worker_id: str) -> sqlite3.Row | None:
        """The task this worker holds now, with its lease, or None."""
        return self.db.execute(
            "SELECT t.* FROM workers w JOIN tasks t ON t.task_id = w.task_id WHERE w.worker_id = ?",
            (worker_id,)).fetchone()

    def assign(self, pairs: dict[str, str], now: float) -> dict[str, str]:
        """Lease each task to its worker (worker_id -> task_id), in one transaction.
        Returns worker_id -> lease. Pairs must name pending tasks and idle live workers."""
        leases = {}
        with self.transaction():
            for worker_id, task_id in pairs.items():
                lease = secrets.token_hex(8)
                updated = self.db.execute(
                    "UPDATE tasks SET state = 'assigned', worker_id = ?, lease = ?, attempts = attempts + 1"
                    " WHERE task_id = ? AND state = 'pending'", (worker_id, lease, task_id)).rowcount
                held = self.db.execute(
                    "UPDATE workers SET task_id = ? WHERE worker_id = ? AND status = 'alive' AND task_id IS NULL",
                    (task_id, worker_id)).rowcount
                if not (updated and held):
                    raise ValueError(f"cannot lease {task_id} to {worker_id}: not a pending task and an idle worker")
                self._pending.discard(task_id)
                self.db.execute("INSERT INTO leases (lease, task_id, worker_id, state, created_at)"
                                " VALUES (?, ?, ?, 'active', ?)", (lease, task_id, worker_id, now))
                leases[worker_id] = lease
        return leases

    def check_lease(self, task_id: str, lease: str) -> sqlite3.Row:
        """The task if `lease` is its current active lease; StaleLease otherwise."""
        row = self.task(task_id)
        if row is None or row["state"] != "assigned" or row["lease"] != lease:
            raise StaleLease(task_id)
        return row

    def complete(self, task_id: str, worker_id: str, lease: str, received: int, now: float) -> str:
        """Complete a task under its current lease: 'completed', or 'already_completed' when
        that same lease completed it before (a retried request). StaleLease for anything else
        (a revoked lease, another worker's lease): nothing changes and nothing is counted."""
        with self.transaction():
            row = self.task(task_id)
            if row is not None and row["state"] == "completed" and row["lease"] == lease:
                return "already_completed"
            if row is None or row["state"] != "assigned" or row["lease"] != lease or row["worker_id"] != worker_id:
                raise StaleLease(task_id)
            self.db.execute("UPDATE tasks SET state = 'completed', completed_at = ? WHERE task_id = ?", (now, task_id))
            self.db.execute("UPDATE leases SET state = 'completed', ended_at = ? WHERE lease = ?", (now, lease))
            self.db.execute("UPDATE workers SET task_id = NULL, idle_since = ? WHERE worker_id = ?", (now, worker_id))
            self.add_bytes(received=received)
        return "completed"

    def unfinished(self) -> bool:
        """Whether any task is still pending or assigned."""
        return self.db.execute(
            "SELECT 1 FROM tasks WHERE state IN ('pending', 'assigned') LIMIT 1").fetchone() is not None

    def task_counts(self) -> dict[str, int]:
        counts = {"pending": 0, "assigned": 0, "completed": 0}
        counts.update({r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")})
        (counts["requeues"],) = self.db.execute("SELECT COALESCE(SUM(requeues), 0) FROM tasks").fetchone()
        return counts

    def worker_counts(self) -> dict[str, int]:
        counts = {"alive": 0, "dead": 0, "replaced": 0}
        counts.update({r[0]: r[1] for r in self.db.execute("SELECT status, COUNT(*) FROM workers GROUP BY status")})
        (counts["busy"],) = self.db.execute(
            "SELECT COUNT(*) FROM workers WHERE status = 'alive' AND task_id IS NOT NULL").fetchone()
        return counts

    # ---- reports from the sidecar and the PS -------------------------------------------------

    def save_report(self, kind: str, body: dict, now: float) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO reports (kind, body, received_at) VALUES (?, ?, ?)",
                            (kind, json.dumps(body, sort_keys=True), now))

    def report(self, kind: str) -> tuple[dict, float] | None:
        row = self.db.execute("SELECT body, received_at FROM reports WHERE kind = ?", (kind,)).fetchone()
        return (json.loads(row["body"]), row["received_at"]) if row else None
