#!/usr/bin/env bash
# Install only what `lmsynth release`, `publish` and `verify` need into the current Python (e.g. a CI runner's):
# lmsynth's base dependencies and the ModelScope client, as a regular (not editable) install: the wheel carries the
# shipped release/, cards/ and pipelines/, and the checkout's own copies win when run from it (the project folder).
# No torch, no vLLM: a release builds from finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q -c scripts/constraints.txt ".[modelscope]"
