"""The stack's containers the sidecar shapes: found through the Docker API by their labels."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .preset import Role

ROLES = ("controller", "ps", "worker")


@dataclass(frozen=True)
class Target:
    id: str
    name: str
    role: Role
    index: int
    pid: int
    address: str

    @property
    def label(self) -> str:
        return self.role if self.role != "worker" else f"worker-{self.index}"


def target_of(container) -> Target | None:
    """The Target a container is, or None if the sidecar must leave it alone (itself, one-off
    containers, anything without a known role, anything not running)."""
    labels = container.labels
    role = labels.get("dist-llm-train.role")
    state = container.attrs.get("State", {})
    pid = state.get("Pid") or 0
    if role not in ROLES or labels.get("com.docker.compose.oneoff") == "True" or not state.get("Running"):
        return None
    if pid in (0, os.getpid()):
        return None
    networks = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
    if address is None:
        return None
    index = int(labels.get("com.docker.compose.container-number", "1")) - 1 if role == "worker" else 0
    return Target(container.id, container.name, role, index, pid, address)


def find_targets(client, project: str) -> dict[str, Target]:
    found = {}
    for container in client.containers.list(filters={"label": f"com.docker.compose.project={project}"}):
        target = target_of(container)
        if target is not None:
            found[target.id] = target
    return found
