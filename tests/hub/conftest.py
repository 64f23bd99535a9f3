"""Fixtures: the HF and ModelScope stand-ins, served on the sockets reserved before any client import."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hub import endpoints
from tests.hub.hf_server import HubStandIn, HubState
from tests.hub.ms_server import MsStandIn, MsState


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


@pytest.fixture(scope="session")
def ms_standin() -> Iterator[MsStandIn]:
    """The ModelScope stand-in on the endpoint `MODELSCOPE_ENDPOINT` names."""
    endpoints.reserve_hub_endpoints()
    server = MsStandIn(sock=endpoints.MS_SOCKET).start()
    yield server
    server.stop()


@pytest.fixture
def ms_hub(ms_standin: MsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[MsState]:
    """A fresh ModelScope stand-in for one test, with a token, a private cache and fast retries."""
    ms_standin.state.reset()
    home = tmp_path_factory.mktemp("ms-home")
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms_test_token_abcdef")
    monkeypatch.setenv("MODELSCOPE_CACHE", str(home / "cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(home))
    monkeypatch.setenv("LMSYNTH_HUB_RETRY_BASE_S", "0.01")
    yield ms_standin.state
    ms_standin.state.reset()


# The release tests' project folder (real v0.5 manifest over synthetic runs), for releases to the stand-ins.
from tests.release.conftest import project  # noqa: E402, F401
