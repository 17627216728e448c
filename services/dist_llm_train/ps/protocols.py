"""The PS's protocols (`ml.staleness.protocol`) as objects: which updates enter the window, and when it closes.

Each protocol holds the window of accepted updates (rows) its step will aggregate, built on the pure state in
ps/rounds.py and the rules in ps/staleness.py; the server passes the time in and acts on what it gets back:

    admit(session, s, round_s)   does an update of staleness s enter the window? (`Admission`: the bound it was
                                 judged by, or why it is refused)
    add(session, row, now)       an admitted update whose row the server built
    due(now)                     close the window now? then `close()` gives its rows and the stragglers
    deadline()                   when the open round must close whatever comes (sync), else None
    holds_acks                   True: an accepted update is answered when its window closes (sync), not at once

| protocol | window                                       | admits                        | closes                        |
|----------|----------------------------------------------|-------------------------------|-------------------------------|
| sync     | the round of the current version (barrier)   | s = 0, once per session       | all expected in, or deadline  |
| async    | `aggregation.window` accepted updates         | s <= `staleness.bound`         | when full                     |
| adaptive | as async                                     | s <= the worker's own bound    | when full                     |
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Generic, Hashable, TypeVar, get_args

from ..config import RunConfig
from ..ml.config import MLConfig, Protocol as ProtocolName
from .rounds import AdaptiveBounds, SyncBarrier, VersionRate, Window
from .staleness import accept

Row = TypeVar("Row")


@dataclass(frozen=True)
class Admission:
    bound: int | None  # the staleness bound the update was judged by; None: sync (the round)
    refused: str | None = None  # why not: "stale" (above the bound; sync: for an earlier round), "second_in_round"
    detail: str = ""  # what the refusal log says
    note: str | None = None  # adaptive: the worker's bound changed with this update (logged)


@dataclass(frozen=True)
class Closed(Generic[Row]):
    pairs: list[tuple[Hashable, Row]]  # (session, row) in arrival order
    stragglers: set[Hashable]  # sessions the round stopped waiting for (sync)
    took_s: float  # first update in -> close (sync; 0 for a window)


class StalenessProtocol(ABC, Generic[Row]):
    name: ClassVar[ProtocolName]
    window_field: ClassVar[str]  # the config field that sets the window size (named in the rule's error)
    holds_acks: ClassVar[bool] = False

    @staticmethod
    @abstractmethod
    def window_size(config: RunConfig) -> int:
        """The number of updates one step aggregates."""

    @abstractmethod
    def admit(self, session: Hashable, s: int, round_s: float | None) -> Admission:
        """Judge an update of staleness `s` that took `round_s` seconds from parameters sent to update received
        (None: unknown)."""

    @abstractmethod
    def add(self, session: Hashable, row: Row, now: float) -> None: ...

    @abstractmethod
    def due(self, now: float) -> bool: ...

    @abstractmethod
    def close(self, now: float, version: int) -> Closed[Row]:
        """The window's rows, and a new window for the updates computed from `version` on."""

    def deadline(self) -> float | None:
        return None

    def expect(self, session: Hashable) -> None:
        """The PS sent `session` the current version."""

    def forget(self, session: Hashable) -> None:
        """A session that left: no longer waited for, its measurements dropped."""

    def stepped(self, now: float, version: int) -> None:
        """The PS applied a step and is now at `version`."""

    def drop(self, version: int) -> list[tuple[Hashable, Row]]:
        """The run ended: the rows whose ACK is still owed (sync), and a fresh window of `version`."""
        return []


