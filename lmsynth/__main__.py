"""`python -m lmsynth` runs the CLI."""

from lmsynth.cli import main


if __name__ == "__main__":
    main()
