"""A tiny random Llama built in the test session, and one shared vLLM CPU engine over it.

Recipe (STACK): hidden 64, 2 heads (head_dim 32, the CPU attention's minimum), 2 layers, a 1000-token
byte-level BPE tokenizer trained here with `tokenizers`, a chat template that starts with BOS (so a second
BOS would show), and an explicit KV cache size. Builds in seconds, ~1 MB, no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ENGINE_ENV = {
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OMP_NUM_THREADS": "1",  # a thread per engine: two xdist workers share two cores (docs/engines.md)
}
_ENGINE: dict = {}


def build_tiny_llama(out: Path) -> Path:
    """Write a random tiny Llama with tokenizer and chat template to `out`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "The capital of France is Paris. What is two plus two? Tell me a joke about cats.",
        '{"rating": 7, "rationale": "good"} Rating: [[8]] 日本語の質問です。翻訳してください。',
    ] * 50
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", chat_template=CHAT_TEMPLATE
    )
    fast.save_pretrained(str(out))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def tiny_vllm_config(model_dir: Path, **over):
    from lmsynth.llm import VllmModelConfig

    data = {
        "model": str(model_dir),
        "dtype": "float32",
        "max_model_len": 512,
        "kv_cache_memory_bytes": 64 * 2**20,
        "enforce_eager": True,
    }
    return VllmModelConfig(**{**data, **over})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root holding the demo model, converted once per session (as `scripts/install.sh` does)."""
    from lmsynth.demo_model import ensure_demo_model

    root = tmp_path_factory.mktemp("smollm2-cache")
    ensure_demo_model(cache_dir=root)
    return root


@pytest.fixture(scope="session")
def engine_env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """Engine settings for the whole session (the engine outlives any one test's monkeypatch).

    One vLLM cache for the session's workers, its model-info check done once before any engine starts (as
    `scripts/install.sh` does for the demo model); otherwise the first engine of each worker pays it.
    """
    from lmsynth import locks
    from lmsynth.demo_model import cache_vllm_model_info

    saved = {k: os.environ.get(k) for k in [*ENGINE_ENV, "VLLM_CACHE_ROOT"]}
    os.environ.update(ENGINE_ENV)
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "vllm-cache"
    os.environ["VLLM_CACHE_ROOT"] = str(cache)
    fd = locks.hold(cache.parent / "vllm-cache.lock")
    try:
        if not (cache / "checked").exists():
            cache_vllm_model_info(tiny_model_dir)
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "checked").touch()
    finally:
        os.close(fd)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path, engine_env):
    """One `VllmChatModel` over the tiny Llama for the whole session, shut down at the end."""
    from lmsynth.llm import VllmChatModel

    if "model" not in _ENGINE:
        model = VllmChatModel(tiny_vllm_config(tiny_model_dir))
        model.load()
        _ENGINE["model"] = model
    yield _ENGINE["model"]
    if "model" in _ENGINE:
        _ENGINE.pop("model").close()
