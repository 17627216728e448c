"""WAN presets (netem/<name>.yaml): the WHAT of the emulation, validated, immutable, no Docker.

A preset gives every container of the stack one link (`LinkSpec`): the controller and the PS take
their role's entry, worker i takes `workers[i mod len]`; every entry lists only what differs
from `default`. Optional `phases` change links over time (an outage, a degradation); the link a
container has at time t is a pure function, `Preset.link_at(role, index, t)`, and
`Preset.next_change(t)` says when it next changes. netem/README.md says what each number means.

Each link also carries the TCP settings of the container's namespace (`tcp`, a `TcpSpec`): the
congestion control its sockets use. A top-level `tcp` block sets it for every container, an entry's
own `tcp` overrides it; phases cannot change it (a socket's algorithm is fixed when it opens).

Failure: `load_preset` raises `ConfigError` naming the file and the field, e.g.
`netem/x.yaml: workers.1.delay_ms: input should be greater than or equal to 0 (got -5)` or
`netem/x.yaml: workers.1: jitter_ms 20 is above delay_ms 10`.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import read_yaml_mapping
from ..schema import ConfigError, Section, validate
from ..worker.config import MAX_COMPUTE_SPEED, MIN_COMPUTE_SPEED
from . import trace as traces
from .trace import Trace, TraceEnd

Role = Literal["controller", "ps", "worker"]
# `host` applies nothing: the namespace keeps the algorithm it inherited from the host's default.
CongestionControl = Literal["cubic", "bbr", "reno", "host"]
TARGET = re.compile(r"^(all|controller|ps|workers|worker:\d+)$")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
TRACE = re.compile(r"^traces/[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(csv|mahi)$")


class TcpSpec(Section):
    """TCP settings applied in the container's network namespace before the run starts."""

    congestion_control: CongestionControl = Field(
        "cubic", description="algorithm of every TCP socket opened in the container (net.ipv4.tcp_congestion_control); "
                             "cubic is the Linux default; host = keep the host's default, recorded")


class TcpChange(TcpSpec):
    """A partial `tcp` block: only the fields written replace those of the base link."""


class LinkSpec(Section):
    """One container's access link. See netem/README.md for the exact semantics."""

    delay_ms: float = Field(0.0, ge=0, le=10_000, description="one-way delay added per packet, ms")
    jitter_ms: float = Field(0.0, ge=0, le=10_000, description="stdev of a normal per-packet variation of the delay, ms")
    loss_pct: float = Field(0.0, ge=0, le=100, description="share of packets dropped, %, once per container per round trip")
    rate_mbit: float | None = Field(None, gt=0, le=100_000, description="access-link capacity in each direction, Mbit/s; null = unlimited")
    queue_packets: int | None = Field(None, ge=2, le=100_000, description="the rate limiter's queue, in 1514-byte "
                                      "frames (a DropTail buffer); null = sized from the bandwidth-delay product")
    down: bool = Field(False, description="the link is cut: nothing passes in either direction (used by outage phases)")
    trace: str | None = Field(None, description="traces/<file>.csv or .mahi (in the preset's folder): the rate, delay "
                                                "and loss over time, over the fields above (netem/README.md)")
    trace_end: TraceEnd = Field("loop", description="after the trace's end: loop it, or hold its last values")
    tcp: TcpSpec = Field(TcpSpec(), description="TCP settings of the container's namespace")

    @field_validator("trace")
    @classmethod
    def _trace(cls, trace: str | None) -> str | None:
        if trace is not None and not TRACE.match(trace):
            raise ValueError(f"{trace!r}: a trace is named traces/<file>.csv or traces/<file>.mahi (letters, digits, "
                             "'-', '_', '.'), relative to the preset's folder")
        return trace

    @property
    def is_identity(self) -> bool:
        """True when the link shapes nothing: no rule is installed for it (TCP settings apply anyway)."""
        return self == LinkSpec(tcp=self.tcp)

    def changed(self, change: "LinkChange") -> "LinkSpec":
        """This link with the fields `change` sets replaced (inside `tcp` too)."""
        update = change.model_dump(exclude_unset=True, exclude={"tcp"})
        if change.tcp is not None:
            update["tcp"] = self.tcp.model_copy(update=change.tcp.model_dump(exclude_unset=True))
        return self.model_copy(update=update)


