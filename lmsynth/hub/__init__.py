"""What the Hugging Face Hub and ModelScope targets share: retries, error mapping, credentials, tree checks.

`publish_tree` (in `lmsynth.hub.publish`) publishes an already-built release tree to any target;
`publish_gated_repo` (in `lmsynth.hub.gated`) publishes recovered instructions to a gated HF repo.
"""
