"""`python -m lmsynth` runs the CLI."""

from lmsynth.cli import main


main()
