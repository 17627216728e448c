"""The sidecar's helper containers: one per container of the stack, joined to that container's network namespace.

The sidecar reaches no namespace but its own. For a target container it starts a helper with
`network_mode: container:<target>`, capabilities NET_ADMIN and NET_RAW only (SYS_NICE too for
DELAYER_NICE below 0), a writable /proc/sys (systempaths=unconfined: the TCP
congestion control is a sysctl of the namespace) and the volume it shares with the sidecar, mounted at
LINKS_DIR; the helper's one process is the agent (agent.py), serving on LINKS_DIR/agents/<target id>.sock.
tc, iptables, sysctl, the delayer and the probe then run in the helper, that is in the target's namespace,
and the address the sidecar passes around is "agent:<socket>".

What a helper copies from the sidecar's own container (found through its hostname, the container id):
the image, the volume at LINKS_DIR and the CPU weight (the delayers run in the helpers now, and keep the
priority compose gives the sidecar). A helper carries the labels HELPER_OF = the project (compose's, or
the swarm stack's) and HELPER_TARGET = the target's container id: the sidecar removes a target's helper
when the target stops or restarts (a restarted target gets a new one), and at its start every helper of
the project a dead sidecar left; `make down` removes any that remain.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import agent
from .backends import PROBE, probe_answer
from .backends.base import LinkError

log = logging.getLogger("netem.helpers")

LINKS_DIR = Path("/var/lib/dlt-netem")  # shared by the sidecar and its helpers: agent sockets, delayer spec/stats
HELPER_OF = "dist-llm-train.helper-of"
HELPER_TARGET = "dist-llm-train.helper-target"
ROLE = "netem-helper"  # its dist-llm-train.role: the sidecar's scans ignore it
START_S = 20.0
BASE_CAPS = ("NET_ADMIN", "NET_RAW")
SECURITY_OPT = ["no-new-privileges:true", "apparmor=unconfined"]  # Docker's AppArmor profile forbids /proc/sys/net writes


class HelperError(Exception):
    """The helper could not be started, or its agent never answered (the message says why)."""


@dataclass(frozen=True)
class Template:
    """What every helper copies from the sidecar's own container."""
    image: str
    volume: str  # the volume mounted at LINKS_DIR
    cpu_shares: int | None
    caps: tuple[str, ...]


def caps_of(delayer_nice: int) -> tuple[str, ...]:
    """The helper's capabilities: NET_ADMIN, NET_RAW, and SYS_NICE when the delayers run at a niceness below 0."""
    return BASE_CAPS + (("SYS_NICE",) if delayer_nice < 0 else ())


def template_of(attrs: dict, delayer_nice: int = 0, links_dir: Path = LINKS_DIR) -> Template:
    """The Template from the sidecar container's inspect data; HelperError if it lacks the shared volume."""
    volume = next((m.get("Name") for m in attrs.get("Mounts") or []
                   if m.get("Destination") == str(links_dir) and m.get("Type") == "volume"), None)
    if not volume:
        raise HelperError(f"the sidecar has no volume mounted at {links_dir} (compose.yaml's netem service mounts "
                          "netem-links there; its helpers share it)")
    host = attrs.get("HostConfig") or {}
    return Template(attrs["Image"], volume, host.get("CpuShares") or None, caps_of(delayer_nice))


def own_template(client, delayer_nice: int = 0) -> Template:
    try:
        me = client.containers.get(socket.gethostname())
    except Exception as exc:  # noqa: BLE001 - docker's NotFound or an API error: say what was looked for
        raise HelperError(f"cannot inspect the sidecar's own container {socket.gethostname()}: {exc}") from None
    return template_of(me.attrs, delayer_nice)


def kernel_has_netem(client, template: Template) -> bool:
    """The backends' sch_netem probe (backends.PROBE) in a throwaway container with a network namespace of its
    own and NET_ADMIN only; LinkError if it cannot run."""
    try:
        client.containers.run(template.image, list(PROBE), network_mode="none", user="0:0", cap_drop=["ALL"],
                              cap_add=["NET_ADMIN"], security_opt=["no-new-privileges:true"], remove=True)
        return True
    except Exception as exc:  # noqa: BLE001 - docker's ContainerError carries the exit and stderr
        status, stderr = getattr(exc, "exit_status", None), getattr(exc, "stderr", None)
        if status is None:
            raise LinkError(f"cannot probe the kernel for sch_netem (a throwaway container): {exc}") from None
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr or exc)
        return probe_answer(status, text, "a throwaway container with NET_ADMIN")


def socket_path(target_id: str, links_dir: Path = LINKS_DIR) -> Path:
    return links_dir / "agents" / f"{target_id}.sock"


