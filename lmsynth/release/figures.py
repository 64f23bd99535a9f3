"""Figures of a release: per subset, the preference-score and response-length distributions as PNG.

Drawn from histograms accumulated while the shards are written (never from the records in memory), with
matplotlib's Agg backend, a fixed size and dpi, and no `Software` metadata, so the same counts give the
same PNG bytes.
"""

from __future__ import annotations

from pathlib import Path


FIGSIZE = (6.4, 3.6)
DPI = 100
SCORE_FIGURE = "preference-score-distribution"
LENGTH_FIGURE = "response-length-distribution"


def plot_scores(path: Path, *, hist: list[int], failed: int, title: str) -> Path:
    """Bar chart of judge ratings 0–10; unparseable ratings are counted in the title, not plotted."""
    labels = [str(i) for i in range(len(hist))]
    return _bars(
        path,
        labels,
        hist,
        title=f"{title}: preference scores (unparseable: {failed:,})",
        xlabel="judge rating (0-10)",
    )


def plot_lengths(path: Path, *, hist: list[int], bin_width: int, title: str) -> Path:
    """Histogram of response lengths in tokens; the last bar collects everything beyond the range."""
    labels = [str(i * bin_width) for i in range(len(hist) - 1)] + [f">={(len(hist) - 1) * bin_width}"]
    return _bars(path, labels, hist, title=f"{title}: response length", xlabel="response tokens (bin start)")


# Private helpers


def _bars(path: Path, labels: list[str], values: list[int], *, title: str, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": "lmsynth", "font.family": "DejaVu Sans"}):
        fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
        try:
            ax.bar(range(len(values)), values, color="#4C72B0")
            step = max(1, len(labels) // 8)
            ax.set_xticks(range(0, len(labels), step), labels[::step], fontsize=8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("responses")
            ax.set_title(title, fontsize=10)
            fig.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
        finally:
            plt.close(fig)
    return path
