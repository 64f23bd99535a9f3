from lmsynth.cli import main


main()
