"""Task schedulers, one module each, registered under the names the config uses."""

from __future__ import annotations

from typing import get_args

from ..config import SchedulerName
from .base import Scheduler
from .capability import CapabilityScheduler
from .fifo import FifoScheduler
from .gale_shapley import GaleShapleyScheduler
from .priority import PriorityScheduler


def check_registry(registry: dict[str, type], names: tuple[str, ...]) -> None:
    """Raise RuntimeError unless the keys of `registry` are exactly `names`."""
    missing, extra = set(names) - set(registry), set(registry) - set(names)
    if missing or extra:
        raise RuntimeError(f"scheduler registry out of step with SchedulerName: "
                           f"missing {sorted(missing)}, unknown {sorted(extra)}")


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (FifoScheduler, PriorityScheduler, CapabilityScheduler, GaleShapleyScheduler)
}
check_registry(SCHEDULERS, get_args(SchedulerName))
