"""Reserve the stand-in hubs' addresses before any hub client is imported.

`huggingface_hub`, `datasets` and `modelscope` read their endpoints once, at import. The root conftest
calls `reserve_hub_endpoints()` from `pytest_configure`, before collection imports any test module: it
binds one socket per stand-in on 127.0.0.1 (port 0) and points `HF_ENDPOINT` / `MODELSCOPE_ENDPOINT` at
them. The sockets do not listen until the session fixtures in `tests/hub/conftest.py` serve on them, so a
test that talks to a hub without the fixture gets "connection refused" and no test can reach a real hub.
"""

from __future__ import annotations

import os
import socket


HF_SOCKET: socket.socket | None = None
MS_SOCKET: socket.socket | None = None


def reserve_hub_endpoints() -> None:
    """Bind the two sockets and export the endpoint variables (idempotent)."""
    global HF_SOCKET, MS_SOCKET
    if HF_SOCKET is not None:
        return
    HF_SOCKET = _bind()
    MS_SOCKET = _bind()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HF_SOCKET.getsockname()[1]}"
    os.environ["MODELSCOPE_ENDPOINT"] = f"http://127.0.0.1:{MS_SOCKET.getsockname()[1]}"
    # Uploads must use the LFS protocol the stand-in speaks, not a Xet endpoint.
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["MODELSCOPE_UPLOAD_CACHE_ENABLED"] = "false"


# Private helpers


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock
