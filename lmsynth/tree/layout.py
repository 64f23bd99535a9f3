"""Where each file lives inside a release tree: the one place the builder, recover, verify and the targets look.

```
README.md                                   index card (YAML header with configs:)
README_<config>.md                          one card per subset
data/<config>/train-00000-of-00001.parquet  public synthesized fields, no gated text
figures/<config>/<figure>.png               score and length distributions
dataset/<config>/lmsys-chat-1m-first-turn-user-instructions-ja.jsonl.gz.gpg          gated, default set
dataset/<config>/lmsys-chat-1m-first-turn-user-instructions-ja+unsafe.jsonl.gz.gpg   gated, + flagged
pipelines/<file>                            pipeline definitions and prompts used
MANIFEST.json                               sha256 + size of every other file, counts, fingerprints
```

Which files a tree may hold is `lmsynth.tree.manifest_json`'s rule: exactly those MANIFEST.json lists.

Public multiturn conversations carry an empty first user turn: its text is the gated JA instruction,
which recovery puts back.
"""

from __future__ import annotations

from pathlib import PurePosixPath


MANIFEST_FILE = "MANIFEST.json"
INDEX_CARD = "README.md"
DATA_DIR = "data"
FIGURES_DIR = "figures"
GATED_DIR = "dataset"
PIPELINES_DIR = "pipelines"
GATED_STEM = "lmsys-chat-1m-first-turn-user-instructions-ja"
GATED_SUFFIX = ".jsonl.gz.gpg"
SPLIT = "train"


def subset_card(config: str) -> str:
    """Path of a subset's own card."""
    return f"README_{config}.md"


def data_glob(config: str) -> str:
    """The `configs:` data_files glob of a subset; matches only its Parquet shards."""
    return f"{DATA_DIR}/{config}/{SPLIT}-*.parquet"


def shard_path(config: str, index: int, total: int) -> str:
    """Parquet shard name in the `datasets` convention."""
    return f"{DATA_DIR}/{config}/{SPLIT}-{index:05d}-of-{total:05d}.parquet"


def gated_path(config: str, *, unsafe: bool) -> str:
    """The encrypted JA instruction file of a subset (`+unsafe` adds the moderation-flagged ones)."""
    return f"{GATED_DIR}/{config}/{GATED_STEM}{'+unsafe' if unsafe else ''}{GATED_SUFFIX}"


def figure_path(config: str, figure: str) -> str:
    """A PNG figure of a subset."""
    return f"{FIGURES_DIR}/{config}/{figure}.png"


def is_encrypted(path: str) -> bool:
    """Encrypted files are the only ones allowed to hold gated text."""
    return PurePosixPath(path).name.endswith(".gpg")