class LinkChange(LinkSpec):
    """A partial link: only the fields written in the file replace those of the base link
    (`rate_mbit: null` written out means unlimited; left out means inherited)."""

    tcp: TcpChange | None = Field(None, description="TCP settings over the base link's")




class WorkerEntry(LinkChange):
    compute_speed: float = Field(1.0, ge=MIN_COMPUTE_SPEED, le=MAX_COMPUTE_SPEED, description="factor on the worker's compute speed (0.25 = 4x slower), multiplies workers.speed of the run config")

    def link_change(self) -> LinkChange:
        fields = {k: getattr(self, k) for k in self.model_fields_set if k != "compute_speed"}
        return LinkChange(**fields)


class Phase(Section):
    """A change of some links for a while, once or every `period_s`; t = 0 is the moment every
    link is applied and the first probe is done (the run starts then)."""

    name: str = Field("phase", min_length=1, description="shown in the sidecar's log")
    start_s: float = Field(0.0, ge=0, description="when the phase first begins, seconds after t = 0")
    duration_s: float | None = Field(None, gt=0, description="how long it lasts; null = until the end")
    period_s: float | None = Field(None, gt=0, description="it begins again every period_s seconds; null = once")
    targets: list[str] = Field(["all"], min_length=1, description="all | controller | ps | workers | worker:<index>")
    link: LinkChange = Field(description="fields that replace those of each target's link while the phase lasts")

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        bad = [t for t in targets if not TARGET.match(t)]
        if bad:
            raise ValueError(f"unknown target {bad[0]!r} (use all, controller, ps, workers or worker:<index>)")
        return targets

    @model_validator(mode="after")
    def _period(self) -> "Phase":
        if not self.link.model_fields_set:
            raise ValueError("link: names no field to change")
        if self.link.model_fields_set & {"trace", "trace_end"}:
            raise ValueError("link.trace: a phase cannot set a trace (name it on the entry; a phase may still "
                             "change a traced link's other fields, or cut it)")
        if "tcp" in self.link.model_fields_set:
            raise ValueError("link.tcp: a phase cannot change TCP settings (a socket's congestion control is fixed "
                             "when it opens); set tcp per entry instead")
        if self.period_s is not None:
            if self.duration_s is None:
                raise ValueError("period_s needs duration_s (a phase without an end cannot repeat)")
            if self.period_s <= self.duration_s:
                raise ValueError(f"period_s ({self.period_s}) must exceed duration_s ({self.duration_s}), or the phase never ends")
        return self

    def targets_container(self, role: Role, index: int) -> bool:
        for target in self.targets:
            if target == "all" or target == role or (role == "worker" and target in ("workers", f"worker:{index}")):
                return True
        return False

    def active(self, t: float) -> bool:
        if t < self.start_s:
            return False
        since = t - self.start_s
        if self.period_s is not None:
            since = math.fmod(since, self.period_s)
        return self.duration_s is None or since < self.duration_s

    def next_boundary(self, t: float) -> float | None:
        """The first time after t when this phase begins or ends; None if it never will."""
        if t < self.start_s:
            return self.start_s
        if self.duration_s is None:
            return None
        if self.period_s is None:
            end = self.start_s + self.duration_s
            return end if t < end else None
        cycle = self.start_s + math.floor((t - self.start_s) / self.period_s) * self.period_s
        end = cycle + self.duration_s
        return end if t < end else cycle + self.period_s


class PresetFile(Section):
    """The YAML file as written."""

    description: str = Field("", description="one line shown by the sidecar and in provenance")
    tcp: TcpChange = Field(TcpChange(), description="TCP settings of every container (an entry's own tcp overrides them)")
    default: LinkChange = Field(LinkChange(), description="the link of every container not listed below")
    controller: LinkChange | None = Field(None, description="the controller's link (fields over default)")
    ps: LinkChange | None = Field(None, description="the parameter server's link (fields over default)")
    workers: list[WorkerEntry] = Field([], description="worker i takes entry i mod len (fields over default)")
    phases: list[Phase] = Field([], max_length=8, description="changes of links over time, later entries win where they overlap")


