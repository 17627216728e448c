"""Process settings read from the environment, in one place, for every role.

Compose passes these (compose.yaml, from .env and the Makefile); the local demos set them for
their child processes. Unsafe values are refused here, before a role starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .schema import ConfigError

MIN_TOKEN_LENGTH = 16
TCP_CC_CHOICES = ("cubic", "bbr", "reno", "host")  # netem.preset.CongestionControl (checked in its tests)
KNOWN_WEAK_TOKENS = {"changeme", "change-me", "token", "secret", "password", "test"}


@dataclass(frozen=True)
class Settings:
    run_token: str  # RUN_TOKEN: shared secret every worker, PS and sidecar presents to the controller (admission)
    config_path: Path  # CONFIG: the run config (YAML)
    profile: str  # NETEM_PROFILE: WAN preset under netem/ (recorded in the CSV row); "" = no emulation (local runs)
    controller_url: str  # CONTROLLER_URL
    ps_address: str  # PS_ADDRESS: ZeroMQ endpoint of the parameter server
    runs_dir: Path  # RUNS_DIR: where CSV rows and provenance JSON land
    state_dir: Path  # STATE_DIR: the controller's SQLite database
    checkpoint_dir: Path  # CHECKPOINT_DIR: PS checkpoints
    netem_dir: Path  # NETEM_DIR: the WAN presets
    num_workers: int | None  # WORKERS: overrides workers.count of the config
    link_gate: bool  # LINK_GATE=1: hold tasks until the sidecar reports every link applied
    repeat: int = 0  # REPEAT: repetition number of this run in an experiment (recorded in the CSV row)
    image_id: str | None = None  # IMAGE_ID: the image the run used (recorded in the provenance file)
    log_level: str = "INFO"  # LOG_LEVEL: debug, info, warning, error
    worker_index: int | None = None  # WORKER_INDEX: a worker's index outside compose (else from Docker's DNS)
    torch_threads: int | None = None  # TORCH_THREADS: torch intra-op threads per process; unset = every core
    linger: bool = False  # WORKER_LINGER=1: a worker stays up, idle, after the run (its link stays measurable)
    health_file: Path | None = None  # WORKER_HEALTH_FILE: touched at each answered heartbeat (compose's healthcheck)
    netem_backend: str = "auto"  # NETEM_BACKEND: auto | netem | userspace (the sidecar's backend)
    compose_project: str | None = None  # COMPOSE_PROJECT: the compose project whose containers the sidecar shapes
    tcp_cc: str | None = None  # TCP_CC: replaces every preset entry's tcp.congestion_control (cubic, bbr, reno, host)
    delayer_nice: int = 0  # DELAYER_NICE: niceness of the userspace delayers (-20..19; below 0 needs CAP_SYS_NICE)
    # The role credentials (controller/deps.py): each opens its role's routes, besides RUN_TOKEN. The controller
    # holds all three; compose gives the sidecar, the PS and the operator's tools only their own.
    sidecar_token: str | None = None  # SIDECAR_TOKEN: /links
    ps_token: str | None = None  # PS_TOKEN: /ps/report, /ps/key (announce), /ps/workers
    operator_token: str | None = None  # OPERATOR_TOKEN: /run/stop


ROLE_TOKENS = {"sidecar": "SIDECAR_TOKEN", "ps": "PS_TOKEN", "operator": "OPERATOR_TOKEN"}


def check_token(token: str, name: str = "RUN_TOKEN") -> str:
    if len(token) < MIN_TOKEN_LENGTH or token.lower() in KNOWN_WEAK_TOKENS:
        raise ConfigError(
            f"{name}: must be at least {MIN_TOKEN_LENGTH} characters and not a well-known value "
            "(`make up` writes a random one to .env)"
        )
    return token


def require_role_tokens(settings: Settings, *roles: str) -> None:
    """ConfigError naming the first of `roles` (keys of ROLE_TOKENS) whose credential is not set."""
    for role in roles:
        if getattr(settings, f"{role}_token") is None:
            raise ConfigError(f"{ROLE_TOKENS[role]}: not set (`make up` writes a random one to .env)")


def _int_or_none(name: str, raw: str | None, minimum: int = 1) -> int | None:
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    return value


def from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    token = env.get("RUN_TOKEN")
    if not token:
        raise ConfigError("RUN_TOKEN: not set (`make up` writes a random one to .env)")
    return Settings(
        run_token=check_token(token),
        config_path=Path(env.get("CONFIG", "configs/basic_demo.yaml")),
        profile=env.get("NETEM_PROFILE", ""),
        controller_url=env.get("CONTROLLER_URL", "http://controller:8000").rstrip("/"),
        ps_address=env.get("PS_ADDRESS", "tcp://ps:5555"),
        runs_dir=Path(env.get("RUNS_DIR", "runs")),
        state_dir=Path(env.get("STATE_DIR", "state")),
        checkpoint_dir=Path(env.get("CHECKPOINT_DIR", "checkpoints")),
        netem_dir=Path(env.get("NETEM_DIR", "netem")),
        num_workers=_int_or_none("WORKERS", env.get("WORKERS")),
        link_gate=env.get("LINK_GATE", "0") == "1",
        repeat=_int_or_none("REPEAT", env.get("REPEAT"), minimum=0) or 0,
        image_id=env.get("IMAGE_ID") or None,
        log_level=_log_level(env.get("LOG_LEVEL", "info")),
        torch_threads=_int_or_none("TORCH_THREADS", env.get("TORCH_THREADS")),
        linger=env.get("WORKER_LINGER", "0") == "1",
        health_file=Path(env["WORKER_HEALTH_FILE"]) if env.get("WORKER_HEALTH_FILE") else None,
        worker_index=_int_or_none("WORKER_INDEX", env.get("WORKER_INDEX"), minimum=0),
        netem_backend=env.get("NETEM_BACKEND") or "auto",
        compose_project=env.get("COMPOSE_PROJECT") or None,
        tcp_cc=_choice("TCP_CC", env.get("TCP_CC"), TCP_CC_CHOICES),
        delayer_nice=_nice(env.get("DELAYER_NICE")),
        **{f"{role}_token": check_token(env[name], name) if env.get(name) else None
           for role, name in ROLE_TOKENS.items()},
    )


def _nice(raw: str | None) -> int:
    if raw in (None, ""):
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"DELAYER_NICE: expected a whole number from -20 to 19, got {raw!r}") from None
    if not -20 <= value <= 19:
        raise ConfigError(f"DELAYER_NICE: expected a whole number from -20 to 19, got {value}")
    return value


def _choice(name: str, raw: str | None, choices: tuple[str, ...]) -> str | None:
    if raw in (None, ""):
        return None
    if raw not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def touch(path: Path | None) -> None:
    """Mark a process alive for a file-age healthcheck (no Python start per check); None: nothing to do."""
    if path is not None:
        path.touch()


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL: expected debug, info, warning or error, got {raw!r}")
    return level
