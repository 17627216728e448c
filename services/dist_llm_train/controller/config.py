"""The controller's section of a run config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..schema import Section

SchedulerName = Literal["fifo", "priority", "capability", "gale-shapley"]


class ControllerConfig(Section):
    scheduler: SchedulerName = Field("fifo", description="which scheduler assigns pending tasks to idle workers")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="how often each worker sends a heartbeat")
    heartbeat_timeout_s: float = Field(5.0, gt=0, description="silence after which a worker is marked dead and its task requeued")
    ewma_alpha: float = Field(0.3, gt=0, le=1, description="weight of the newest telemetry sample in each worker's EWMA")
    max_body_kb: int = Field(256, ge=1, description="request bodies larger than this are refused with 413")

    @model_validator(mode="after")
    def _timeout_covers_heartbeats(self) -> "ControllerConfig":
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}), or one late beat kills a worker"
            )
        return self
