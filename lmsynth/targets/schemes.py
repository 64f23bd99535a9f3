"""Target URIs: the one place that knows `hf://`, `ms://` and local folders (`file://` optional)."""

from __future__ import annotations

import re

from lmsynth.errors import TargetError


HF = "hf"
MS = "ms"
FILE = "file"
# For models that hold a target URI (a release manifest's `targets:`).
HF_URI_PATTERN = rf"^{HF}://"
MS_URI_PATTERN = rf"^{MS}://"
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def scheme_of(uri: str) -> str:
    """`hf`, `ms` or `file` (a folder, with or without `file://`).

    Raises:
        TargetError: another scheme.
    """
    scheme, sep, _ = uri.partition("://")
    if not sep:
        return FILE
    if scheme in (HF, MS, FILE):
        return scheme
    raise TargetError(uri, "unknown target scheme; use a folder, file://PATH, hf://ORG/NAME or ms://ORG/NAME")


def parse_repo_id(uri: str, scheme: str) -> str:
    """`ORG/NAME` from `<scheme>://ORG/NAME`.

    Raises:
        TargetError: the URI does not have that shape.
    """
    repo_id = uri.removeprefix(f"{scheme}://").strip("/")
    if not uri.startswith(f"{scheme}://") or not REPO_ID_PATTERN.fullmatch(repo_id):
        raise TargetError(uri, f"expected {scheme}://ORG/NAME")
    return repo_id


def folder_of(uri: str) -> str:
    """The folder a local target URI names."""
    return uri.removeprefix(f"{FILE}://")


def local_folder(uri: str) -> str | None:
    """The folder a local URI names (a path or `file://PATH`); None for a hub URI or any other URL."""
    if uri.startswith(f"{FILE}://"):
        return folder_of(uri)
    return None if "://" in uri else uri
