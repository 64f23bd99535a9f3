"""CLI commands on the source side: `prepare` (instruction sets) and `key` (the decryption key)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmsynth.cli.app import SourceOpt, app, out


@app.command("prepare")
def prepare_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (replaced as a whole on success).")],
    source: SourceOpt = None,
    languages: Annotated[
        str, typer.Option("--languages", help="LMSYS `language` values to keep, comma-separated.")
    ] = "Japanese,English",
    rules: Annotated[
        Path | None, typer.Option("--rules", help="Template rules YAML. Default: the bundled template_rules.yaml.")
    ] = None,
) -> None:
    """Extract first user turns: keep languages, split off the moderation-flagged `unsafe` set, tag templates.

    \b
    Examples:
      lmsynth prepare --out runs/prepared
      lmsynth prepare --source lmsys/lmsys-chat-1m --out runs/prepared --languages Japanese,English
      lmsynth prepare --source exports/ --out runs/prepared --rules my_rules.yaml
    """
    from lmsynth.prepare import prepare
    from lmsynth.progress import enabled

    with enabled():
        res = prepare(source, out_dir=out_dir, languages=languages.split(","), rules_path=rules)
    s = res.stats
    templates = {f"template {name!r}": n for name, n in s.templates.items()}
    dropped = {f"dropped {reason}": n for reason, n in s.dropped.items()}
    out.result("Prepared", out=out_dir, total=s.total, kept=s.kept, unsafe=s.unsafe, pii=s.pii, **dropped, **templates)


@app.command("key")
def key_cmd(source: SourceOpt = None) -> None:
    """Print the decryption key (lmsynth-key-v1) computed from the source, and nothing else on stdout.

    \b
    The key is the SHA-256 over all rows sorted by conversation_id, each hashed as
    id + 0x1F + first message content + 0x1E (UTF-8). Progress goes to stderr.

    \b
    Examples:
      lmsynth key
      lmsynth key --source lmsys/lmsys-chat-1m > key.txt
    """
    from lmsynth.key import derive_key
    from lmsynth.progress import enabled

    with enabled():
        key = derive_key(source)
    out.raw(key.get_secret_value())
