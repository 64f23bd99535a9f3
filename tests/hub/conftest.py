"""Fixtures of the hub tests (the stand-in servers themselves are session fixtures in tests/conftest.py)."""

# The release tests' project folder (real v0.5 manifest over synthetic runs), for releases to the stand-ins.
from tests.release.conftest import project, small_project  # noqa: F401
