"""README.md and docs/ link to each other by relative paths and #anchors; a moved page or renamed heading must
not leave a dead link behind, and the README's first two commands are what CI and newcomers run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "bench" / "HISTORY.md"]
README_COMMANDS = [
    "bash scripts/install.sh && .venv/bin/lmsynth demo",
    "bash scripts/install.sh && .venv/bin/python -m pytest",
]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(markdown: str) -> list[str]:
    """Link targets outside code, without the external ones (http, https, mailto)."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", markdown))
    return [t for t in _LINK.findall(prose) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and (dest.is_dir() or anchor not in anchors(dest.read_text(encoding="utf-8"))):
            dead.append(f"{target}: no heading with anchor #{anchor}")
    return dead


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert dead_links(page) == []


def test_readme_links_every_docs_page() -> None:
    readme = relative_links((ROOT / "README.md").read_text(encoding="utf-8"))
    linked = {t.partition("#")[0] for t in readme}
    assert DOCS and {f"docs/{p.name}" for p in DOCS} <= linked


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert first is not None
    assert first.group(1).splitlines() == README_COMMANDS
    assert text.index("```bash") < text.index("\n## ")  # first thing after the title


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Using the original LMSYS-Chat-1M-Synth release", "using-the-original-lmsys-chat-1m-synth-release"),
        ("Under `--ray`", "under---ray"),
        ("What `--out` may replace", "what---out-may-replace"),
        ("Ctrl-C and SIGTERM", "ctrl-c-and-sigterm"),
        ("Source, `prepare` and the decryption key", "source-prepare-and-the-decryption-key"),
        ("Engines: one server per model per run", "engines-one-server-per-model-per-run"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_dead_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Some section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#some-section) [ok](#here) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad](other.md#nope) `[code](missing.md)`\n\n## Here\n\n"
        "```\n[fenced](missing.md)\n```\n",
        encoding="utf-8",
    )
    assert dead_links(page) == ["missing.md: no such file", "other.md#nope: no heading with anchor #nope"]
