"""lmsynth: build, judge and publish LMSYS-Chat-1M-Synth-style datasets."""

__version__ = "0.1.0"
