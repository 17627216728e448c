"""The live view, /docs and the report page in a real browser: Debian's Chromium driven by Playwright.

A real ML run is brought up as a user brings one up (`make up MODE=ml CONFIG=configs/ml_ci.yaml`) and
seen where a user's browser sees it: the controller's port published on the host's 127.0.0.1. Every
request each page makes is recorded, and none may go anywhere but the stack (for the report, its own
server). Screenshots are kept in .e2e/artifacts/.
"""

from __future__ import annotations

import csv
import functools
import http.server
import shutil
import subprocess
import sys
import threading
import uuid

import pytest

from e2e.stack import REPO, Stack

from .chromium import CHROMIUM, FLAGS

WORKERS = 3
VIEWPORT = {"width": 1280, "height": 900}
# Installed in the page right after it loads: every value the state badge and the loss chart's point count take.
WATCH = """() => {
  window.seen = {states: [], points: []};
  const note = () => {
    const state = document.getElementById("state").textContent, points = Number(document.getElementById("loss-time").dataset.points);
    if (window.seen.states.at(-1) !== state) window.seen.states.push(state);
    if (window.seen.points.at(-1) !== points) window.seen.points.push(points);
  };
  new MutationObserver(note).observe(document.querySelector("main"), {subtree: true, childList: true, attributes: true,
                                                                     characterData: true});
  note();
}"""


@pytest.fixture(scope="module")
def run():
    """`make up` of a short ML run (its own project, token, port and runs folder); `make down` after."""
    stack = Stack(project=f"e2e-browser-{uuid.uuid4().hex[:6]}", config="configs/ml_ci.yaml", workers=WORKERS, mode="ml")
    try:
        stack.make("up")  # raises with make's output and the stack's logs if it fails
        address = stack.compose("port", "controller", "8000").stdout.strip()  # 127.0.0.1:<port>, as published
        yield stack, f"http://{address}"
    finally:
        down = stack.make("down", timeout=300, check=False)
        print(down.stdout, down.stderr)
        shutil.rmtree(stack.runs_dir.parent, ignore_errors=True)


def record(source) -> list[str]:
    """Every URL a page (or a whole browser context, its service worker included) requests from now on."""
    urls: list[str] = []
    source.on("request", lambda request: urls.append(request.url))
    return urls


def elsewhere(urls: list[str], origin: str) -> list[str]:
    return [u for u in urls if not u.startswith(origin + "/")]


def test_live_view_follows_the_run_until_it_finishes(run, browser, artifacts):
    stack, url = run
    page = browser.new_page(viewport=VIEWPORT)  # the page's own CSP stays on: the test evaluates no strings
    urls = record(page)

    page.goto(url + "/ui")
    page.wait_for_function("() => document.getElementById('state').textContent !== '…'", timeout=15_000)
    page.evaluate(WATCH)
    page.wait_for_function("() => document.getElementById('connection').textContent.startsWith('live')",
                           timeout=15_000)
    names = [f"{stack.project}-worker-{i}" for i in range(1, WORKERS + 1)]
    page.wait_for_function("names => names.every(n => [...document.querySelectorAll('#workers tbody th')]"
                           ".some(th => th.textContent === n))", arg=names, timeout=180_000)
    page.wait_for_function("() => Number(document.getElementById('loss-time').dataset.points) > 0", timeout=180_000)
    page.screenshot(path=artifacts / "ui-running.png")
    page.wait_for_function("() => document.getElementById('state').textContent === 'finished'", timeout=240_000)
    page.wait_for_function("() => document.getElementById('connection').textContent.startsWith('run over')",
                           timeout=15_000)
    page.screenshot(path=artifacts / "ui.png", full_page=True)

    seen = page.evaluate("window.seen")
    assert seen["states"][-1] == "finished" and "running" in seen["states"], seen
    growth = [p for p in seen["points"] if p > 0]
    assert len(growth) >= 2 and growth == sorted(growth), f"the loss chart did not gain points live: {seen}"
    # One row per incarnation: a worker the controller declared dead (a loaded machine) comes back as a second row.
    assert set(page.locator("#workers tbody th").all_inner_texts()) == set(names)
    assert "600 of 600 versions" in page.locator("#progress-text").inner_text()
    status = stack.status()
    with open(stack.runs_dir / status["run"]["id"] / "curve.csv", newline="") as fh:
        # the slice evaluations; the final one, on another set, is final_val_loss and not a point of the curve
        evaluated = [r["version"] for r in csv.DictReader(fh) if r["val_loss"] and r["val_set"] != "final"]
    shown = page.eval_on_selector_all("#val-table tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    assert shown == evaluated  # every slice evaluation the PS wrote, in order
    assert any("/ui/events" in u for u in urls), "the page did not use the event stream"
    assert elsewhere(urls, url) == []


def test_docs_lists_the_operations_without_internet(run, browser, artifacts):
    _, url = run
    page = browser.new_page(viewport=VIEWPORT)
    urls = record(page)

    page.goto(url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)

    paths = {p.replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/status", "/ui/state", "/ui/events", "/workers/register", "/ps/report"} <= paths, paths
    page.screenshot(path=artifacts / "docs.png")
    assert elsewhere(urls, url) == []


def serve(folder) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_report_page_installs_and_reopens_offline(run, playwright, artifacts, tmp_path):
    stack, _ = run
    stack.wait_for(lambda s: s["run"]["row_written"], timeout=240, what="the run's row")
    report = subprocess.run([sys.executable, "-m", "dist_llm_train", "report", "--runs", str(stack.runs_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    server = serve(stack.runs_dir / "report")
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    # A profile on disk, not an incognito context: Chromium installs nothing from incognito.
    context = playwright.chromium.launch_persistent_context(tmp_path / "profile", executable_path=CHROMIUM, args=FLAGS,
                                                            viewport=VIEWPORT)
    urls = record(context)
    page = context.new_page()
    try:
        page.goto(origin + "/index.html")
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        page.reload()
        assert page.evaluate("navigator.serviceWorker.controller !== null")
        installability = context.new_cdp_session(page).send("Page.getInstallabilityErrors")
        assert installability["installabilityErrors"] == []

        server.shutdown()
        server.server_close()
        context.set_offline(True)
        page.reload()

        assert "ml_ci" in page.locator("#h-glance ~ .scroll table tbody").inner_text()
        assert page.locator("#curves svg").count() == 2  # loss against time and against bytes, profile lan
        for image in page.locator("img").all():  # the PNGs load lazily: scrolled to, from the service worker
            image.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)",
                               timeout=10_000)
        page.screenshot(path=artifacts / "report.png", full_page=True)
    finally:
        context.close()
    assert elsewhere(urls, origin) == []
