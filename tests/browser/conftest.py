"""Fixtures of the browser tests: Playwright driving Debian's Chromium (never a browser of its own)."""

from __future__ import annotations

import os
import shutil

import pytest

from e2e.stack import REPO

from .chromium import CHROMIUM, FLAGS

ARTIFACTS = REPO / ".e2e" / "artifacts"


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def playwright():
    """Playwright, or a loud failure: these tests run in the browser image (make test-browser)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright and Chromium: run them with `make test-browser`")
    if not os.path.isfile(CHROMIUM) or shutil.which("docker") is None:
        pytest.fail(f"the browser tests need {CHROMIUM} and the Docker CLI: run them with `make test-browser`")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def artifacts():
    """Screenshots land here (.e2e/artifacts, kept after the run, ignored by git)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
