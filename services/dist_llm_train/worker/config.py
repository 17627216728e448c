"""The workers' and the basic-mode tasks' sections of a run config.

Per-worker lists are read cyclically: worker i takes entry i mod len(list), so `[1.0, 0.25]`
makes every second worker a 4x straggler whatever the worker count.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..schema import Section, check_range

# Bounds of a worker's compute-speed factor, here and in the sidecar's /links report (controller/
# models.py): 1000x slower to 100x faster. A synthetic task's compute time is tokens / speed, so a
# factor near 0 made it absurd (1e-300 overflowed the worker's wait).
MIN_COMPUTE_SPEED = 0.001
MAX_COMPUTE_SPEED = 100.0
MAX_TOKENS = 10**12  # tokens of one task, tokens/s of a worker: far above anything real, far below overflow
MAX_MIB = 2**30  # memory and payload sizes, MiB or KiB: a PiB / a TiB


class WorkersConfig(Section):
    count: int = Field(4, ge=1, le=256, description="number of workers (WORKERS=N overrides it)")
    speed: list[float] = Field([1.0], min_length=1, description="compute speed factor per worker (i mod len); 0.25 = 4x slower")
    capacity: list[float] = Field([1.0], min_length=1, description="capacity each worker declares at registration (i mod len)")
    memory_mb: list[int] = Field([4096], min_length=1, description="memory each worker declares, in MiB (i mod len)")
    base_tokens_per_sec: float = Field(50_000.0, gt=0, le=MAX_TOKENS, description="basic mode: synthetic tokens/s of a worker at speed 1.0")
    start_wait_s: float = Field(60.0, gt=0, le=3600, description="with the netem sidecar: how long, once the servers and a "
                                "first worker have their links, the run waits for every declared worker before it "
                                "starts with those present (the row's reason names the others); ml.trainer hivemind "
                                "fails instead, and its peers wait this long for each other in the swarm")

    @field_validator("speed")
    @classmethod
    def _speed(cls, values: list[float]) -> list[float]:
        if any(not MIN_COMPUTE_SPEED <= v <= MAX_COMPUTE_SPEED for v in values):
            raise ValueError(f"every entry must be from {MIN_COMPUTE_SPEED:g} to {MAX_COMPUTE_SPEED:g}")
        return values

    @field_validator("capacity")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 1e6 for v in values):
            raise ValueError("every entry must be > 0 and at most 1e6")
        return values

    @field_validator("memory_mb")
    @classmethod
    def _positive_memory(cls, values: list[int]) -> list[int]:
        if any(not 0 < v <= MAX_MIB for v in values):
            raise ValueError(f"every entry must be > 0 and at most {MAX_MIB}")
        return values

    def entry(self, values: list, index: int):
        """The value of a per-worker list for worker `index`."""
        return values[index % len(values)]


class TasksConfig(Section):
    """Basic mode: synthetic tasks. A task's compute time is tokens / (base_tokens_per_sec * speed);
    its input is downloaded from the controller and its output uploaded, so the link matters."""

    count: int = Field(40, ge=1, le=100_000, description="number of tasks in the run")
    tokens: list[int] = Field([20_000, 80_000], description="[low, high] task size in tokens, uniform")
    priorities: int = Field(3, ge=1, description="priority levels 0..n-1 drawn uniformly (higher runs first under 'priority')")
    memory_mb: list[int] = Field([256, 2048], description="[low, high] memory a task needs, MiB, uniform")
    input_kb: list[int] = Field([32, 256], description="[low, high] input each task downloads from the controller, KiB")
    output_kb: list[int] = Field([8, 64], description="[low, high] result each task uploads to the controller, KiB")

    @field_validator("tokens", "memory_mb", "input_kb", "output_kb")
    @classmethod
    def _range(cls, value: list[int], info) -> list[int]:
        check_range(value, info.field_name)
        if value[0] < 0 or (info.field_name in ("tokens", "memory_mb") and value[0] <= 0):
            raise ValueError(f"{info.field_name} must be positive")
        limit = MAX_TOKENS if info.field_name == "tokens" else MAX_MIB
        if value[1] > limit:
            raise ValueError(f"{info.field_name} high {value[1]} is above {limit}")
        return value
