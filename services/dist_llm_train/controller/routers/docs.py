"""/docs: the OpenAPI page, with swagger-ui's files served by the controller (vendored under
static/vendor/swagger-ui, see its README), so it works without internet. /redoc is off: it would
need a second vendored bundle for the same information."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from ... import webassets
from ..assets import serve, url

router = APIRouter(include_in_schema=False)

SWAGGER = "vendor/swagger-ui/"
ASSETS = {asset.name: asset for asset in (
    replace(a, name=a.name.removeprefix(SWAGGER))
    for a in webassets.load(SWAGGER + "swagger-ui-bundle.js", SWAGGER + "swagger-ui.css", "icon.svg").values())}


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title}: API",
        swagger_js_url=url("/docs/static", ASSETS["swagger-ui-bundle.js"]),
        swagger_css_url=url("/docs/static", ASSETS["swagger-ui.css"]),
        swagger_favicon_url=url("/docs/static", ASSETS["icon.svg"]),
        swagger_ui_parameters={"validatorUrl": None})  # its default is a public validator: no outside requests


@router.get("/docs/static/{name}")
async def static(name: str, v: str | None = None) -> Response:
    return serve(ASSETS, name, v)
