"""A container's network namespace held by open file descriptors, never reached again through its PID.

`/proc/<pid>/ns/net` names whatever process has that PID *now*: once a container's process exits and the
kernel hands the PID to another process (one of the host's, even), a `tc qdisc del dev eth0 root` sent
through that path would run in the wrong namespace. So the sidecar takes a handle once, when it matches a
container by its labels, and uses only the handle afterwards:

1. `pidfd_open(pid)`: a descriptor of that very process; no reuse of the number can redirect it.
2. `still_ours()`: the caller asks Docker again whether that PID is still the container's process. If
   so, the pidfd is the container's (the PID cannot be reused while that process lives).
3. `/proc/<pid>/ns/net` is opened, and the pidfd checked still running afterwards, so the path was the
   container's when it was opened.

Commands enter the namespace through `/proc/<our pid>/fd/<n>` (`path`), which only this process's own
descriptor table can change. While the handle is open the namespace outlives the container (rules
removed in it then touch nothing else); `alive()` says whether the container's process still runs (a
pidfd becomes readable when its process exits). `close()` lets the namespace go.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable
from dataclasses import dataclass


class NamespaceGone(Exception):
    """The process exited, or the PID stopped being the container's, before the handle was taken."""


def exited(pidfd: int) -> bool:
    """Whether the process behind a pidfd has exited (the pidfd is then readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class NamespaceHandle:
    pid: int
    pidfd: int
    nsfd: int

    @classmethod
    def open(cls, pid: int, still_ours: Callable[[], bool]) -> NamespaceHandle:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NamespaceGone(f"process {pid} has exited") from None
        try:
            if not still_ours():
                raise NamespaceGone(f"process {pid} is no longer the container's")
            try:
                nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NamespaceGone(f"process {pid} has exited") from None
            if exited(pidfd):  # the path may have named a newer process by the time it was opened
                os.close(nsfd)
                raise NamespaceGone(f"process {pid} exited while its namespace was being opened")
        except BaseException:
            os.close(pidfd)
            raise
        return cls(pid, pidfd, nsfd)

    @property
    def path(self) -> str:
        """What `nsenter --net=` takes: this process's descriptor, valid while the handle is open."""
        return f"/proc/{os.getpid()}/fd/{self.nsfd}"

    def alive(self) -> bool:
        return self.pidfd >= 0 and not exited(self.pidfd)

    def close(self) -> None:
        for fd in (self.pidfd, self.nsfd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.nsfd = -1
