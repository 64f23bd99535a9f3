"""How one LLM call samples: a contract shared by the stages, the model backends and the records (`run.json`)."""

from __future__ import annotations

from pydantic import Field

from lmsynth.config import StrictModel


class SamplingConfig(StrictModel):
    """Sampling settings of one LLM call; every field is explicit so no engine default leaks in."""

    max_tokens: int = Field(4096, ge=1, description="Hard cap on generated tokens (vLLM would default to 16).")
    n: int = Field(1, ge=1, le=64, description="Completions per prompt.")
    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = Field(None, description="Per-request seed; None lets the engine choose.")
