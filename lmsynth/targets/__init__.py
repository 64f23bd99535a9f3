"""Where releases go: a local git folder, the Hugging Face Hub (`hf://`), ModelScope (`ms://`)."""

from lmsynth.targets.base import PublishResult, Target, open_target


__all__ = ["PublishResult", "Target", "open_target"]
