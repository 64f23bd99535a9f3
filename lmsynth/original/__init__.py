"""Reading the original LMSYS-Chat-1M-Synth release (`tokyotech-llm/lmsys-chat-1m-synth`) back into recovered records.

That release predates lmsynth: gzipped JSONL, the JA instructions in one OpenPGP file for all generations,
one public file per generation, no MANIFEST.json. `recover` recognises it by its files and writes the same
recovered folder as for lmsynth's own releases, so `export sft|dpo` reads it unchanged.
"""