class Sync(StalenessProtocol[Row]):
    """A barrier per version (ps/rounds.py's SyncBarrier): the window is the round."""

    name = "sync"
    window_field = "workers.count"
    holds_acks = True

    def __init__(self, ml: MLConfig, min_window: int, version: int):
        self.barrier: SyncBarrier[Row] = SyncBarrier(ml.staleness.sync_timeout_s, min_window)
        self.barrier.open(version)

    @staticmethod
    def window_size(config: RunConfig) -> int:
        return config.workers.count

    def admit(self, session: Hashable, s: int, round_s: float | None) -> Admission:
        if s != 0 or session in self.barrier.arrived:  # late, or a second update for this round
            return Admission(None, "stale" if s else "second_in_round",
                             f"staleness {s}, round of version {self.barrier.version}")
        return Admission(None)

    def add(self, session: Hashable, row: Row, now: float) -> None:
        self.barrier.arrive(session, row, now)

    def due(self, now: float) -> bool:
        return self.barrier.due(now)

    def close(self, now: float, version: int) -> Closed[Row]:
        took = now - self.barrier.first_arrival
        pairs, stragglers = self.barrier.close()
        self.barrier.open(version)
        return Closed(pairs, stragglers, took)

    def deadline(self) -> float | None:
        return self.barrier.deadline()

    def expect(self, session: Hashable) -> None:
        self.barrier.expect(session)

    def forget(self, session: Hashable) -> None:
        self.barrier.forget(session)

    def drop(self, version: int) -> list[tuple[Hashable, Row]]:
        held = list(self.barrier.arrived.items())
        self.barrier.open(version)
        return held


class Async(StalenessProtocol[Row]):
    """Bounded staleness, one bound for every worker; a step per `aggregation.window` accepted updates."""

    name = "async"
    window_field = "ml.aggregation.window"

    def __init__(self, ml: MLConfig, min_window: int, version: int):
        self.window: Window[tuple[Hashable, Row]] = Window(ml.aggregation.window)
        self.full: list[tuple[Hashable, Row]] | None = None
        self.bound = ml.staleness.bound

    @staticmethod
    def window_size(config: RunConfig) -> int:
        return config.ml.aggregation.window

    def judge(self, session: Hashable, round_s: float | None) -> tuple[int, str | None]:
        """(the bound, a note when it changed)."""
        return self.bound, None

    def admit(self, session: Hashable, s: int, round_s: float | None) -> Admission:
        bound, note = self.judge(session, round_s)
        if not accept(s, bound):
            return Admission(bound, "stale", f"staleness {s} > bound {bound}", note)
        return Admission(bound, note=note)

    def add(self, session: Hashable, row: Row, now: float) -> None:
        self.full = self.window.add((session, row))

    def due(self, now: float) -> bool:
        return self.full is not None

    def close(self, now: float, version: int) -> Closed[Row]:
        pairs, self.full = self.full or [], None
        return Closed(pairs, set(), 0.0)


class Adaptive(Async[Row]):
    """As async, but each worker is judged by its own bound: `staleness.adaptive_bound` of the PS's version rate
    and that worker's measured round time (ps/rounds.py's AdaptiveBounds)."""

    name = "adaptive"

    def __init__(self, ml: MLConfig, min_window: int, version: int):
        super().__init__(ml, min_window, version)
        self.rate = VersionRate()
        self.bounds = AdaptiveBounds(ml.staleness.min_bound, ml.staleness.max_bound)

    def judge(self, session: Hashable, round_s: float | None) -> tuple[int, str | None]:
        rate = self.rate.rate()
        bound, changed = self.bounds.judge(session, round_s, rate)
        if not changed:
            return bound, None
        estimate = self.bounds.estimates.get(session)
        return bound, (f"staleness bound now {bound} (round {estimate.round_s if estimate else 0:.3f} s, deviation "
                       f"{estimate.dev_s if estimate else 0:.3f} s, {rate:.2f} versions/s)")

    def forget(self, session: Hashable) -> None:
        self.bounds.forget(session)

    def stepped(self, now: float, version: int) -> None:
        self.rate.record(now, version)


PROTOCOLS: dict[str, type[StalenessProtocol]] = {protocol.name: protocol for protocol in (Sync, Async, Adaptive)}
if list(PROTOCOLS) != list(get_args(ProtocolName)):
    raise ImportError(f"PROTOCOLS {list(PROTOCOLS)} do not match ml.staleness.protocol {list(get_args(ProtocolName))}")
