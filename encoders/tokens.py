"""Batch tokenization through a fast tokenizer's Rust backend: the ids of the tokenizer's own call.

Why not just call the transformers tokenizer: its call converts every row's Encoding into a dict
of Python lists (`_convert_encoding`) before building tensors, which at catalogue caption
lengths costs more than the Rust encoding itself (docs/performance.md). Here a private copy of
the backend truncates and pads in Rust and the tensors are built from the encodings' id lists.

Contract: `BatchTokenizer(tok, max_length, keys)(texts, padding)` returns the same tensors as
`tok(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")`
restricted to `keys`. The first call checks that on its batch; on any difference (a tokenizer
with Python-side steps) it logs why and uses the tokenizer's own call from then on. Slow
(Python) tokenizers always use their own call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


class BatchTokenizer:
    def __init__(self, tokenizer, max_length: int, keys: Sequence[str]):
        self.tokenizer, self.max_length, self.keys = tokenizer, max_length, tuple(keys)
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._backends: dict[bool | str, object] = {}
        self._source = backend.to_str() if backend is not None else None
        self._checked = False

    def __call__(self, texts: Sequence[str], padding: bool | str = True) -> dict[str, torch.Tensor]:
        if self._source is None or not padding:  # unpadded rows are ragged: no tensor of the backend's
            return self._own(texts, padding)
        ours = self._encode(texts, padding)
        if not self._checked:
            self._checked = True
            own = self._own(texts, padding)
            if own.keys() != ours.keys() or not all(torch.equal(own[k], ours[k]) for k in own):
                log.warning("%s: the Rust backend's ids differ from its own call; using its own call", self._name())
                self._source = None
                return own
        return ours

    def _own(self, texts: Sequence[str], padding: bool | str) -> dict[str, torch.Tensor]:
        out = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: out[k] for k in self.keys if k in out}

    def _encode(self, texts: Sequence[str], padding: bool | str) -> dict[str, torch.Tensor]:
        backend = self._backend(padding)
        # encode_batch_fast skips the character offsets, which nothing here reads
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        encodings = encode(list(texts))
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        # numpy builds the array from the id lists 4x faster than torch.tensor does
        return {
            k: torch.from_numpy(np.array([getattr(e, fields[k]) for e in encodings], dtype=np.int64)) for k in self.keys
        }

    def _backend(self, padding: bool | str):
        """A private backend copy set up as the tokenizer's call with `padding` would set it."""
        if padding not in self._backends:
            from tokenizers import Tokenizer

            tok, backend = self.tokenizer, Tokenizer.from_str(self._source)
            backend.enable_truncation(self.max_length, direction=tok.truncation_side)
            if padding:
                backend.enable_padding(
                    direction=tok.padding_side,
                    pad_id=tok.pad_token_id,
                    pad_type_id=tok.pad_token_type_id,
                    pad_token=tok.pad_token,
                    length=self.max_length if padding == "max_length" else None,
                )
            else:
                backend.no_padding()
            self._backends[padding] = backend
        return self._backends[padding]

    def _name(self) -> str:
        return type(self.tokenizer).__name__
