"""Training text: the bundled corpus or a user's file, its train/validation split, per-worker
shards, and the batches drawn from them.

Tokens are bytes, so a text of n bytes holds n - seq_len windows of seq_len + 1 bytes
(seq_len inputs, each with its next byte as the target). Every piece handed to a sampler must
hold at least one such window; anything smaller is refused with the reason named.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import torch

from ..schema import ConfigError

BUNDLED_CORPUS = Path(__file__).parent / "corpus" / "kjv.txt.gz"  # provenance: corpus/README.md

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), both int64 [batch, seq_len]; y is x shifted by one byte


def load_corpus(path: str | None, seq_len: int) -> bytes:
    """The bytes of `path` (gzip-decompressed when it ends in .gz), or of the bundled corpus when
    `path` is None. Raises ConfigError naming `data.path` when the file is missing, unreadable,
    not UTF-8, or too short to split into training and validation windows of `seq_len`."""
    source = BUNDLED_CORPUS if path is None else Path(path)
    try:
        raw = source.read_bytes()
        text = gzip.decompress(raw) if source.suffix == ".gz" else raw
    except FileNotFoundError:
        raise ConfigError(f"data.path: {source}: no such file") from None
    except (OSError, EOFError) as exc:  # a directory, no permission, a damaged .gz
        raise ConfigError(f"data.path: {source}: cannot read: {exc}") from None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"data.path: {source}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    # Both halves of the split need one window; the smallest useful text is far larger.
    if len(text) < 2 * (seq_len + 1):
        raise ConfigError(
            f"data.path: {source}: {len(text)} bytes is too short for training and validation "
            f"windows of data.seq_len {seq_len} (need at least {2 * (seq_len + 1)}, and far more to learn)"
        )
    return text


def split(text: bytes, val_fraction: float, seq_len: int) -> tuple[bytes, bytes]:
    """(train, validation): the last `val_fraction` of the text is held out, so no byte of
    validation text is ever trained on. Raises ValueError if either part holds no window."""
    n_val = round(len(text) * val_fraction)
    train, val = text[: len(text) - n_val], text[len(text) - n_val :]
    _require_window(train, seq_len, "training split")
    _require_window(val, seq_len, f"validation split (data.val_fraction {val_fraction})")
    return train, val


def shard(train: bytes, index: int, count: int) -> bytes:
    """Worker `index` of `count`'s contiguous piece of the training text; the pieces do not
    overlap and together cover it exactly. Raises ValueError for an index outside [0, count)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside [0, {count})")
    return train[index * len(train) // count : (index + 1) * len(train) // count]


class BatchSampler:
    """Endless random windows of one text (a worker's shard), from its own seeded generator:
    the same (text, seed) gives the same batches in every process. Raises ValueError at
    construction if the text holds no window of `seq_len`."""

    def __init__(self, text: bytes, batch_size: int, seq_len: int, seed: int):
        _require_window(text, seq_len, "shard")
        self.data = torch.frombuffer(bytearray(text), dtype=torch.uint8)  # [n]
        self.batch_size, self.seq_len = batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        starts = torch.randint(0, len(self.data) - self.seq_len, (self.batch_size,), generator=self.generator)
        self.batches_drawn += 1
        return windows(self.data, starts, self.seq_len)

    @property
    def epoch(self) -> float:
        """Training bytes drawn so far, in passes over the text (telemetry's `epoch`)."""
        return self.batches_drawn * self.batch_size * self.seq_len / len(self.data)


def validation_batches(val: bytes, batch_size: int, seq_len: int, count: int) -> list[Batch]:
    """`count` fixed batches of windows spread evenly over the validation text. No randomness,
    so every process, and every evaluation of a run, measures the same bytes."""
    _require_window(val, seq_len, "validation split")
    data = torch.frombuffer(bytearray(val), dtype=torch.uint8)
    last_start = len(data) - seq_len - 1
    starts = torch.linspace(0, last_start, count * batch_size).round().long()  # [count * batch]
    return [windows(data, chunk, seq_len) for chunk in starts.split(batch_size)]


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> Batch:
    """Inputs and next-byte targets of the windows of `data` [n] beginning at `starts` [B]."""
    index = starts[:, None] + torch.arange(seq_len + 1)  # [B, T + 1]
    chunk = data[index].long()  # [B, T + 1]
    return chunk[:, :-1], chunk[:, 1:]  # [B, T] each


def _require_window(text: bytes, seq_len: int, what: str) -> None:
    if len(text) < seq_len + 1:
        raise ValueError(f"{what}: {len(text)} bytes hold no window of data.seq_len {seq_len} + 1 target byte")
