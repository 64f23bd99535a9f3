"""Every test runs with its caches, HF home and GnuPG home under its own temporary folder."""

from __future__ import annotations

import logging
import os

import pytest


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


def pytest_configure(config: pytest.Config) -> None:
    """Point the hub clients at the local stand-ins before any test module imports them."""
    from tests.hub.endpoints import reserve_hub_endpoints

    reserve_hub_endpoints()
