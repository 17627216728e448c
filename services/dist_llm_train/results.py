"""Run results on disk: one row and one provenance file per run, merged per mode.

Layout under the runs directory (the `runs/` bind mount):
    <run_id>/row.csv      header + the run's one row (COLUMNS)
    <run_id>/run.json     provenance: resolved config, preset, versions, image, row
    <run_id>/...          anything else the run recorded (ML curves, the link probe)
    runs_<mode>.csv       every row.csv of that mode, rebuilt by `merge_mode`

Writers replace files atomically (write to a temporary name, then rename), so a reader never
sees half a row, and `merge_mode` can run any number of times with the same result.

Safety: a run id joins the runs folder only when it is one (`safe_run_id`), whoever sent it; a
text cell a spreadsheet would evaluate as a formula is written with a leading apostrophe, which
spreadsheets show as text and `read_rows` removes (`guard_cell`, `unguard_cell`).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
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
    "iface_bytes_up", "iface_bytes_down",
    "compute_utilization", "initial_val_loss", "final_val_loss", "final_train_loss", "time_to_target_s",
    "run_id", "config_hash", "scheduler", "trainer", "protocol", "codec", "aggregation", "reason", "started_at",
    # equal work and repeats (ML): the seed of the repeat, the target and the work budget, what was trained
    # and the bytes through the PS (up + down) when the target was reached
    "seed", "target_val_loss", "max_tokens", "tokens_trained", "bytes_to_target",
)


# One folder name under the runs folder: letters, digits, '.', '_', '-' (no '/'), and not dots only
# ('.' and '..' name folders already). A run config's name is part of every run id, so it is one
# too, at most NAME_LENGTH characters so that run ids stay short enough for any file system.
FOLDER = re.compile(r"[A-Za-z0-9._-]{1,128}")
NAME_LENGTH = 64
# A run id: <UTC stamp>-<config name>-<hex> (controller/runstate.py), or
# <stamp>-<name>-failed-<cell key> (experiments/runner.py) for a cell that gave no row.
RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,80}-[0-9a-f]{1,32}")

# OWASP's CSV-injection guidance: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"  # shown by spreadsheets as "this cell is text" and hidden
# What format_value writes for a number: -0.5 or 1e-05 are values, not formulas, and stay as they are.
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*([eE][+-]?[0-9]+)?|inf|nan)")


def is_folder_name(value: Any) -> bool:
    """True for a string that names one folder (FOLDER) and so stays inside the folder it is joined to."""
    return isinstance(value, str) and FOLDER.fullmatch(value) is not None and value.strip(".") != ""


def check_name(name: str) -> str:
    """`name` if a run can be named after it; ValueError saying what a name may hold."""
    if len(name) > NAME_LENGTH or not is_folder_name(name):
        raise ValueError(f"{name!r} cannot name files: use 1 to {NAME_LENGTH} letters, digits, '.', '_' or '-', "
                         "not only dots")
    return name


def safe_run_id(value: Any) -> str:
    """`value` if it is a run id (RUN_ID), safe to join to the runs folder; ValueError otherwise.
    For every run id that crossed the network: a controller's answer must not choose the path."""
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise ValueError(f"{str(value)[:100]!r} is not a run id (<stamp>-<config name>-<hex>)")
    return value


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


def guard_cell(text: str) -> str:
    """The cell as written: text that a spreadsheet would evaluate (FORMULA_START, a number
    apart) or that starts with the mark itself gets TEXT_MARK in front, so reading is exact."""
    if text.startswith(TEXT_MARK) or (text.startswith(FORMULA_START) and not NUMBER.fullmatch(text)):
        return TEXT_MARK + text
    return text


def unguard_cell(text: Any) -> Any:
    """The cell as it was before guard_cell."""
    return text[1:] if isinstance(text, str) and text.startswith(TEXT_MARK) else text


def csv_line(cells: Iterable[str]) -> str:
    """One CSV line ending in LF. The csv module quotes a cell that holds a character of its line
    terminator: written with CRLF, a cell with a carriage return or a line feed is quoted (with LF
    alone, a bare CR in a text cell split its row in two for every reader); the CRLF becomes LF."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()[:-2] + "\n"


def row_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """CSV text of rows in COLUMNS order; a key outside COLUMNS is a programming error."""
    lines = [csv_line(COLUMNS)]
    for row in rows:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"not a results column: {sorted(unknown)}")
        lines.append(csv_line(guard_cell(format_value(row.get(k))) for k in COLUMNS))
    return "".join(lines).encode()


def write_run(runs_dir: Path, run_id: str, row: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write a run's row and provenance, then rebuild runs_<mode>.csv. Returns the run's folder."""
    run_dir = Path(runs_dir) / run_id
    atomic_write(run_dir / "row.csv", row_csv([row]))
    atomic_write(run_dir / "run.json", json.dumps({**provenance, "row": row}, indent=2, sort_keys=True).encode())
    merge_mode(Path(runs_dir), str(row["mode"]))
    return run_dir


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, each cell as it was before guard_cell."""
    with open(path, newline="") as fh:
        return [{k: unguard_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


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
