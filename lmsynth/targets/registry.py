"""`open_target`: the implementation for a target URI (the implementations never import this module)."""

from __future__ import annotations

from pathlib import Path

from lmsynth.targets import schemes
from lmsynth.targets.base import Target


def open_target(uri: str) -> Target:
    """Return the target for `uri`: `hf://ORG/NAME`, `ms://ORG/NAME`, or a local folder (`file://` optional).

    Raises:
        TargetError: the URI is malformed or its extra is not installed.
    """
    scheme = schemes.scheme_of(uri)
    if scheme == schemes.HF:
        from lmsynth.targets.hf import HfTarget

        return HfTarget.from_uri(uri)
    if scheme == schemes.MS:
        from lmsynth.targets.modelscope import ModelScopeTarget

        return ModelScopeTarget.from_uri(uri)
    from lmsynth.targets.local import LocalTarget

    return LocalTarget(Path(schemes.folder_of(uri)))
