"""Fixtures: the HF and ModelScope stand-ins, served on the sockets reserved before any client import."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hub import endpoints
from tests.hub.hf_server import HubStandIn, HubState


@pytest.fixture(scope="session")
def hf_standin() -> Iterator[HubStandIn]:
    """The HF Hub stand-in on the endpoint `HF_ENDPOINT` names."""
    endpoints.reserve_hub_endpoints()
    server = HubStandIn(sock=endpoints.HF_SOCKET).start()
    yield server
    server.stop()


@pytest.fixture
def hf_hub(hf_standin: HubStandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubState]:
    """A fresh, empty hub for one test, with fast retries and a write token set."""
    hf_standin.state.reset()
    monkeypatch.setenv("LMSYNTH_HUB_RETRY_BASE_S", "0.01")
    monkeypatch.setenv("HF_TOKEN", "hf_test_write_token_123456")
    yield hf_standin.state
    hf_standin.state.reset()
