"""The `run_report.json` model: what one run (or a gathered set of shard runs) cost, per step."""

from __future__ import annotations

from pydantic import Field

from lmsynth.config import StrictModel


RUN_REPORT_FILE = "run_report.json"
REPORT_VERSION = 1


class StepReport(StrictModel):
    """The cost of one pipeline step, summed over its batches."""

    step: str
    batches: int = Field(0, ge=0)
    requests: int = Field(0, ge=0, description="Prompts sent to the LLM (one per instruction and step).")
    generations: int = Field(0, ge=0, description="Outputs received (requests × n for n-sample steps).")
    input_tokens: int = Field(0, ge=0, description="Prompt tokens, counted once per request.")
    output_tokens: int = Field(0, ge=0, description="Generated tokens over all outputs.")
    failures: int = Field(0, ge=0, description="Answers that could not be read, after every re-ask.")
    retries: int = Field(0, ge=0, description="Requests sent again after an error (server backend).")
    reasks: int = Field(0, ge=0, description="Prompts asked again because their answer could not be read.")
    busy_s: float = Field(0.0, ge=0, description="Seconds spent inside this step's model calls.")
    span_s: float = Field(
        0.0, ge=0, description="Seconds from the step's first model call to the end of its last (hand-offs included)."
    )
    units_invalid: int = Field(
        0, ge=0, description="Cache units that failed their proof (checksum, key, format): dropped and recomputed."
    )


class EngineReport(StrictModel):
    """One engine server start (`lmsynth.pipeline.engines.servers`): once per served model and run."""

    model: str = Field(description="The model's key in the pipeline YAML.")
    start_s: float | None = Field(None, ge=0, description="Seconds from launch to a healthy server; None: never.")


class RunReport(StrictModel):
    """`run_report.json`: the cost of one run (or of a gathered set of shard runs)."""

    version: int = REPORT_VERSION
    pipeline: str | None = None
    fingerprint: str | None = None
    shard: str | None = Field(None, description="`I/N` for a shard run; None for a whole or gathered run.")
    instructions: int = Field(ge=0, description="Input instructions this run covered: what `estimate` scales.")
    records: int = Field(0, ge=0, description="Records written.")
    wall_time_s: float = Field(ge=0)
    startup_s: float = Field(0.0, ge=0, description="Seconds until the first batch finished (engine start).")
    gpus: int = Field(0, ge=0, description="GPUs visible to the run (0 on the CPU).")
    gpu_hours: float = Field(0.0, ge=0)
    runs: int = Field(1, ge=1, description="How many runs this report sums (shards gathered).")
    steps: list[StepReport] = Field(default_factory=list)
    engines: list[EngineReport] = Field(default_factory=list, description="Engine servers started by the run.")
    engine_wait_s: float = Field(
        0.0, ge=0, description="Wall seconds with an engine starting or a model call in flight (waiting on it)."
    )
    lmsynth_s: float = Field(0.0, ge=0, description="The rest of the wall time: lmsynth and distilabel alone.")
    units_invalid: int = Field(0, ge=0, description="Invalid cache units dropped and recomputed, over all steps.")

    @property
    def input_tokens(self) -> int:
        """Prompt tokens over all steps."""
        return sum(s.input_tokens for s in self.steps)

    @property
    def output_tokens(self) -> int:
        """Generated tokens over all steps."""
        return sum(s.output_tokens for s in self.steps)

    def step(self, name: str) -> StepReport:
        """The report of step `name` (an empty one when the step made no requests)."""
        return next((s for s in self.steps if s.step == name), StepReport(step=name))
