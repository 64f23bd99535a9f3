"""One local Ray cluster per test worker for the tests that drive Ray in-process."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmsynth.pipeline.executor.on_ray import RayOptions, ray_init_kwargs


# Ray's settings for the cluster and its driver. HOME gets Ray's files; the paths stay short (Ray's unix
# sockets live under the session folder, 108-byte limit).
def _ray_settings(root: Path) -> dict[str, str]:
    return {"HOME": str(root / "home"), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="session")
def ray_session(engine_env) -> Iterator[Path]:
    """A 2-CPU cluster started once, as `lmsynth.pipeline.executor.on_ray.ray_cluster` starts one.

    A start and stop cost several seconds of both cores; each test's `ray_cluster` finds this one running and
    leaves it running. Its workers inherit the engine settings (`engine_env`) as a run's cluster would. Tests
    that run `lmsynth run --ray` as a command start their own cluster, and that start is part of what they test.
    """
    import ray

    root = Path(tempfile.mkdtemp(prefix="lmray", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:  # the settings for the start only; each test sets its own
        for name, value in _ray_settings(root).items():
            mp.setenv(name, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(**ray_init_kwargs(RayOptions(num_cpus=2, temp_dir=str(root / "r"))))
    yield root
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def ray_env(ray_session: Path, monkeypatch: pytest.MonkeyPatch) -> RayOptions:
    """The options of the session's cluster, with Ray's settings for this test's driver calls."""
    for name, value in _ray_settings(ray_session).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return RayOptions(num_cpus=2, temp_dir=str(ray_session / "r"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session cluster share one worker (`--dist loadgroup`), so the cluster starts once."""
    for item in items:
        if "ray_env" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the session's cluster after the last test that uses it: idle, it still takes about 6 % of a core.

    A later test that asks for `ray_env` again still works: lmsynth's `ray_cluster` starts a cluster of its own.
    """
    if "ray_env" in item.fixturenames and (nextitem is None or "ray_env" not in nextitem.fixturenames):
        import ray

        ray.shutdown()
