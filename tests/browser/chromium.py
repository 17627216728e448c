"""Debian's Chromium as the browser tests launch it (Playwright never downloads a browser of its own)."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless, and none of Chromium's own traffic (updates, sync, safe browsing): the tests count every request.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
