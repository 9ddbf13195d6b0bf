"""Batch tokenization through the Rust backend equals the tokenizer's own call (real tokenizers:
a random CLIP's byte-level BPE, a random BERT's WordPiece, all-MiniLM-L6-v2's)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import AutoTokenizer

from encoders.random_models import make_random_bert, make_random_clip
from encoders.tokens import BatchTokenizer
from pipelines.training.finetune import default_text_model

TEXTS = [
    "a red bicycle leaning on a wall",
    "",
    "   ",
    "Ünïcödé café naïve — crème brûlée",
    "emoji 🚲🚲 and CJK 自行车 text",
    "a very long caption " * 60,  # past every max_length below
    "MiXeD CaSe, punctuation!!! (and) [brackets] 12,345.67",
    "tabs\tand\nnewlines\r\n",
]


def tokenizers(tmp_path):
    clip = make_random_clip(tmp_path / "clip", seed=0)
    bert = make_random_bert(tmp_path / "bert")
    return [
        (AutoTokenizer.from_pretrained(clip), 77, ("input_ids", "attention_mask")),
        (AutoTokenizer.from_pretrained(bert), 32, ("input_ids", "attention_mask", "token_type_ids")),
        (AutoTokenizer.from_pretrained(default_text_model()), 128, ("input_ids", "attention_mask", "token_type_ids")),
    ]


@pytest.mark.parametrize("padding", [True, "max_length"])
def test_backend_ids_equal_the_tokenizers_own_call(tmp_path, padding):
    for tok, max_length, keys in tokenizers(tmp_path):
        batch = BatchTokenizer(tok, max_length, keys)
        for texts in (TEXTS, TEXTS[:1], list(reversed(TEXTS))):
            ours = batch._encode(texts, padding)  # the backend path itself, not the checked call
            own = tok(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
            assert set(ours) == set(keys)
            for k in keys:
                assert torch.equal(ours[k], own[k]), (type(tok).__name__, padding, k)
            assert ours["input_ids"].shape[1] == (max_length if padding == "max_length" else own["input_ids"].shape[1])
        assert batch._source is not None and batch(TEXTS, padding)["input_ids"].shape[0] == len(TEXTS)
        assert batch._source is not None  # the first call's check passed: still on the backend


def test_a_backend_that_differs_falls_back_to_the_tokenizers_call(tmp_path, caplog):
    tok = AutoTokenizer.from_pretrained(make_random_clip(tmp_path / "clip", seed=0))
    batch = BatchTokenizer(tok, 77, ("input_ids", "attention_mask"))
    spec = json.loads(batch._source)
    spec["normalizer"] = None  # no lowercasing: "MiXeD" tokenizes differently
    batch._source = json.dumps(spec)
    with caplog.at_level(logging.WARNING, logger="encoders.tokens"):
        out = batch(TEXTS, True)
    assert "differ" in caplog.text and batch._source is None
    own = tok(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    assert torch.equal(out["input_ids"], own["input_ids"])
    assert torch.equal(batch(TEXTS, True)["attention_mask"], own["attention_mask"])
