"""The sidecar's handle on a container's namespace (netem/nshandle.py): taken only while the PID is
still the container's, it keeps naming that namespace after the process is gone, and says so."""

from __future__ import annotations

import os
import subprocess

import pytest

from dist_llm_train.netem.nshandle import NamespaceGone, NamespaceHandle


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_handle_names_the_process_namespace_and_outlives_the_process(sleeper):
    namespace = os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino
    handle = NamespaceHandle.open(sleeper.pid, lambda: True)
    assert handle.alive() and os.stat(handle.path).st_ino == namespace
    sleeper.kill()
    sleeper.wait()
    assert not handle.alive()
    assert os.stat(handle.path).st_ino == namespace  # still that namespace, whatever has the PID now
    handle.close()
    assert not handle.alive() and not os.path.exists(handle.path)


def test_a_pid_that_is_no_longer_the_containers_is_refused_and_nothing_leaks(sleeper):
    before = open_fds()
    with pytest.raises(NamespaceGone, match="no longer the container's"):
        NamespaceHandle.open(sleeper.pid, lambda: False)
    assert open_fds() == before


def test_an_exited_process_is_refused():
    proc = subprocess.Popen(["true"])
    proc.wait()
    before = open_fds()
    with pytest.raises(NamespaceGone, match="has exited"):
        NamespaceHandle.open(proc.pid, lambda: True)
    assert open_fds() == before


def test_commands_enter_through_the_handle(sleeper):
    handle = NamespaceHandle.open(sleeper.pid, lambda: True)
    try:
        # A child reads our descriptor by the path the sidecar gives nsenter.
        out = subprocess.run(["readlink", handle.path], capture_output=True, text=True, check=True).stdout.strip()
        assert out == os.readlink(f"/proc/{sleeper.pid}/ns/net")
    finally:
        handle.close()
