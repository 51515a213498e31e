"""taskhub's ASGI app in the server role alone, as ``taskhub serve`` is, for the HTTP
rows under the ASGI servers (``uvicorn bench.asgi_app:app``): the config is the file
``TASKHUB_CONFIG`` names, as for the module-level ``taskhub.asgi:app``."""

from __future__ import annotations

import os

from taskhub.asgi import create_app

app = create_app(os.environ["TASKHUB_CONFIG"], role="serve")
