"""The release tree contract, below both the builder (`lmsynth.release`) and the targets (`lmsynth.targets`).

`layout` says where every file of a release tree lives; `manifest` holds the MANIFEST.json model, its one
writer (`write_manifest`) and its one check (`check_tree`), whose rule publish, verify and recover share.
This package imports nothing of lmsynth's other packages.
"""
