"""codec_decisions.csv: each worker's compression choice under `compression.policy: adaptive`, one row per PUSH.

The worker decides (ml/adaptive.py) and reports what it decided from in the PUSH itself (its measured link
Mbit/s and RTT, and the round's compute seconds); the PS writes the row on receipt, on the run clock of curve.csv.
One writer, one file, the same clock: no per-worker files to merge, and a row exists for every update that
reached the PS (an update lost on the way has no row, as it has no effect). A resumed PS appends.

| column     | what                                                                       |
|------------|----------------------------------------------------------------------------|
| t_s        | run time the PUSH arrived (s)                                              |
| worker     | worker name                                                                |
| link_mbit  | the worker's measured link rate (Mbit/s); empty before its first measurement |
| rtt_ms     | its measured RTT (ms); empty before the first                              |
| compute_s  | compute seconds of the round                                               |
| codec      | uplink codec of the update                                                 |
| ratio      | fraction of coordinates sent up: k / d for topk, 1 for the dense codecs    |
| bytes      | uplink payload bytes (codecs.nbytes; framing excluded)                     |
| down_codec | the downlink codec the worker asked for (the ACK's parameters)             |
| down_ratio | its ratio (topk), 1 otherwise                                              |
"""

from __future__ import annotations

import csv
from pathlib import Path

from .. import wire
from ..ml.codecs import make, nbytes
from .report import fmt

COLUMNS = ("t_s", "worker", "link_mbit", "rtt_ms", "compute_s", "codec", "ratio", "bytes", "down_codec", "down_ratio")
FILE = "codec_decisions.csv"


class DecisionLog:
    def __init__(self, run_dir: Path):
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / FILE
        fresh = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", newline="", buffering=1)
        self.writer = csv.writer(self.file, lineterminator="\n")
        if fresh:
            self.writer.writerow(COLUMNS)

    def record(self, t_s: float, worker: str, push: wire.Push) -> None:
        update = push.update
        ratio = make(update.codec).sent_ratio(update.arrays, update.numel)
        measured = (push.link_mbit or None, push.rtt_ms or None)  # 0: not measured yet
        self.writer.writerow([fmt(v) for v in (round(t_s, 3), worker, *measured, push.compute_s, update.codec, ratio,
                                               nbytes(update), push.down_codec, push.down_ratio)])

    def close(self) -> None:
        self.file.close()
