"""`lmsynth run`: run a generation pipeline on a prepared folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmsynth.cli.app import app, out


PipelineArg = Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. pipelines/demo.yaml.")]
InputOpt = Annotated[Path, typer.Option("--input", help="A `lmsynth prepare` output folder.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder to write (records/, unsafe/, run.json).")]


@app.command("run")
def run(pipeline: PipelineArg, input_dir: InputOpt, out_dir: OutOpt) -> None:
    """Translate, generate, judge and select with the pipeline's models; rerunning resumes from the cache.

    \b
    Examples:
      lmsynth run pipelines/demo.yaml --input runs/prepared --out runs/demo
      lmsynth run pipelines/v0.5-gemma3.yaml --input prepared --out runs/v0.5
    """
    from lmsynth.pipeline.run import run_pipeline
    from lmsynth.progress import enabled

    with enabled():
        result = run_pipeline(pipeline, input_dir=input_dir, out_dir=out_dir)
    out.result(
        f"Ran {result.info.pipeline}",
        out=result.out_dir,
        records=result.records,
        unsafe=result.unsafe,
        fingerprint=result.fingerprint[:16],
        units_generated=sum(result.units_generated.values()),
        units_reused=sum(result.units_reused.values()),
    )
