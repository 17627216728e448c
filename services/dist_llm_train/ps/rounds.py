"""When the PS steps and which updates it takes: the sync barrier, the async window, the adaptive bounds.

Pure state machines: the server passes the time in (`now`, seconds on any monotonic clock) and gets decisions
back, so a test can play a round by hand without sockets or sleeps. The protocol classes (ps/protocols.py) are
built on them.

Sync (`SyncBarrier`): round v aggregates the updates computed from version v. The workers expected in it
are those the PS sent version v to (`expect`), plus any that arrive. The round closes when every expected
worker has arrived, or `timeout_s` after its first arrival without the ones still missing (stragglers: their
late update then has staleness 1 and is refused with fresh parameters, which makes them expected in the
next round). Either way it closes only once it holds `min_n` updates, the smallest window for which the
aggregation rule's condition holds: with fewer the round waits, for late stragglers or new workers, rather
than aggregating with a rule that cannot hold. The timeout counts from the first arrival, not from the
round's opening, so workers still starting up (or a PS that just resumed) do not make everyone a straggler.

Async and adaptive (`Window`): accepted updates collect until `size` of them form one step.

Adaptive (`AdaptiveBounds`, `VersionRate`): each worker's bound is `staleness.adaptive_bound` of the PS's
version rate and that worker's round-time estimate (`staleness.RoundEstimate`). An update is judged by the
estimate from before its own round is folded in, so an update held back unusually long (a brownout, a
paused process) cannot raise its own bound; the very first round of a worker seeds its estimate and is
judged by it.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

from .staleness import RoundEstimate, adaptive_bound

Item = TypeVar("Item")


class SyncBarrier(Generic[Item]):
    def __init__(self, timeout_s: float, min_n: int):
        self.timeout_s, self.min_n = timeout_s, min_n
        self.version = 0
        self.expected: set[Hashable] = set()
        self.arrived: dict[Hashable, Item] = {}  # session -> its update, in arrival order
        self.first_arrival: float | None = None

    def open(self, version: int) -> None:
        """Start the round of `version`; nobody is expected until the PS sends that version to someone."""
        self.version = version
        self.expected = set()
        self.arrived = {}
        self.first_arrival = None

    def expect(self, session: Hashable) -> None:
        self.expected.add(session)

    def forget(self, session: Hashable) -> None:
        """A session that left (BYE, or its worker said HELLO again): the round no longer waits for it.
        An update it already delivered stays in the round."""
        self.expected.discard(session)

    def arrive(self, session: Hashable, item: Item, now: float) -> bool:
        """Take a session's update for this round; False if it already delivered one (the later one is refused)."""
        if session in self.arrived:
            return False
        self.arrived[session] = item
        self.expected.add(session)
        if self.first_arrival is None:
            self.first_arrival = now
        return True

    def deadline(self) -> float | None:
        """When the stragglers stop being waited for; None before the first arrival."""
        return None if self.first_arrival is None else self.first_arrival + self.timeout_s

    def waiting_for(self) -> set[Hashable]:
        return self.expected - set(self.arrived)

    def due(self, now: float) -> bool:
        """Close now? Everyone expected arrived, or the deadline passed; and at least min_n updates are in."""
        if len(self.arrived) < self.min_n:
            return False
        return not self.waiting_for() or now >= self.deadline()

    def close(self) -> tuple[list[tuple[Hashable, Item]], set[Hashable]]:
        """(the round's (session, update) pairs in arrival order, the stragglers dropped); opens nothing."""
        return list(self.arrived.items()), self.waiting_for()


class Window(Generic[Item]):
    """Accepted updates until `size` of them make one step."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[Item] = []

    def add(self, item: Item) -> list[Item] | None:
        """The full window (and start an empty one) when `item` completes it, else None."""
        self.items.append(item)
        if len(self.items) < self.size:
            return None
        full, self.items = self.items, []
        return full


class VersionRate:
    """Versions the PS applied per second over the last `horizon_s` seconds; 0.0 until two versions are
    that close (a PS that stalls for longer than the horizon starts from 0 again)."""

    def __init__(self, horizon_s: float = 10.0):
        self.horizon_s = horizon_s
        self.samples: deque[tuple[float, int]] = deque()

    def record(self, now: float, version: int) -> None:
        self.samples.append((now, version))
        while now - self.samples[0][0] > self.horizon_s:
            self.samples.popleft()

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0


class AdaptiveBounds:
    """Per-session staleness bounds from measured round times (module docstring)."""

    def __init__(self, min_bound: int, max_bound: int):
        self.min_bound, self.max_bound = min_bound, max_bound
        self.estimates: dict[Hashable, RoundEstimate] = {}
        self.bounds: dict[Hashable, int] = {}

    def judge(self, session: Hashable, round_s: float | None, rate: float) -> tuple[int, bool]:
        """(the bound this update is judged by, whether it differs from the session's previous bound).

        `round_s` is this update's round (PS sent the parameters -> PS received the update), None when unknown
        (then only the estimate so far counts; without one the bound is min_bound). The sample is folded into
        the estimate after the bound is taken."""
        estimate = self.estimates.get(session)
        if estimate is None and round_s is not None:
            estimate = RoundEstimate.first(round_s)
            self.estimates[session] = estimate
        elif round_s is not None:
            self.estimates[session] = estimate.update(round_s)
        if estimate is None:
            bound = self.min_bound
        else:
            bound = adaptive_bound(rate, estimate.round_s, estimate.dev_s, self.min_bound, self.max_bound)
        changed = self.bounds.get(session) != bound
        self.bounds[session] = bound
        return bound, changed

    def forget(self, session: Hashable) -> None:
        self.estimates.pop(session, None)
        self.bounds.pop(session, None)
