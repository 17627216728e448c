"""`dist-llm-train bench lighthouse`: Lighthouse's scores of the report page, against the targets.

Serves the report folder (runs/report, from `make report`) on a free loopback port, runs Lighthouse
(npm, LIGHTHOUSE_VERSION, installed into --lighthouse-dir on first use, never globally) with Debian's
Chromium headless, `--runs` times (scores move by a few points from run to run), and prints each
category's scores, their median and the target. Lighthouse's defaults apply: a phone-sized screen,
a throttled CPU and network. The full report of the last run lands in --lighthouse-dir/report.html.
`make lighthouse` runs this in the browser image (docker/Dockerfile.browser).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import statistics
import subprocess
import threading
from pathlib import Path

LIGHTHOUSE_VERSION = "12.8.2"  # the newest release that runs on Debian 13's Node.js 20 (13.x needs 22.19)
CATEGORIES = ("performance", "accessibility", "best-practices", "seo")
TARGETS = {"performance": 90, "accessibility": 90, "best-practices": 90}
CHROME_FLAGS = ("--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
                "--disable-sync --no-first-run --disable-dev-shm-usage")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report-dir", default="runs/report", help="the folder `make report` wrote")
    parser.add_argument("--lighthouse-dir", default=".lighthouse", help="where Lighthouse is installed and reports land")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--runs", type=int, default=3, help="Lighthouse runs (the median is judged)")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".webmanifest": "application/manifest+json", ".js": "text/javascript", ".md": "text/markdown"}

    def log_message(self, *args) -> None:
        pass


def install(folder: Path) -> Path:
    """The Lighthouse CLI of LIGHTHOUSE_VERSION in folder/node_modules (npm install there if absent)."""
    cli = folder / "node_modules" / "lighthouse" / "cli" / "index.js"
    package = folder / "node_modules" / "lighthouse" / "package.json"
    if not package.is_file() or json.loads(package.read_text()).get("version") != LIGHTHOUSE_VERSION:
        folder.mkdir(parents=True, exist_ok=True)
        print(f"lighthouse: npm install lighthouse@{LIGHTHOUSE_VERSION} into {folder}", flush=True)
        # npm's cache in the folder too: `make lighthouse` runs as the caller's uid, whose HOME may not exist here
        subprocess.run(["npm", "install", "--prefix", str(folder), "--cache", str(folder / "npm-cache"), "--no-audit",
                        "--no-fund", "--no-save", f"lighthouse@{LIGHTHOUSE_VERSION}"], check=True)
    return cli


def scores(report: dict) -> dict[str, int]:
    return {c: round(100 * report["categories"][c]["score"]) for c in CATEGORIES
            if report["categories"].get(c, {}).get("score") is not None}


def main(args: argparse.Namespace) -> int:
    report_dir, folder = Path(args.report_dir).resolve(), Path(args.lighthouse_dir).resolve()
    if not (report_dir / "index.html").is_file():
        print(f"lighthouse: no {report_dir / 'index.html'}: run `make report` first")
        return 2
    if shutil.which("node") is None or not Path(args.chromium).is_file():
        print(f"lighthouse: needs Node.js and {args.chromium} (the browser image: `make lighthouse`)")
        return 2
    cli = install(folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=report_dir))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    results: list[dict[str, int]] = []
    try:
        for i in range(args.runs):
            out = folder / "report"
            subprocess.run(["node", str(cli), url, "--quiet", "--output=json", "--output=html",
                            f"--output-path={out}", f"--only-categories={','.join(CATEGORIES)}",
                            f"--chrome-flags={CHROME_FLAGS}"],
                           check=True, env={**os.environ, "CHROME_PATH": args.chromium})
            report = json.loads((folder / "report.report.json").read_text())
            results.append(scores(report))
            print(f"run {i + 1}: " + ", ".join(f"{c} {s}" for c, s in results[-1].items()), flush=True)
    finally:
        server.shutdown()
        server.server_close()
    print(f"\nLighthouse {LIGHTHOUSE_VERSION} on {url} (mobile defaults), median of {len(results)} runs:")
    for category in CATEGORIES:
        values = [r[category] for r in results if category in r]
        if not values:
            continue
        target = TARGETS.get(category)
        verdict = "" if target is None else f"  (target >= {target}: {'met' if statistics.median(values) >= target else 'MISSED'})"
        print(f"  {category:15} {statistics.median(values):5.0f}{verdict}")
    for category, target in TARGETS.items():  # what costs a missed category its points (the last run)
        if results[-1].get(category, 0) >= target:
            continue
        for ref in report["categories"][category]["auditRefs"]:
            audit = report["audits"][ref["id"]]
            if ref.get("weight") and audit.get("score") is not None and audit["score"] < 0.9:
                print(f"  - {category}: {audit['title']} ({audit.get('displayValue') or audit['score']})")
    print(f"full report: {folder / 'report.report.html'}")
    return 0