class Preset:
    """A validated preset: resolved links per role and worker entry, and the phases."""

    def __init__(self, name: str, source: str, data: PresetFile, tcp_override: CongestionControl | None = None):
        """`tcp_override` (TCP_CC) replaces the congestion control of every entry."""
        if tcp_override is not None:
            data = data.model_copy(update={
                "tcp": TcpChange(congestion_control=tcp_override),
                **{key: entry.model_copy(update={"tcp": None}) for key in ("default", "controller", "ps")
                   if (entry := getattr(data, key)) is not None},
                "workers": [entry.model_copy(update={"tcp": None}) for entry in data.workers]})
        self.name = name
        self.source = source
        self.tcp_override = tcp_override
        self.file = data
        self.description = data.description
        base = LinkSpec(tcp=TcpSpec().model_copy(update=data.tcp.model_dump(exclude_unset=True))).changed(data.default)
        self.controller = base.changed(data.controller) if data.controller else base
        self.ps = base.changed(data.ps) if data.ps else base
        entries = data.workers or [WorkerEntry()]
        self.workers = tuple(base.changed(e.link_change()) for e in entries)
        self.compute_speeds = tuple(e.compute_speed for e in entries)
        self.phases = tuple(data.phases)
        self.traces = self._load_traces()
        self._check_links()

    def _bases(self) -> list[tuple[str, Role, int, LinkSpec]]:
        """(where in the file, role, a worker index taking it, resolved link) for every entry."""
        bases: list[tuple[str, Role, int, LinkSpec]] = [
            ("controller" if self.file.controller else "default", "controller", 0, self.controller),
            ("ps" if self.file.ps else "default", "ps", 0, self.ps)]
        for k, link in enumerate(self.workers):
            bases.append((f"workers.{k}" if self.file.workers else "default", "worker", k, link))
        return bases

    def _load_traces(self) -> dict[str, Trace]:
        """Every trace an entry names, read from the preset's folder; ConfigError naming the entry and the
        trace's file and line when one cannot be used."""
        loaded: dict[str, Trace] = {}
        for where, _, _, link in self._bases():
            if link.trace is not None and link.trace not in loaded:
                try:
                    loaded[link.trace] = traces.load(Path(self.source).parent / link.trace)
                except traces.TraceError as exc:
                    raise ConfigError(f"{self.source}: {where}.trace: {exc}") from None
        return loaded

    def _traced(self, link: LinkSpec, t: float) -> LinkSpec:
        """The link with its trace's values at time t in force (itself without a trace)."""
        if link.trace is None:
            return link
        return link.model_copy(update=self.traces[link.trace].at(t, link.trace_end).update())

    def _trace_forms(self, link: LinkSpec) -> list[LinkSpec]:
        """Every form the link takes under its trace (itself without a trace)."""
        if link.trace is None:
            return [link]
        return [link.model_copy(update=v.update()) for v in self.traces[link.trace].all_values()]

    def _check_links(self) -> None:
        """For every link a container can take (each entry, under each step of its trace and every
        combination of the phases that target it): jitter_ms <= delay_ms, and queue_packets only
        with a rate cap."""
        for where, role, index, link in self._bases():
            phases = [(k, p) for k, p in enumerate(self.phases) if p.targets_container(role, index)]
            combos = [c for n in range(len(phases) + 1) for c in itertools.combinations(phases, n)]
            for combo, resolved in itertools.product(combos, self._trace_forms(link)):
                for _, phase in combo:
                    resolved = resolved.changed(phase.link)
                at = where + (f" under {link.trace}" if link.trace else "") + "".join(f" under phases.{k}" for k, _ in combo)
                if resolved.jitter_ms > resolved.delay_ms:
                    raise ConfigError(f"{self.source}: {at}: jitter_ms {resolved.jitter_ms:g} is above "
                                      f"delay_ms {resolved.delay_ms:g} (a normal jitter that large makes "
                                      "the delay negative for many packets)")
                if resolved.queue_packets is not None and resolved.rate_mbit is None and not resolved.down:
                    raise ConfigError(f"{self.source}: {at}: queue_packets {resolved.queue_packets} without "
                                      "rate_mbit (it is the rate limiter's queue; an unlimited link has none)")

    def link_for(self, role: Role, index: int = 0) -> LinkSpec:
        """The container's link without phases (worker `index` takes workers[index mod len])."""
        if role == "controller":
            return self.controller
        if role == "ps":
            return self.ps
        return self.workers[index % len(self.workers)]

    def link_at(self, role: Role, index: int, t: float) -> LinkSpec:
        """The container's link at time t (seconds after the run started; its trace, then phases applied)."""
        link = self._traced(self.link_for(role, index), t)
        for phase in self.phases:
            if phase.active(t) and phase.targets_container(role, index):
                link = link.changed(phase.link)
        return link

    def links_over_time(self, role: Role, index: int) -> list[LinkSpec]:
        """Every link the container can take (base, under each step of its trace and each combination
        of its phases)."""
        phases = [p for p in self.phases if p.targets_container(role, index)]
        links = []
        for n in range(len(phases) + 1):
            for combo in itertools.combinations(phases, n):
                for link in self._trace_forms(self.link_for(role, index)):
                    for phase in combo:
                        link = link.changed(phase.link)
                    if link not in links:
                        links.append(link)
        return links

    def next_change(self, t: float) -> float | None:
        """The first time after t at which any phase begins or ends or any trace steps; None if links
        never change again."""
        traced = {(link.trace, link.trace_end) for _, _, _, link in self._bases() if link.trace is not None}
        times = [b for b in (*(p.next_boundary(t) for p in self.phases),
                             *(self.traces[name].next_change(t, end) for name, end in traced)) if b is not None]
        return min(times) if times else None

    def quiet_window(self, t: float, seconds: float, containers: list[tuple[Role, int]],
                     horizon_s: float = 3600.0) -> float | None:
        """The first time >= t from which no link changes for `seconds` and none of `containers`
        (role, index) is down: when a measurement of them can be compared with the preset.
        None if there is no such window within horizon_s."""
        start = t
        while start - t <= horizon_s:
            change = self.next_change(start)
            down = any(self.link_at(role, index, start).down for role, index in containers)
            if not down and (change is None or change - start >= seconds):
                return start
            if change is None:
                return None
            start = change
        return None

    def tcp_choices(self) -> dict[str, str]:
        """Each congestion control the preset asks for ('host' excluded), with the first place in the
        file that sets it for some container (`tcp.congestion_control`, `workers.1.tcp.congestion_control`)."""
        def sets_cc(entry: LinkChange | None) -> bool:
            return entry is not None and entry.tcp is not None and "congestion_control" in entry.tcp.model_fields_set

        entries = {"default": self.file.default, "controller": self.file.controller, "ps": self.file.ps,
                   **{f"workers.{k}": e for k, e in enumerate(self.file.workers)}}
        if self.tcp_override is not None:
            return {} if self.tcp_override == "host" else {self.tcp_override: "TCP_CC (set for every container)"}
        found: dict[str, str] = {}
        for where, _, _, link in self._bases():
            owner = where if sets_cc(entries[where]) else "default" if sets_cc(self.file.default) else None
            found.setdefault(link.tcp.congestion_control,
                             f"{owner}.tcp.congestion_control" if owner else "tcp.congestion_control")
        found.pop("host", None)
        return found

    def phases_active(self, t: float) -> list[str]:
        return [p.name for p in self.phases if p.active(t)]

    def compute_speed(self, index: int) -> float:
        """Factor on worker `index`'s compute speed (1.0 unless its entry sets compute_speed)."""
        return self.compute_speeds[index % len(self.compute_speeds)]

    def as_dict(self) -> dict:
        """The preset as written (for provenance), with its name and file."""
        return {"name": self.name, "source": self.source, **self.file.model_dump(mode="json", exclude_unset=True)}


def preset_path(name_or_path: str, netem_dir: Path) -> Path:
    if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        return Path(name_or_path)
    if not NAME.match(name_or_path):
        raise ConfigError(f"preset {name_or_path!r}: a name is lowercase letters, digits, '-' and '_'")
    return Path(netem_dir) / f"{name_or_path}.yaml"


def available(netem_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(netem_dir).glob("*.yaml"))


def load_preset(name_or_path: str, netem_dir: Path, tcp_override: CongestionControl | None = None) -> Preset:
    """Read and validate a preset by name (netem_dir/<name>.yaml) or path; ConfigError if unusable.
    `tcp_override` (TCP_CC) sets every container's congestion control, whatever the file says."""
    path = preset_path(name_or_path, netem_dir)
    if not path.is_file():
        known = ", ".join(available(netem_dir)) or "none"
        raise ConfigError(f"{path}: no such preset (presets in {netem_dir}: {known})")
    data = validate(PresetFile, read_yaml_mapping(path), str(path))
    return Preset(path.stem, str(path), data, tcp_override)
