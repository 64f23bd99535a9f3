"""Where release trees go: a local git folder, the Hugging Face Hub (`hf://`), ModelScope (`ms://`), a gated HF repo.

A target stores a tree built elsewhere; it knows the tree contract (`lmsynth.tree`) and never the builder
(`lmsynth.release`). URI schemes are known here only (`schemes`); retries (`_retry`, on `lmsynth.retry`'s policy)
and credentials (`_auth`) are private here.
"""

from lmsynth.targets.base import CardLinks, PublishResult, Target
from lmsynth.targets.registry import open_target


__all__ = ["CardLinks", "PublishResult", "Target", "open_target"]
