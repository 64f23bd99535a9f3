"""The demo model's GGUF → safetensors conversion gives what transformers loads from the same GGUF.

A tiny random Llama GGUF (quantized like the real one, with a byte-level tokenizer) is converted and compared
tensor by tensor, after bfloat16 rounding, with transformers' own GGUF loading; the packaged SmolLM2 GGUF is
converted too and checked against the Llama model its config describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from lmsynth import demo_model
from lmsynth.errors import PipelineError


HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 64, 4, 2, 128, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
)
# How transformers' own loading differs from the converted folder on purpose: the folder names its class and
# dtype, and is neither quantized nor where the GGUF was.
CONFIG_DIFFERENCES = {"architectures", "_name_or_path", "dtype", "torch_dtype", "quantization_config"}


def write_tiny_gguf(path: Path, *, tied: bool) -> Path:
    """A 2-layer random Llama GGUF: Q4_1/Q8_0 matrices and F32 norms, as llama.cpp writes SmolLM2."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + list(bytes_to_unicode().values()) + ["Ġt", "he", "Ġthe"]
    head_dim = HIDDEN // HEADS
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.add_block_count(LAYERS)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(0)
    shapes = {"token_embd": (len(tokens), HIDDEN), "output_norm": (HIDDEN,)}
    if not tied:
        shapes["output"] = (len(tokens), HIDDEN)
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm": (HIDDEN,),
            f"blk.{i}.attn_q": (HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_k": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_v": (KV_HEADS * head_dim, HIDDEN),
            f"blk.{i}.attn_output": (HIDDEN, HEADS * head_dim),
            f"blk.{i}.ffn_norm": (HIDDEN,),
            f"blk.{i}.ffn_gate": (FFN, HIDDEN),
            f"blk.{i}.ffn_up": (FFN, HIDDEN),
            f"blk.{i}.ffn_down": (HIDDEN, FFN),
        }
    for name, shape in shapes.items():
        weights = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(f"{name}.weight", weights)
            continue
        qtype = gguf.GGMLQuantizationType.Q8_0 if name in ("token_embd", "output") else gguf.GGMLQuantizationType.Q4_1
        writer.add_tensor(f"{name}.weight", gguf.quants.quantize(weights, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_conversion_matches_transformers_gguf_loading(tmp_path: Path, tied: bool) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied)
    out = tmp_path / "converted"
    out.mkdir()
    demo_model._convert(gguf_path, out)

    reference = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=gguf_path.name, dtype=torch.float32)
    expected = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    if tied:
        del expected["lm_head.weight"]
    converted = load_file(str(out / "model.safetensors"))
    assert sorted(converted) == sorted(expected)
    for name, tensor in expected.items():
        assert converted[name].dtype == torch.bfloat16 and torch.equal(converted[name], tensor), name

    config = AutoConfig.from_pretrained(str(out)).to_dict()
    want = reference.config.to_dict()
    assert {k: v for k, v in config.items() if k not in CONFIG_DIFFERENCES} == {
        k: v for k, v in want.items() if k not in CONFIG_DIFFERENCES
    }
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is tied
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # The token ids are what transformers writes from the GGUF; its other fields are generate()'s defaults.
    generation = GenerationConfig.from_pretrained(str(out))
    ids = ("bos_token_id", "eos_token_id", "pad_token_id")
    assert {k: getattr(generation, k) for k in ids} == {k: getattr(reference.generation_config, k) for k in ids}

    tokenizer_dir = tmp_path / "tokenizer"
    AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf_path.name).save_pretrained(str(tokenizer_dir))
    for written in tokenizer_dir.iterdir():
        assert (out / written.name).read_bytes() == written.read_bytes(), written.name
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()


@pytest.mark.parametrize(
    ("gguf_name", "hf_name"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        ("blk.12.attn_output.weight", "model.layers.12.self_attn.o_proj.weight"),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
    ],
)
def test_gguf_names_map_to_hugging_face_llama_names(gguf_name: str, hf_name: str) -> None:
    assert demo_model._hf_name(gguf_name) == hf_name


@pytest.mark.parametrize("gguf_name", ["rope_freqs.weight", "blk.0.attn_q.bias", "blk.0.ssm_in.weight"])
def test_a_tensor_a_llama_has_no_place_for_is_refused(gguf_name: str) -> None:
    with pytest.raises(PipelineError, match="no place"):
        demo_model._hf_name(gguf_name)


@pytest.mark.xdist_group("smollm2")  # the session's conversion, shared with the demo's end-to-end test
def test_packaged_smollm2_converts_to_the_llama_its_config_describes(smollm2_cache: Path) -> None:
    """The real GGUF: every tensor the Llama model holds, in its shape, in bfloat16, and a usable tokenizer."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    folder = demo_model.ensure_demo_model(cache_dir=smollm2_cache)
    assert folder == smollm2_cache / "models" / f"smollm2-135m-instruct-v{demo_model.CONVERSION_VERSION}"
    assert [p.name for p in (smollm2_cache / "models").iterdir()] == [folder.name]  # no temporary folder left

    config = AutoConfig.from_pretrained(str(folder))
    assert config.architectures == ["LlamaForCausalLM"] and config.tie_word_embeddings
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (9, 3, 64)
    assert (config.vocab_size, config.bos_token_id, config.eos_token_id) == (49152, 1, 2)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == want
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert prompt.startswith("<|im_start|>system") and "<|im_start|>user\nHi<|im_end|>" in prompt


def test_vllm_keeps_the_architecture_check_that_install_sh_asks_for(engine_env) -> None:
    """`engine_env` ran `cache_vllm_model_info` (as install.sh does): vLLM kept its answer, and no engine asks again.

    Should vLLM stop keeping it there, the first `lmsynth demo` after an install pays the check again.
    """
    cache = Path(os.environ["VLLM_CACHE_ROOT"])
    (kept,) = (cache / "modelinfos").glob("*.json")
    assert kept.name == "vllm-model_executor-models-llama-LlamaForCausalLM.json"
    assert kept.stat().st_mtime <= (cache / "checked").stat().st_mtime  # before any engine of the session started
