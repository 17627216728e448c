"""Fixtures for tests that bring up the real compose stack."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from .stack import REPO, Stack


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def docker_engine():
    """e2e tests need a Docker Engine and Compose plugin we support (the check `make up` runs
    first); without them they fail loudly, with its one-line reason, instead of skipping."""
    check = subprocess.run([REPO / "docker" / "check-versions.sh"], capture_output=True, text=True)
    if check.returncode:
        pytest.fail(f"the e2e tests need them (make test-e2e): {check.stderr.strip()}")


@pytest.fixture
def make_stack(request):
    """Factory of Stack objects; every stack is torn down (and its logs kept on failure)."""
    stacks: list[Stack] = []

    def factory(**kwargs) -> Stack:
        name = f"e2e-{request.node.name[:20].replace('_', '-').lower()}-{uuid.uuid4().hex[:6]}"
        stack = Stack(project=name, **kwargs)
        stacks.append(stack)
        return stack

    yield factory
    for stack in stacks:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(stack.logs())
        stack.down()
        shutil.rmtree(REPO / ".e2e" / stack.project, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
