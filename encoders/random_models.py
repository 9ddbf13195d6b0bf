"""Build tiny, randomly initialised checkpoints (CLIP; BERT for the dual family) on local disk.

Used by the demo and the tests: no hub access, real `CLIPModel` weights saved with
`save_pretrained` (safetensors) next to a real `CLIPProcessor`, so loading goes through the
same path as a user's checkpoint. Its rankings are meaningless: the weights are random.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from encoders.settings import RandomClipSettings

log = logging.getLogger(__name__)

_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _byte_level_vocab() -> dict[str, int]:
    """Every byte-level symbol with and without CLIP's end-of-word marker, then specials.

    With no merges the BPE tokenizer spells each word letter by letter, so any text maps
    onto this vocabulary without unknown tokens.
    """
    symbols = sorted(ByteLevel.alphabet())
    tokens = symbols + [s + "</w>" for s in symbols] + list(_SPECIALS)
    return {tok: i for i, tok in enumerate(tokens)}


def make_random_clip(
    output_dir: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    projection_dim: int = 16,
    max_position_embeddings: int = 77,
    text_hidden_size: int | None = None,
    text_layers: int | None = None,
    vocab_size: int | None = None,
    seed: int = RandomClipSettings.seed,
) -> Path:
    """Write a random CLIP model + processor to `output_dir`; return the directory.

    The defaults make a model of about 0.1M parameters that runs in milliseconds on a CPU.
    ViT-B/32's shape: image_size=224, patch_size=32, hidden_size=768, num_layers=12,
    text_hidden_size=512, text_layers=12, projection_dim=512 (heads: width / 64).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _byte_level_vocab()
    if vocab_size:  # e.g. 49408, the size OpenAI's tokenizer (used by clip-retrieval) indexes into
        vocab.update({f"<|unused{i}|>": i for i in range(len(vocab), vocab_size)})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_position_embeddings)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)

    text_width = text_hidden_size or hidden_size

    def heads(width: int) -> int:
        return max(1, width // 64) if width >= 64 else max(1, width // 16)

    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": text_width,
            "intermediate_size": text_width * 4,
            "num_hidden_layers": text_layers or num_layers,
            "num_attention_heads": heads(text_width),
            "max_position_embeddings": max_position_embeddings,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 4,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads(hidden_size),
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    log.info("wrote a random CLIP checkpoint (%d-d embeddings) to %s", projection_dim, out)
    return out


def make_random_bert(output_dir: str | Path, *, hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny random BERT text encoder + WordPiece tokenizer (for tests of the dual family)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), model_max_length=64).save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 16),
        intermediate_size=hidden_size * 4,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    return out
