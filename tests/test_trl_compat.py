"""Exported folders pass TRL's own data utilities unchanged: the shapes SFTTrainer and DPOTrainer take."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsynth.export.sft_dpo import export_dpo, export_sft
from tests.test_export import RECORDS, write_recovered


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201 — transformers is imported lazily
    """A tiny word-level tokenizer with a chat template, built here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "<|end|>": 2}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trl")
    recovered = write_recovered(root / "recovered", RECORDS)
    export_sft(recovered, out_dir=root / "sft", field="multiturn")
    export_dpo(recovered, out_dir=root / "dpo")
    return root


def load(folder: Path, config: str):  # noqa: ANN201
    from datasets import load_dataset

    return load_dataset(str(folder), config, split="train", cache_dir=str(folder.parent / f"cache-{config}"))


class TestTrl:
    def test_sft_rows_are_conversational_and_render(self, exported: Path, tokenizer) -> None:  # noqa: ANN001
        from trl.data_utils import apply_chat_template, is_conversational

        ds = load(exported / "sft", "sft")
        assert ds.column_names == ["messages"]
        texts = []
        for example in ds:
            assert is_conversational(example)
            texts.append(apply_chat_template(example, tokenizer)["text"])
        assert texts[0] == "<|user|>質問1<|end|><|assistant|>c1-r1<|end|>"
        assert (
            texts[-1] == "<|user|>質問8<|end|><|assistant|>c8-r1<|end|><|user|>続き8<|end|><|assistant|>c8-t2<|end|>"
        )

    def test_dpo_rows_are_explicit_prompt_preferences(self, exported: Path, tokenizer) -> None:  # noqa: ANN001
        from trl.data_utils import apply_chat_template, is_conversational, maybe_extract_prompt

        ds = load(exported / "dpo", "dpo")
        assert ds.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected"]
        example = ds[0]
        assert is_conversational(example)
        # The prompt is already explicit: TRL's extraction leaves the row as it is.
        assert maybe_extract_prompt(example) == example
        rendered = apply_chat_template(example, tokenizer)
        assert rendered == {
            "prompt": "<|user|>質問1<|end|><|assistant|>",
            "chosen": "c1-r1<|end|>",
            "rejected": "c1-r0<|end|>",
        }

    def test_dataset_level_map_matches_trainer_preprocessing(self, exported: Path, tokenizer) -> None:  # noqa: ANN001
        from trl.data_utils import apply_chat_template, maybe_extract_prompt

        ds = (
            load(exported / "dpo", "dpo")
            .map(maybe_extract_prompt)
            .map(apply_chat_template, fn_kwargs={"processing_class": tokenizer})
        )
        assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
        assert all(isinstance(p, str) and p.endswith("<|assistant|>") for p in ds["prompt"])
