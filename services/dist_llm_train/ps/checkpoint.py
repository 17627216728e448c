"""PS checkpoints in our own format: a JSON header and raw tensor bytes, never pickle.

    bytes 0-7     magic b"DLTCKPT1"
    bytes 8-15    header length H, unsigned, big-endian
    H bytes       header, UTF-8 JSON: {"run_id", "version", "meta": {...}, "sha256": of the tensor bytes,
                  "tensors": [{"name", "dtype", "shape", "offset", "nbytes"}, ...]}  (offsets into the data)
    the rest      the tensors' bytes, native little-endian, one after the other

Files live in `<checkpoint_dir>/<run_id>/ckpt-<version, 12 digits>.dlt`, so a PS resumes only a checkpoint of
its own run. `save` writes a temporary file, fsyncs it and renames it over the final name, so a reader (or a
PS killed mid-write) sees a whole checkpoint or none; it keeps the newest `keep` files. `load` checks
everything before trusting it (magic, lengths, JSON, each tensor's dtype, shape and bounds, the checksum)
and raises CheckpointError naming the file; `newest` falls back to an older file when the newest is damaged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

MAGIC = b"DLTCKPT1"
LENGTH = struct.Struct(">Q")
MAX_HEADER_BYTES = 1 << 20
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "int64": torch.int64, "uint8": torch.uint8}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


@dataclass
class Checkpoint:
    run_id: str
    version: int
    tensors: dict[str, Tensor]  # 1-D or n-D, dtypes of DTYPES
    meta: dict[str, Any] = field(default_factory=dict)  # JSON: config, model args, counters


def file_name(version: int) -> str:
    return f"ckpt-{version:012d}.dlt"


def save(directory: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    """Write `ckpt` atomically into `directory` (created if missing); keep the newest `keep` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, offset, digest = [], 0, hashlib.sha256()
    blobs = []
    for name, tensor in ckpt.tensors.items():
        dtype = next((k for k, v in DTYPES.items() if v == tensor.dtype), None)
        if dtype is None:
            raise ValueError(f"checkpoint tensor {name}: dtype {tensor.dtype} not in {list(DTYPES)}")
        blob = memoryview(tensor.detach().contiguous().numpy()).cast("B")
        entries.append({"name": name, "dtype": dtype, "shape": list(tensor.shape), "offset": offset, "nbytes": blob.nbytes})
        digest.update(blob)
        blobs.append(blob)
        offset += blob.nbytes
    header = json.dumps({"run_id": ckpt.run_id, "version": ckpt.version, "meta": ckpt.meta, "tensors": entries,
                         "sha256": digest.hexdigest()}, allow_nan=False).encode()
    path = directory / file_name(ckpt.version)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + LENGTH.pack(len(header)) + header)
        for blob in blobs:
            fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for old in sorted(directory.glob("ckpt-*.dlt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> Checkpoint:
    """The checkpoint in `path`; CheckpointError naming the file and the first thing wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    if raw[: len(MAGIC)] != MAGIC or len(raw) < len(MAGIC) + LENGTH.size:
        raise CheckpointError(f"{path}: not a checkpoint (magic {raw[:8]!r})")
    (header_len,) = LENGTH.unpack_from(raw, len(MAGIC))
    start = len(MAGIC) + LENGTH.size
    if header_len > min(MAX_HEADER_BYTES, len(raw) - start):
        raise CheckpointError(f"{path}: header of {header_len} bytes in a file of {len(raw)}")
    try:
        header = json.loads(raw[start : start + header_len])
        run_id, version, meta, entries, checksum = (header[k] for k in ("run_id", "version", "meta", "tensors", "sha256"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: header is not valid: {exc!r}") from None
    if not (isinstance(run_id, str) and isinstance(version, int) and version >= 0 and isinstance(meta, dict)
            and isinstance(entries, list)):
        raise CheckpointError(f"{path}: header fields have the wrong types")
    data = memoryview(raw)[start + header_len :]
    if hashlib.sha256(data).hexdigest() != checksum:
        raise CheckpointError(f"{path}: tensor bytes do not match their checksum (damaged or truncated)")
    return Checkpoint(run_id, version, {e.get("name"): tensor_of(e, data, path) for e in entries}, meta)


def tensor_of(entry: Any, data: memoryview, path: Path) -> Tensor:
    try:
        name, dtype, shape, offset, nbytes = (entry[k] for k in ("name", "dtype", "shape", "offset", "nbytes"))
        torch_dtype = DTYPES[dtype]
        itemsize = torch.empty(0, dtype=torch_dtype).element_size()
        ok = (isinstance(name, str) and all(isinstance(n, int) and n >= 0 for n in [*shape, offset, nbytes])
              and nbytes == math.prod(shape) * itemsize and offset + nbytes <= len(data))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: tensor entry {entry!r} is not valid: {exc!r}") from None
    if not ok:
        raise CheckpointError(f"{path}: tensor entry {entry!r} does not fit the data ({len(data)} bytes)")
    array = np.frombuffer(data[offset : offset + nbytes], dtype=torch.empty(0, dtype=torch_dtype).numpy().dtype)
    return torch.from_numpy(array.copy()).reshape(shape)


def newest(directory: Path, run_id: str) -> tuple[Checkpoint | None, list[str]]:
    """The newest usable checkpoint of `run_id` in `directory` (None if there is none), and what was wrong
    with any newer file that had to be skipped."""
    problems = []
    for path in sorted((directory / run_id).glob("ckpt-*.dlt"), reverse=True):
        try:
            ckpt = load(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if ckpt.run_id != run_id:
            problems.append(f"{path}: belongs to run {ckpt.run_id!r}, not {run_id!r}")
            continue
        return ckpt, problems
    return None, problems
