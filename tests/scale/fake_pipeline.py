"""A small distilabel pipeline with a scripted LLM, for Ray tests that do not need the real pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilabel.models.llms.base import LLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration


class EchoLLM(LLM):
    """Answers each prompt with a deterministic function of it (n answers per prompt)."""

    @property
    def model_name(self) -> str:
        return "echo"

    def load(self) -> None:
        super().load()

    def generate(self, inputs: list[Any], num_generations: int = 1) -> list[dict[str, Any]]:
        out = []
        for conv in inputs:
            text = conv[-1]["content"]
            gens = [f"echo {k}: {text[::-1]}" for k in range(num_generations)]
            out.append(
                {
                    "generations": gens,
                    "statistics": {
                        "input_tokens": [len(text.split())] * num_generations,
                        "output_tokens": [len(g.split()) for g in gens],
                    },
                }
            )
        return out


def build_echo_pipeline(cache_dir: Path, n: int = 12, *, batch_size: int = 4) -> Pipeline:
    rows = [
        {"conversation_id": f"c{i:03d}", "instruction": f"question number {i} about topic {i % 5}"} for i in range(n)
    ]
    with Pipeline(name="echo", cache_dir=str(cache_dir)) as p:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=batch_size)
        gen = TextGeneration(name="generate", llm=EchoLLM(), num_generations=2, input_batch_size=batch_size)
        load >> gen
    return p
