"""Engines: one vLLM server per model per run, as a local process (`servers`) or a Ray actor (`ray_actors`)."""
