"""Emulation backends by the name used in NETEM_BACKEND, in logs and in the CSV column `backend`.

`choose("auto")` probes the kernel once for sch_netem (a netem qdisc on the loopback of a
throwaway network namespace) and picks `netem` where it exists, else `userspace`;
`choose("netem")` / `choose("userspace")` force one. Where the probe runs is the caller's: here with
`unshare` (tests, benchmarks, the dry run), or in a throwaway container (the sidecar, which has no
capability of its own: helpers.kernel_has_netem).

Failure: an unknown name raises ValueError; a probe that cannot run at all (no `unshare`, no
CAP_SYS_ADMIN) raises LinkError with the reason, rather than guessing a backend.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable

from .base import Backend, LinkError
from .tc_netem import NetemBackend
from .userspace import UserspaceBackend

BACKENDS: dict[str, type[Backend]] = {"netem": NetemBackend, "userspace": UserspaceBackend}
assert all(name == cls.name for name, cls in BACKENDS.items())
CHOICES = ("auto", *BACKENDS)


PROBE = ("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms")  # in a namespace of its own


def probe_answer(returncode: int, stderr: str, where: str) -> bool:
    """What the probe's exit says: the kernel has sch_netem (True), has not (False), or the probe could not run."""
    if returncode == 0:
        return True
    if "unknown" in stderr.lower():  # "Specified qdisc kind is unknown."
        return False
    raise LinkError(f"cannot probe the kernel for sch_netem ({where}): {stderr.strip() or f'exit {returncode}'}")


@functools.cache
def kernel_has_netem() -> bool:
    probe = ["unshare", "--net", "--", *PROBE]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LinkError(f"cannot probe the kernel for sch_netem (`{' '.join(probe)}`): {exc}") from None
    return probe_answer(done.returncode, done.stderr, f"`{' '.join(probe)}`, needs CAP_SYS_ADMIN and CAP_NET_ADMIN")


def choose(requested: str, has_netem: Callable[[], bool] = kernel_has_netem) -> tuple[Backend, str]:
    """The backend for NETEM_BACKEND=`requested`, and one line saying why it was chosen."""
    if requested not in CHOICES:
        raise ValueError(f"NETEM_BACKEND: unknown backend {requested!r} (choose from {', '.join(CHOICES)})")
    if requested != "auto":
        return BACKENDS[requested](), f"backend {requested} (forced by NETEM_BACKEND)"
    if has_netem():
        return NetemBackend(), "backend netem (auto: the kernel has sch_netem)"
    return UserspaceBackend(), "backend userspace (auto: the kernel has no sch_netem; tbf + NFQUEUE delayer)"
