"""Emulation backends by the name used in NETEM_BACKEND, in logs and in the CSV column `backend`.

`choose("auto")` probes the kernel once for sch_netem (a netem qdisc on the loopback of a
throwaway network namespace) and picks `netem` where it exists, else `userspace`;
`choose("netem")` / `choose("userspace")` force one.

Failure: an unknown name raises ValueError; a probe that cannot run at all (no `unshare`, no
CAP_SYS_ADMIN) raises LinkError with the reason, rather than guessing a backend.
"""

from __future__ import annotations

import functools
import subprocess

from .base import Backend, LinkError
from .tc_netem import NetemBackend
from .userspace import UserspaceBackend

BACKENDS: dict[str, type[Backend]] = {"netem": NetemBackend, "userspace": UserspaceBackend}
assert all(name == cls.name for name, cls in BACKENDS.items())
CHOICES = ("auto", *BACKENDS)


@functools.cache
def kernel_has_netem() -> bool:
    probe = ["unshare", "--net", "--", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"cannot probe the kernel for sch_netem (`{' '.join(probe)}`): {exc}") from None
    if done.returncode == 0:
        return True
    if "unknown" in done.stderr.lower():  # "Specified qdisc kind is unknown."
        return False
    raise LinkError(f"cannot probe the kernel for sch_netem (`{' '.join(probe)}`): {done.stderr.strip()} "
                    "(needs CAP_SYS_ADMIN and CAP_NET_ADMIN)")


def choose(requested: str) -> tuple[Backend, str]:
    """The backend for NETEM_BACKEND=`requested`, and one line saying why it was chosen."""
    if requested not in CHOICES:
        raise ValueError(f"NETEM_BACKEND: unknown backend {requested!r} (choose from {', '.join(CHOICES)})")
    if requested != "auto":
        return BACKENDS[requested](), f"backend {requested} (forced by NETEM_BACKEND)"
    if kernel_has_netem():
        return NetemBackend(), "backend netem (auto: the kernel has sch_netem)"
    return UserspaceBackend(), "backend userspace (auto: the kernel has no sch_netem; tbf + NFQUEUE delayer)"
