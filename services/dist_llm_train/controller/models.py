"""Request and response bodies of the control plane (docs/architecture.md has the route table).

Requests refuse unknown fields and non-finite numbers (422), so a typo in a client is loud, and
numbers out of their bounds (422 naming the field), so no figure overflows the store or the sums.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import MAX_SEED
from ..dataplane import KEY_PATTERN
from ..worker.config import MAX_COMPUTE_SPEED, MIN_COMPUTE_SPEED

# Counts, sizes, indices and versions: SQLite stores integers as signed 64 bits (2**63 was a 500),
# and below 2**53 a count is exact as a JSON number in every client.
MAX_COUNT = 2**53 - 1
# Rates and durations (tokens/s, Mbit/s, ms, s, capacity): 1e12 is far past anything a worker
# measures, and sums over every worker (the row's means) and products of two (the schedulers'
# cost model) stay finite; near float's 1.8e308 they became inf in the row.
MAX_FIGURE = 1e12
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Figure = Annotated[float, Field(ge=0, le=MAX_FIGURE)]


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RegisterIn(RequestBody):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                      description="stable worker name (compose container name); a new registration "
                                  "under the same name retires the live previous incarnation if it proves to be "
                                  "it (X-Worker-Secret), else waits for it to be declared dead (409)")
    index: Count = Field(description="compose container number - 1")
    capacity: float = Field(gt=0, le=MAX_FIGURE, description="declared capacity (1.0 = nominal)")
    memory_mb: int = Field(gt=0, le=MAX_COUNT, description="declared memory, MiB")
    data_key: str | None = Field(None, pattern=KEY_PATTERN,
                                 description="the key this worker proves to the PS (Z85): its CURVE public key, "
                                             "or its PLAIN password (dataplane.py); none: no data plane")


class PsKey(RequestBody):
    mode: Literal["curve", "plain"] = Field(description="ml.data_plane_auth of the run")
    public_key: str | None = Field(pattern=KEY_PATTERN, description="the PS's CURVE public key (Z85); null for plain")


class RegisterOut(BaseModel):
    worker_id: str
    run_id: str
    mode: str
    heartbeat_interval_s: float
    config: dict[str, Any]
    ps_key: PsKey | None = None  # null until the PS announced its key (GET /ps/key asks again)
    secret: str  # this incarnation's own: X-Worker-Secret on every worker route (the controller keeps its hash)


class PsWorkersOut(BaseModel):
    keys: dict[str, str]  # worker name -> the data key it registered, for every live worker


class TelemetryIn(RequestBody):
    tokens_per_sec: Figure | None = Field(None, description="tokens processed per second of compute")
    step_time_s: Figure | None = Field(None, description="wall time of one step")
    epoch: Count | None = None
    batch: Count | None = None
    rtt_ms: Figure | None = Field(None, description="round trip of the previous heartbeat")
    down_mbit: Figure | None = Field(None, description="measured download rate of the last task input")
    compute_utilization: float | None = Field(None, ge=0, le=1, description="share of wall time spent computing")
    bytes_up: Count | None = Field(None, description="bytes sent so far (results, updates)")
    bytes_down: Count | None = Field(None, description="bytes received so far (inputs, parameters)")
    staleness: float | None = Field(None, ge=0, le=MAX_COUNT, description="ML: staleness of the last update")


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
    rtt_ms: Figure | None
    rtt_stdev_ms: Figure | None
    loss_pct: float | None = Field(ge=0, le=100)
    mbit: Figure | None


class Emulation(BaseModel):
    """How faithfully the userspace delayers kept the preset's delays (netem/lateness.py `Tally.summary`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # extra: the per-container figures, kept as sent
    late_p99_ms: float | None = Field(ge=0)
    packets: int = Field(ge=0, lt=2**53)
    late_over_tolerance: int = Field(ge=0, lt=2**53)
    drops: int = Field(ge=0, lt=2**53)
    within_tolerance: bool
    problems: list[Annotated[str, Field(max_length=500)]] = Field(max_length=256)


class InterfaceCounts(BaseModel):
    """The sidecar's interface counters (netem/counters.py `InterfaceTally.summary`): per role and per container,
    rx/tx bytes and packets since the run started."""

    model_config = ConfigDict(extra="forbid")
    interface: str = Field(max_length=16)
    roles: dict[Literal["controller", "ps", "worker"], dict[Literal["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"], Count]]
    containers: dict[Annotated[str, Field(max_length=100)], dict[Literal["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"], Count]] = Field(
        max_length=1024)


class LinksIn(RequestBody):
    profile: str
    backend: Literal["netem", "userspace"]
    seed: int = Field(ge=0, le=MAX_SEED, description="the run config's seed, as the sidecar used it")
    ready: bool
    healthy: bool
    problems: list[str]
    links: dict[str, dict[str, Any]]
    probe: Probe | None
    compute_speed: list[Annotated[float, Field(ge=MIN_COMPUTE_SPEED, le=MAX_COMPUTE_SPEED)]] = Field(
        [1.0], min_length=1, description="the preset's factor on worker i's compute speed, entry i mod len")
    preset: dict[str, Any] | None = Field(None, description="the preset as written, for the run's provenance")
    failed: str | None = Field(None, max_length=2000, description="why the preset cannot be applied as written: a "
                               "run that has not started ends failed with it")
    tcp_cc: str | None = Field(None, max_length=100, description="TCP congestion control in force in the stack's "
                               "namespaces ('cubic'; 'bbr+cubic' when entries differ)")
    missing: list[Annotated[str, Field(max_length=100)]] = Field(
        [], max_length=256, description="declared workers without a running container when the run started")
    emulation: Emulation | None = Field(None, description="the delayers' release lateness and unasked-for drops so "
                                        "far (netem/lateness.py); null when no delayer runs")
    interfaces: InterfaceCounts | None = Field(None, description="bytes and packets every container's eth0 carried "
                                               "since the run started (netem/counters.py); null before")


CountKey = Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]


class PsReportIn(RequestBody):
    """The PS's report; in a hivemind run worker 0's (hive/peer.py), which has no updates, staleness or socket
    bytes to count: those are null there, and empty in the row."""
    version: Count
    updates_accepted: Count | None
    updates_rejected: Count | None
    updates_refused: dict[CountKey, Count] = Field(
        {}, max_length=32, description="the refused updates by reason (stale, second_in_round, norm)")
    wire_errors: dict[CountKey, Count] = Field(
        {}, max_length=32, description="messages the PS refused at its wire checks, by error code")
    mean_staleness: float | None = Field(ge=0, le=MAX_COUNT)
    bytes_up: Count | None
    bytes_down: Count | None
    initial_val_loss: float | None
    final_val_loss: float | None
    final_train_loss: float | None
    time_to_target_s: float | None
    bytes_to_target: int | None = Field(None, ge=0, le=MAX_COUNT,
                                        description="bytes up + down when the target was reached")
    tokens_trained: int = Field(0, ge=0, le=MAX_COUNT, description="training tokens behind the applied updates")
    window: int = Field(ge=1, le=MAX_COUNT)
    done: bool
    reason: str | None


class StopIn(RequestBody):
    reason: str = Field("stopped by request", max_length=500)


class Empty(BaseModel):
    pass
