"""Request and response bodies of the control plane (docs/architecture.md has the route table).

Requests refuse unknown fields and non-finite numbers (422), so a typo in a client is loud.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RegisterIn(RequestBody):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="stable worker name (compose container name); a new registration "
                                  "under the same name retires the previous incarnation")
    index: int = Field(ge=0, description="compose container number - 1")
    capacity: float = Field(gt=0, description="declared capacity (1.0 = nominal)")
    memory_mb: int = Field(gt=0, description="declared memory, MiB")


class RegisterOut(BaseModel):
    worker_id: str
    run_id: str
    mode: str
    heartbeat_interval_s: float
    config: dict[str, Any]


class TelemetryIn(RequestBody):
    tokens_per_sec: float | None = Field(None, ge=0, description="tokens processed per second of compute")
    step_time_s: float | None = Field(None, ge=0, description="wall time of one step")
    epoch: int | None = Field(None, ge=0)
    batch: int | None = Field(None, ge=0)
    rtt_ms: float | None = Field(None, ge=0, description="round trip of the previous heartbeat")
    down_mbit: float | None = Field(None, ge=0, description="measured download rate of the last task input")
    compute_utilization: float | None = Field(None, ge=0, le=1, description="share of wall time spent computing")
    bytes_up: int | None = Field(None, ge=0, description="bytes sent so far (results, updates)")
    bytes_down: int | None = Field(None, ge=0, description="bytes received so far (inputs, parameters)")
    staleness: float | None = Field(None, ge=0, description="ML: staleness of the last update")


class HeartbeatIn(RequestBody):
    telemetry: TelemetryIn | None = None


class HeartbeatOut(BaseModel):
    run_state: str
    alive: bool
    stop: bool
    speed_factor: float = Field(1.0, description="the WAN preset's factor on this worker's compute speed")


class NextTaskIn(RequestBody):
    pass


class TaskOut(BaseModel):
    task_id: str
    lease: str
    kind: str
    tokens: int
    priority: int
    memory_mb: int
    input_kb: int
    output_kb: int
    shard: int | None = None
    num_shards: int | None = None


class NextTaskOut(BaseModel):
    task: TaskOut | None
    retry_after_s: float
    run_state: str
    speed_factor: float = Field(1.0, description="the WAN preset's factor on this worker's compute speed")


class CompleteOut(BaseModel):
    status: Literal["completed", "already_completed"]


class Probe(BaseModel):
    """The sidecar's fidelity probe; a figure it could not measure (every echo lost) is null."""
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    rtt_ms: float | None
    rtt_stdev_ms: float | None
    loss_pct: float | None
    mbit: float | None


class LinksIn(RequestBody):
    profile: str
    backend: Literal["netem", "userspace"]
    seed: int
    ready: bool
    healthy: bool
    problems: list[str]
    links: dict[str, dict[str, Any]]
    probe: Probe | None
    compute_speed: list[Annotated[float, Field(gt=0)]] = Field(
        [1.0], min_length=1, description="the preset's factor on worker i's compute speed, entry i mod len")
    preset: dict[str, Any] | None = Field(None, description="the preset as written, for the run's provenance")


CountKey = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]


class PsReportIn(RequestBody):
    version: int = Field(ge=0)
    updates_accepted: int = Field(ge=0)
    updates_rejected: int = Field(ge=0)
    updates_refused: dict[CountKey, Annotated[int, Field(ge=0)]] = Field(
        {}, max_length=32, description="the refused updates by reason (stale, second_in_round, norm)")
    wire_errors: dict[CountKey, Annotated[int, Field(ge=0)]] = Field(
        {}, max_length=32, description="messages the PS refused at its wire checks, by error code")
    mean_staleness: float = Field(ge=0)
    bytes_up: int = Field(ge=0)
    bytes_down: int = Field(ge=0)
    initial_val_loss: float | None
    final_val_loss: float | None
    final_train_loss: float | None
    time_to_target_s: float | None
    window: int = Field(ge=1)
    done: bool
    reason: str | None


class StopIn(RequestBody):
    reason: str = Field("stopped by request", max_length=500)


class Empty(BaseModel):
    pass
