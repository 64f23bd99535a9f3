"""The release builder: manifests, Parquet shards, cards, figures, encryption, leak guard, publish, verification.

What a built tree holds and how it is checked is the tree contract's (`lmsynth.tree`), shared with the targets.
"""
