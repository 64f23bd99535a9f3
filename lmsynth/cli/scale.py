"""CLI commands for runs past one machine: `gather` (merge shard outputs) and `estimate` (cost projection)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lmsynth.cli.app import app, out


if TYPE_CHECKING:
    from rich.table import Table

    from lmsynth.pipeline.estimate import Estimate


@app.command(
    "gather",
    epilog="Example: lmsynth gather runs/v05/shard-1-of-3 runs/v05/shard-2-of-3 runs/v05/shard-3-of-3 "
    "--input runs/prepared --out runs/v05",
)
def gather_cmd(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Run folders of shards 1..N (`lmsynth run --shard I/N`).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder to write (replaced atomically).")],
    input_dir: Annotated[
        Path | None,
        typer.Option("--input", help="Prepared input folder whose order the records take. Default: the recorded one."),
    ] = None,
) -> None:
    """Merge shard run folders into one run folder; refuses missing, duplicated or mismatched shards."""
    from lmsynth.pipeline.output.gather import gather

    res = gather(shard_dirs, out_dir=out_dir, input_dir=input_dir)
    out.result(
        "Gathered shard runs",
        out=res.out_dir,
        shards=res.shards,
        records=res.records,
        unsafe=res.unsafe,
        order=res.order,
    )


@app.command("estimate", epilog="Example: lmsynth estimate runs/sample-1pct --instructions 500000 --replicas 8")
def estimate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished sample run folder (with run_report.json).")],
    instructions: Annotated[int, typer.Option("--instructions", min=1, help="Instructions of the full run.")],
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="Copies of the sample's setup side by side (shards).")
    ] = 1,
) -> None:
    """Project tokens, wall time and GPU-hours of the full run from a sample run's report."""
    from lmsynth.pipeline.estimate import estimate

    est = estimate(run_dir, instructions=instructions, replicas=replicas)
    out.stdout.print(_estimate_table(est))
    out.result(
        "Projected full run",
        instructions=f"{est.instructions:,} (sample {est.sample_instructions:,}, ×{est.scale:,.1f})",
        output_tokens=f"{est.output_tokens:,}",
        wall_time=f"{est.wall_hours:,.2f} h on {est.replicas} replica(s)",
        gpu_hours=f"{est.gpu_hours:,.2f} ({est.gpus_per_replica} GPU(s) per replica)",
    )


# Private helpers


def _estimate_table(est: Estimate) -> Table:
    from rich.table import Table

    table = Table(title="Projection per step", title_justify="left")
    for col in ("step", "requests", "input tokens", "output tokens", "failures", "busy hours"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in est.steps:
        table.add_row(
            s.step,
            f"{s.requests:,}",
            f"{s.input_tokens:,}",
            f"{s.output_tokens:,}",
            f"{s.failures:,}",
            f"{s.busy_hours:,.2f}",
        )
    return table
