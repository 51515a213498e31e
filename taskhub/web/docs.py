"""``GET /openapi.json`` and ``GET /docs``: the API described, and Swagger UI to try it.

Swagger UI's files are served by this server from the ``openapi-ui-bundles``
package, never from a CDN: the page works on a host without internet, and no
third-party script runs beside the API. Every path in the page is relative, so
it also works with the API mounted under a prefix.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from openapi_ui_bundles import swagger_ui

from taskhub.http import HttpRequest, HttpResponse
from taskhub.web.responses import not_found

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>taskhub API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="ui" data-spec="openapi.json"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""
# validatorUrl null: Swagger UI would otherwise send the spec's URL to validator.swagger.io.
INIT = b"""SwaggerUIBundle({
  url: document.getElementById("ui").dataset.spec,
  dom_id: "#ui",
  validatorUrl: null,
});
"""
# The page's own files, and their content types: nothing else is served.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}
CACHED = {"Cache-Control": "public, max-age=86400"}
HTML = "text/html; charset=utf-8"
# The page may load only what this server serves.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


class ApiDocs:
    """The document (encoded once) and the page with its files (read on first request)."""

    def __init__(self, spec: dict[str, object], assets: Path = swagger_ui.static_path) -> None:
        self.document = orjson.dumps(spec)
        self.assets = assets
        self._files: dict[str, bytes] = {"init.js": INIT}
        self._lock = asyncio.Lock()

    async def openapi(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, self.document)

    async def page(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, PAGE, dict(PAGE_HEADERS), HTML)

    async def asset(self, request: HttpRequest, name: str) -> HttpResponse:
        if name == "init.js":
            return HttpResponse(200, INIT, dict(CACHED), ASSETS["swagger-ui-bundle.js"])
        content_type = ASSETS.get(name)
        if content_type is None:
            return not_found(f"no such file: docs/{name}")
        return HttpResponse(200, await self._read(name), dict(CACHED), content_type)

    async def _read(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            async with self._lock:  # one read, off the event loop, whoever asks first
                data = self._files.get(name)
                if data is None:
                    data = self._files[name] = await asyncio.to_thread(
                        (self.assets / name).read_bytes
                    )
        return data
