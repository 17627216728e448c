"""Fixtures for every test folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest


def child_pids(parent: int) -> list[int]:
    """Live processes whose parent is `parent` (from /proc; Linux only, like the rest)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the command name may hold spaces
        except OSError:  # the process left while we looked
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


@pytest.fixture(scope="session", autouse=True)
def reap_children():
    """Whatever a test started and left running (a controller, a worker) is killed when the
    session ends, so a failed test never leaves processes holding ports or files."""
    yield
    leftovers = child_pids(os.getpid())
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    if leftovers:
        print(f"\nreaped {len(leftovers)} leftover child process(es): {leftovers}")


@pytest.fixture
def process_log(tmp_path):
    """A file for the output of the processes a test starts; its tail is printed at teardown,
    which pytest shows when the test failed."""
    path = tmp_path / "processes.log"
    with open(path, "w") as fh:
        yield fh
    print(path.read_text()[-20000:])
