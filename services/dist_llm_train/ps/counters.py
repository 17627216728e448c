"""What the PS counts over a run (`Counters`), and its form in a checkpoint's meta (`to_meta` / `from_meta`).

The byte totals in a checkpoint are the run's so far (what earlier processes received and sent plus this one's
socket counts, which the server adds in `to_meta`); a resumed PS starts from them. Fields missing from an older
checkpoint (`refused`, `tokens`) read as empty."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    accepted: int = 0
    rejected: int = 0  # valid pushes refused, for any reason in `refused`
    staleness_sum: int = 0  # over accepted updates
    staleness: Counter = field(default_factory=Counter)  # every valid push
    errors: Counter = field(default_factory=Counter)  # by wire error code
    # by reason: stale (above the bound; sync: for an earlier round), second_in_round (sync), norm (above
    # ml.max_update_norm); each answered by an ACK, not accepted, with fresh parameters
    refused: Counter = field(default_factory=Counter)
    bytes_up: int = 0  # received before this process (a resumed run)
    bytes_down: int = 0
    tokens: int = 0  # training tokens behind the updates applied: the work budget's unit

    def to_meta(self, bytes_up: int, bytes_down: int) -> dict[str, Any]:
        """The checkpoint's `counters` (JSON), with the run's byte totals so far."""
        return {"accepted": self.accepted, "rejected": self.rejected, "staleness_sum": self.staleness_sum,
                "staleness": {str(k): v for k, v in self.staleness.items()}, "errors": dict(self.errors),
                "refused": dict(self.refused), "bytes_up": bytes_up, "bytes_down": bytes_down, "tokens": self.tokens}

    @staticmethod
    def from_meta(c: dict[str, Any]) -> Counters:
        """The counters `to_meta` wrote; KeyError, ValueError, TypeError or AttributeError for a damaged entry."""
        return Counters(c["accepted"], c["rejected"], c["staleness_sum"],
                        Counter({int(k): v for k, v in c["staleness"].items()}), Counter(c["errors"]),
                        Counter(c.get("refused", {})), c["bytes_up"], c["bytes_down"], c.get("tokens", 0))
