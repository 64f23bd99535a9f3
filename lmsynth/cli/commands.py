"""Every command, registered on the shared `app` and listed in the order data flows through them.

Each `lmsynth.cli.<area>` module registers its commands on `app`; importing them here keeps `lmsynth --help`
complete while heavy libraries are imported only inside the commands that use them.
"""

from lmsynth.cli import demo, pipeline, release, scale, source, user  # noqa: F401  (registers commands)
from lmsynth.cli.app import app


# `lmsynth --help` lists the commands in the order data flows through them (the `export` group comes last).
FLOW = ["prepare", "key", "run", "gather", "estimate", "release", "verify", "publish", "recover", "demo", "version"]
app.registered_commands.sort(key=lambda c: FLOW.index(c.name) if c.name in FLOW else len(FLOW))

__all__ = ["app"]
