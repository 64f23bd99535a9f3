"""Where release trees go: a local git folder, the Hugging Face Hub (`hf://`), ModelScope (`ms://`), a gated HF repo.

A target stores a tree built elsewhere; it knows the tree contract (`lmsynth.tree`) and never the builder
(`lmsynth.release`). Retries (`_retry`, on `lmsynth.retry`'s policy) and credentials (`_auth`) are private here.
"""

from lmsynth.targets.base import PublishResult, Target, open_target


__all__ = ["PublishResult", "Target", "open_target"]
