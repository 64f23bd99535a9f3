"""`lmsynth run`: run a generation pipeline on a prepared folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmsynth import project
from lmsynth.cli.app import app, out


PipelineArg = Annotated[Path, typer.Argument(help="Pipeline YAML, e.g. pipelines/demo.yaml.")]
InputOpt = Annotated[Path, typer.Option("--input", help="A `lmsynth prepare` output folder.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run folder to write (records/, unsafe/, run.json).")]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Run only slice I of N (e.g. 2/3) for array jobs; merge with `lmsynth gather`."),
]
RayOpt = Annotated[bool, typer.Option("--ray", help="Run the steps on a Ray cluster (a local one by default).")]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Existing Ray cluster to join (implies --ray), e.g. HOST:6379.")
]
RayCpusOpt = Annotated[int | None, typer.Option("--ray-cpus", min=1, help="CPUs of a local Ray cluster.")]


@app.command("run")
def run(
    pipeline: PipelineArg,
    input_dir: InputOpt,
    out_dir: OutOpt,
    shard: ShardOpt = None,
    use_ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
) -> None:
    """Translate, generate, judge and select with the pipeline's models; rerunning resumes from the cache.

    \b
    Examples:
      lmsynth run pipelines/demo.yaml --input runs/prepared --out runs/demo
      lmsynth run pipelines/v0.5-gemma3.yaml --input prepared --out runs/v0.5
      lmsynth run pipelines/v0.5-gemma3.yaml --input prepared --out runs/v0.5-2of8 --shard 2/8
      lmsynth run pipelines/v0.5-gemma3.yaml --input prepared --out runs/v0.5 --ray-address HEAD:6379
    """
    from lmsynth.pipeline.executor.on_ray import RayOptions
    from lmsynth.pipeline.run import run_pipeline
    from lmsynth.pipeline.shard import ShardSpec, run_shard
    from lmsynth.progress import enabled

    ray = RayOptions(address=ray_address, num_cpus=ray_cpus) if (use_ray or ray_address) else None
    pipeline = pipeline if pipeline.exists() else project.find(pipeline)
    with enabled():
        if shard is not None:
            spec = ShardSpec.parse(shard)
            result = run_shard(pipeline, input_dir=input_dir, out_dir=out_dir, shard=spec, ray=ray)
        else:
            result = run_pipeline(pipeline, input_dir=input_dir, out_dir=out_dir, ray=ray)
    out.result(
        f"Ran {result.info.pipeline}",
        out=result.out_dir,
        records=result.records,
        unsafe=result.unsafe,
        fingerprint=result.fingerprint[:16],
        units_generated=sum(result.units_generated.values()),
        units_reused=sum(result.units_reused.values()),
    )
