"""Every test runs with its caches, HF home and GnuPG home under its own temporary folder; hub stand-ins."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import pytest

from tests.engine_fixtures import (  # noqa: F401  (one of each per session)
    engine_env,
    smollm2_cache,
    tiny_engine,
    tiny_model_dir,
)
from tests.hub import endpoints
from tests.hub.hf_server import HubStandIn, HubState
from tests.hub.ms_server import MsStandIn, MsState


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail the run when `--dist loadgroup` no longer groups: each group's tests share an engine or a release.

    pytest-xdist marks a grouped test by suffixing its node id with `@group` on the worker; pytest 9.2 drops
    that suffix without a word (pytest-xdist#1386), and the groups spread over every worker, each one paying
    for the shared engine again.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid.rsplit("]", 1)[-1]]
    if lost:
        message = f"--dist loadgroup does not group {lost[0]} (pytest {pytest.__version__})"
        print(f"ERROR: {message}", file=sys.__stderr__, flush=True)  # a worker's exception reaches no report
        raise pytest.UsageError(message)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Code under test may write os.environ directly (an engine start sets HF_HUB_OFFLINE): undo it after each test.
    saved = dict(os.environ)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("LMSYNTH_CACHE", str(home / "cache"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "hf" / "datasets"))
    monkeypatch.setenv("GNUPGHOME", str(home / "gnupg"))
    monkeypatch.delenv("LMSYNTH_PASSPHRASE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import lmsynth.constants as constants

    monkeypatch.setattr(constants, "CACHE_DIR", home / "cache")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated_logging() -> None:
    """Drop root-logger handlers a test (or a library it ran) installed: they hold that test's captured stderr."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)


# The HF and ModelScope stand-ins, served on the sockets reserved before any client import. Defined once here:
# each definition of a session fixture would start its own server on the same socket.


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
    # The hub is reachable: a session engine on this worker set offline mode for its own start.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # huggingface_hub reads either
        monkeypatch.delenv(name, raising=False)
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


def pytest_configure(config: pytest.Config) -> None:
    """Point the hub clients at the local stand-ins before any test module imports them."""
    from tests.hub.endpoints import reserve_hub_endpoints

    reserve_hub_endpoints()
