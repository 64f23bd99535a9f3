"""The release builder: manifests, Parquet shards, cards, figures, encryption, MANIFEST.json, verification."""
