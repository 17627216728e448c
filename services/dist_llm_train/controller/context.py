"""What every request handler and the failure detector share: one object per controller process."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from ..config import RunConfig
from ..settings import Settings
from .health import Liveness
from .metrics import Metrics
from .runstate import Run
from .scheduling.base import Scheduler
from .store import Store


@dataclass
class Controller:
    config: RunConfig
    settings: Settings
    store: Store
    run: Run
    scheduler: Scheduler
    clock: Callable[[], float]  # wall clock, seconds (time.time; tests pass their own)
    log: logging.Logger
    metrics: Metrics = field(default_factory=Metrics)
    liveness: Liveness = field(default_factory=Liveness)
    compute_speed: tuple[float, ...] = (1.0,)  # the WAN preset's factors, as the sidecar last reported them

    def speed_factor(self, index: int) -> float:
        """Factor on worker `index`'s compute speed from the preset (netem/straggler.yaml slows one)."""
        return self.compute_speed[index % len(self.compute_speed)]
