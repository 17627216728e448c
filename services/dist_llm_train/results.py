"""Run results on disk: one row and one provenance file per run, merged per mode.

Layout under the runs directory (the `runs/` bind mount):
    <run_id>/row.csv      header + the run's one row (COLUMNS)
    <run_id>/run.json     provenance: resolved config, preset, versions, image, row
    <run_id>/...          anything else the run recorded (ML curves, the link probe)
    runs_<mode>.csv       every row.csv of that mode, rebuilt by `merge_mode`

Writers replace files atomically (write to a temporary name, then rename), so a reader never
sees half a row, and `merge_mode` can run any number of times with the same result.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable

# The prototype's columns first (kept so old analyses still run), then what a run measures.
COLUMNS: tuple[str, ...] = (
    "config", "mode", "profile", "netem_profile", "netem_seed", "window", "repeat", "duration_s",
    "num_workers", "num_completed_tasks", "num_pending_tasks", "mean_ewma_tokens_per_sec",
    "mean_ewma_step_time_s",
    "status", "backend", "tcp_cc", "measured_rtt_ms", "measured_loss_pct", "measured_mbit",
    "emulation_late_p99_ms", "emulation_drops",
    "updates_accepted", "updates_rejected", "mean_staleness", "bytes_up", "bytes_down",
    "compute_utilization", "initial_val_loss", "final_val_loss", "final_train_loss", "time_to_target_s",
    "run_id", "config_hash", "scheduler", "protocol", "codec", "aggregation", "reason", "started_at",
)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def row_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """CSV text of rows in COLUMNS order; a key outside COLUMNS is a programming error."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"not a results column: {sorted(unknown)}")
        writer.writerow({k: format_value(row.get(k)) for k in COLUMNS})
    return out.getvalue().encode()


def write_run(runs_dir: Path, run_id: str, row: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write a run's row and provenance, then rebuild runs_<mode>.csv. Returns the run's folder."""
    run_dir = Path(runs_dir) / run_id
    atomic_write(run_dir / "row.csv", row_csv([row]))
    atomic_write(run_dir / "run.json", json.dumps({**provenance, "row": row}, indent=2, sort_keys=True).encode())
    merge_mode(Path(runs_dir), str(row["mode"]))
    return run_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def merge_mode(runs_dir: Path, mode: str) -> Path:
    """Rebuild runs_<mode>.csv from every <run_id>/row.csv of that mode, oldest first, one row per run."""
    target = runs_dir / f"runs_{mode}.csv"
    with open(runs_dir / ".merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {}
        for row_file in runs_dir.glob("*/row.csv"):
            for row in read_rows(row_file):
                if row.get("mode") == mode:
                    rows[row.get("run_id") or str(row_file.parent.name)] = row
        ordered = sorted(rows.values(), key=lambda r: (r.get("started_at", ""), r.get("run_id", "")))
        atomic_write(target, row_csv({k: v for k, v in r.items() if k in COLUMNS} for r in ordered))
    return target
