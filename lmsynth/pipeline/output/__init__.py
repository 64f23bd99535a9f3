"""Run-folder output: records assembled from finished rows, the one part writer, and `gather` of shards."""
