"""The HTTP plumbing both stand-ins share: every verb goes to one `_dispatch(method)`, and no access log."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class DispatchingHandler(BaseHTTPRequestHandler):
    """Subclasses implement `_dispatch(method)` and route by path."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — stdlib signature
        pass

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")
