"""The report as a web page: runs/report/index.html, with interactive charts, that installs and works offline.

Beside index.html go style.css and chart.js (the same files as the controller's live view, /ui),
report.js (draws the charts from the data embedded in the page), the PNG plots, a web manifest with
its icons, and a service worker (sw.js) holding every one of these files. Served once over http
(`make report-serve`, or any static server), the page installs as an app and reopens without the
server; opened from the file system it works as a plain page (browsers run no service worker there).
Every text is escaped; the data sit in a <script type="application/json">, which browsers never run.
"""

from __future__ import annotations

import hashlib
import html
import json
import shutil
import struct
from pathlib import Path

import matplotlib.pyplot as plt

from ..results import atomic_write
from ..webassets import STATIC_DIR

COPIED = ("style.css", "chart.js", "report.js", "icon.svg")  # from static/, unchanged
ICONS = (192, 512)  # PNG sizes browsers want for an installed app
THEME = "#0b3d5c"
TITLE = "dist-llm-train results"


def write(out_dir: Path, index_html: str, also: list[str]) -> None:
    """index.html, the files it needs and the service worker, which keeps them and `also` (files of
    out_dir the page links to: results.md, the plots). The service worker goes last: it lists the others."""
    for name in COPIED:
        shutil.copyfile(STATIC_DIR / name, out_dir / name)
    for size in ICONS:
        draw_icon(out_dir / f"icon-{size}.png", size)
    atomic_write(out_dir / "manifest.webmanifest", json.dumps(manifest(), indent=2).encode())
    atomic_write(out_dir / "index.html", index_html.encode())
    files = ["index.html", "manifest.webmanifest", *COPIED, *(f"icon-{s}.png" for s in ICONS), *also]
    atomic_write(out_dir / "sw.js", service_worker(out_dir, files).encode())


def manifest() -> dict:
    return {"name": TITLE, "short_name": "dlt results", "description": "Results of dist-llm-train runs",
            "start_url": "./index.html", "scope": "./", "display": "standalone", "background_color": "#ffffff",
            "theme_color": THEME,
            "icons": [*({"src": f"icon-{s}.png", "sizes": f"{s}x{s}", "type": "image/png"} for s in ICONS),
                      {"src": "icon.svg", "sizes": "any", "type": "image/svg+xml"}]}


def service_worker(out_dir: Path, files: list[str]) -> str:
    """static/sw.js with its cache named after the files' contents: a new report is a new cache."""
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (out_dir / name).read_bytes())
    template = (STATIC_DIR / "sw.js").read_text()
    return (template.replace('"__CACHE__"', json.dumps(f"dlt-report-{digest.hexdigest()[:16]}"))
                    .replace('["__FILES__"]', json.dumps(["./", *files])))


def draw_icon(path: Path, size: int) -> None:
    """The app icon (static/icon.svg's design: a falling loss curve), as a PNG of size x size."""
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100, facecolor=THEME)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(0, 64)
    ax.set_ylim(64, 0)
    t = [i / 40 for i in range(41)]
    ax.plot([10 + 44 * x for x in t], [16 + 34 * (1 - (1 - x) ** 3) for x in t], color="white", linewidth=size / 26,
            solid_capstyle="round")
    ax.scatter([22, 38], [36.5, 46], s=(size / 9) ** 2, color="#f5b041", zorder=3)
    fig.savefig(path, dpi=100, facecolor=THEME)
    plt.close(fig)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (so the page reserves the space before the image loads)."""
    with open(path, "rb") as fh:
        header = fh.read(24)
    return struct.unpack(">II", header[16:24])


def table(headers: tuple[str, ...], rows: list[list[str]], caption: str, text_columns: int = 0) -> str:
    """A table whose first `text_columns` columns hold words (set left), the others figures."""
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=text" if i < text_columns else ""}>{html.escape(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def section(slug: str, title: str, body: str) -> str:
    return f'<section aria-labelledby="h-{slug}"><h2 id="h-{slug}">{html.escape(title)}</h2>{body}</section>'


def figure(out_dir: Path, file: str, title: str) -> str:
    """A PNG beside the page, with its size given so the page does not shift while it loads."""
    width, height = png_size(out_dir / file)
    return (f'<figure><img src="{html.escape(file)}" alt="{html.escape(title)}" width="{width}" height="{height}" '
            f'loading="lazy" decoding="async"><figcaption>{html.escape(title)}</figcaption></figure>')


def page(sections: list[str], charts: dict) -> str:
    """The whole page around the report's sections; `charts` is the interactive charts' data."""
    data = json.dumps(charts, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="description" content="Results of dist-llm-train runs: tables, loss curves, staleness, plots.">
<meta name="theme-color" content="{THEME}">
<title>{TITLE}</title>
<link rel="manifest" href="manifest.webmanifest">
<link rel="icon" href="icon.svg" type="image/svg+xml">
<link rel="apple-touch-icon" href="icon-192.png">
<link rel="stylesheet" href="style.css">
<script src="chart.js" defer></script>
<script src="report.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to the results</a>
<header><h1>dist-llm-train <span class="sub">results</span></h1>
<p class="connection"><a href="results.md">results.md</a></p></header>
<main id="main">
{"".join(sections)}
</main>
<footer><p>Written by <code>dist-llm-train report</code>. Installable, and readable offline once opened over http.</p></footer>
<script type="application/json" id="report-data">{data}</script>
</body>
</html>
"""
