"""The browser files in static/: the live view's and the report's scripts and styles, and the vendored
swagger-ui of /docs (static/vendor/swagger-ui/README.md). Served by the controller, copied beside the
report; nothing a page loads comes from anywhere else."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """Short content hash: a URL that carries it can be cached for good."""
        return hashlib.sha256(self.body).hexdigest()[:12]


def load(*names: str) -> dict[str, Asset]:
    """The named files of static/ (paths under it), read once; a missing one is an error at start."""
    return {name: Asset(name, (STATIC_DIR / name).read_bytes(), MEDIA_TYPES[Path(name).suffix]) for name in names}
