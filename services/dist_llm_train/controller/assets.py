"""Serving the files of static/ (webassets.py): only those named, each at a URL that carries its
content hash, so a browser may keep it for good and a new version is a new URL."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import Response

from ..webassets import Asset

FOREVER = "public, max-age=31536000, immutable"


def url(prefix: str, asset: Asset) -> str:
    return f"{prefix}/{asset.name}?v={asset.digest}"


def serve(assets: dict[str, Asset], name: str, version: str | None) -> Response:
    """The file, cached for good when asked by its hash (an unversioned URL is revalidated); 404 for
    any name not in `assets`, so no path reaches the file system."""
    asset = assets.get(name)
    if asset is None:
        raise HTTPException(404, "no such file")
    return Response(asset.body, media_type=asset.media_type,
                    headers={"Cache-Control": FOREVER if version == asset.digest else "no-cache",
                             "X-Content-Type-Options": "nosniff"})
