"""Where the traced rows' spans go: an OTLP/HTTP endpoint in the harness that counts what
it receives and drops it, as a collector that keeps up would (the exporter's work, its
protobuf encoding and its POSTs, is taskhub's cost; the collector's is not)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


def environment(endpoint: str) -> dict[str, str]:
    """The standard variables that send a taskhub process's spans to ``endpoint``."""
    return {
        "OTEL_SERVICE_NAME": "taskhub-bench",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
    }


class Sink:
    """``POST /v1/traces`` answered 200 at once; counts requests and bytes."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                self.rfile.read(size)
                with sink._lock:
                    sink.posts += 1
                    sink.bytes += size
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def spans_note(self) -> str:
        return f"{self.posts} OTLP batches, {self.bytes / 1e6:.1f} MB. "

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
