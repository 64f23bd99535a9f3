"""Export recovered records into TRL-ready folders: verbs in `build`, per-record rules in `rows`."""