def address(sock: Path) -> str:
    """The namespace address (backends.base.ns_run and friends) of the agent serving on `sock`."""
    return agent.PREFIX + str(sock)


def helper_name(project: str, label: str, target_id: str) -> str:
    return f"{project}-netem-{label}-{target_id[:12]}"


class Helper:
    """The way in to one target's namespace: `path` for run_commands and friends, `alive()` while the
    target's process is the one the helper joined, `close()` removes the helper."""

    def __init__(self, client, container, target_id: str, target_pid: int, sock: Path):
        self.client, self.container = client, container
        self.target_id, self.pid, self.sock = target_id, target_pid, sock
        self.closed = False

    @property
    def path(self) -> str:
        return address(self.sock)

    def alive(self) -> bool:
        if self.closed:
            return False
        try:
            state = self.client.containers.get(self.target_id).attrs.get("State", {})
        except Exception:  # noqa: BLE001 - gone, or the daemon is restarting
            return False
        return bool(state.get("Running")) and int(state.get("Pid") or 0) == self.pid

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.container.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - already gone is fine; anything else is logged
            if "No such container" not in str(exc) and "404" not in str(exc):
                log.warning("removing helper %s: %s", self.container.name, exc)
        self.sock.unlink(missing_ok=True)


def start(client, template: Template, project: str, target, links_dir: Path = LINKS_DIR) -> Helper:
    """A helper in `target`'s namespace whose agent answers; HelperError (the helper removed) otherwise."""
    sock = socket_path(target.id, links_dir)
    sock.parent.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    name = helper_name(project, target.label, target.id)
    leftover(client, name)
    try:
        host_config = client.api.create_host_config(
            network_mode=f"container:{target.id}", cap_drop=["ALL"], cap_add=list(template.caps),
            security_opt=SECURITY_OPT, cpu_shares=template.cpu_shares,
            binds={template.volume: {"bind": str(links_dir), "mode": "rw"}})
        # What `--security-opt systempaths=unconfined` means (the CLI and compose translate it; the API
        # takes the lists): /proc/sys writable, so the agent can set the namespace's TCP sysctls.
        host_config.update(MaskedPaths=[], ReadonlyPaths=[])
        created = client.api.create_container(
            template.image, ["dist-llm-train", "netem-agent", "--socket", str(sock)], name=name, user="0:0",
            labels={HELPER_OF: project, HELPER_TARGET: target.id, "dist-llm-train.role": ROLE},
            host_config=host_config)
        client.api.start(created["Id"])
        container = client.containers.get(created["Id"])
    except Exception as exc:  # noqa: BLE001 - the target went meanwhile, or the daemon refused: say which
        leftover(client, name)
        raise HelperError(f"cannot start a helper in {target.name}'s namespace: {exc}") from None
    helper = Helper(client, container, target.id, target.pid, sock)
    deadline = time.monotonic() + START_S
    while True:
        try:
            agent.connect(str(sock), timeout_s=1.0).close()
            return helper
        except agent.AgentError:
            pass
        container.reload()
        if container.status not in ("created", "running") or time.monotonic() > deadline:
            logs = container.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
            helper.close()
            raise HelperError(f"the helper in {target.name}'s namespace did not answer within {START_S:g} s "
                              f"(status {container.status}; {logs or 'no output'})")
        time.sleep(0.05)


def leftover(client, name: str) -> None:
    """Remove a helper of that name, if a dead sidecar left one."""
    try:
        client.containers.get(name).remove(force=True)
    except Exception:  # noqa: BLE001 - none there is the usual case
        pass


def remove_all(client, project: str) -> int:
    """Remove every helper of the project (a dead sidecar's, at start); how many there were."""
    found = client.containers.list(all=True, filters={"label": f"{HELPER_OF}={project}"})
    for container in found:
        try:
            container.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - removed meanwhile
            log.debug("helper %s: %s", container.name, exc)
    return len(found)


def volume_name(project: str) -> str:
    """The links volume of a compose project (compose.yaml's `netem-links`)."""
    return f"{project}_netem-links"


def sweep(project: str) -> int:
    """What a dead sidecar can leave after its stack is down: its helpers and the links volume they hold.
    Removes both (nothing there is the usual case); how many helpers there were. For make down, the runner
    and the tests, after the sidecar has stopped and before `compose down -v`."""
    import docker

    client = docker.from_env()
    count = remove_all(client, project)
    try:
        client.volumes.get(volume_name(project)).remove(force=True)
    except Exception:  # noqa: BLE001 - no such volume, or compose removes it next
        pass
    return count
