"""The HTTP plumbing both stand-ins share: one `_dispatch(method)` for every verb, and the server's lifecycle."""

from __future__ import annotations

import socket
import struct
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


# An injected "status" that answers nothing: the connection is reset (RST) instead.
RESET = 0


class DispatchingHandler(BaseHTTPRequestHandler):
    """Subclasses implement `_dispatch(method)` and route by path."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — stdlib signature
        pass

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """Drop the connection with a TCP reset, as a flaky proxy or load balancer does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

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


class _Server(ThreadingHTTPServer):
    """A client that gives up on a request mid-answer (a retry, a timeout on a loaded machine) is not an error."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class StandInServer:
    """Serves `handler` over a state kept in `root` (or a fresh temporary folder), on `sock` or a fresh port.

    Subclasses set `state_type` and `prefix`; `start()` serves in a daemon thread, `stop()` cleans up.
    """

    state_type: Any
    prefix: str

    def __init__(self, handler: type[DispatchingHandler], *, root: Path | None, sock: socket.socket | None) -> None:
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix=self.prefix)
        self.state = self.state_type(Path(root or self._tmp.name))
        handler = type("Handler", (handler,), {"state": self.state})
        self.httpd = _Server(("127.0.0.1", 0), handler, bind_and_activate=sock is None)
        if sock is not None:  # a socket reserved before the clients were imported (tests/hub/endpoints.py)
            self.httpd.socket.close()
            self.httpd.socket = sock
            self.httpd.server_address = sock.getsockname()
            self.httpd.server_activate()
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        handler.endpoint = self.endpoint

    def start(self):  # noqa: ANN201 — returns the subclass
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._tmp:
            self._tmp.cleanup()
