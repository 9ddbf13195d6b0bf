"""Resolve a model spec (local dir, fsspec URL or hub id) to a local directory, safely.

Contract: `resolve_model_dir(spec)` returns a local directory holding `config.json` and
safetensors weights. Remote directories (gs://, s3://, ...) are copied to a local cache;
hub ids are looked up with `huggingface_hub.snapshot_download` (which honours
HF_HUB_OFFLINE and the local HF cache). Pickle weights (`*.bin`, `*.pt`) are refused unless
`allow_pickle=True`: unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import fsspec

from encoders.errors import UsageError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
SKIP_DIRS = ("checkpoints",)  # `finetune` keeps per-epoch copies there: not part of the model


class ModelLoadError(UsageError):
    """A model spec cannot be turned into a usable checkpoint; the message says how to fix it."""


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than plain local paths (file:// counts as local)."""
    return "://" in path and not path.startswith("file://")


def _copy_remote_dir(url: str) -> Path:
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.isdir(root):
        raise ModelLoadError(f"model directory {url!r} does not exist or is not a directory")
    cache = Path(os.environ.get("FUSIONINDEX_CACHE", Path(tempfile.gettempdir()) / "fusionindex"))
    local = cache / "models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    for remote in fs.find(root):
        name = remote[len(root.rstrip("/")) + 1 :]
        if name.endswith(_PICKLE_SUFFIXES) or name.split("/")[0] in SKIP_DIRS:
            continue  # pickles are never loaded by default; checkpoints are not the model
        target = local / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.stat().st_size != fs.size(remote):
            fs.get(remote, str(target))
    log.info("copied model %s to %s", url, local)
    return local


def _from_hub(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # the hub library raises many types; all mean "not available"
        raise ModelLoadError(
            f"model {spec!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}). Pass a directory saved with "
            "save_pretrained (local path or gs://, s3:// URL), or pre-download the hub "
            "model into the HF cache on a machine with network access."
        ) from exc


def resolve_model_dir(spec: str, *, allow_pickle: bool = False) -> Path:
    """Return a local directory for `spec`; raise ModelLoadError with the fix if unusable."""
    if is_remote(spec):
        local = _copy_remote_dir(spec)
    elif Path(spec.removeprefix("file://")).exists():
        local = Path(spec.removeprefix("file://"))
        if not local.is_dir():
            raise ModelLoadError(f"model {spec!r} is a file; pass the directory holding config.json")
    elif spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise ModelLoadError(f"model directory {spec!r} does not exist")
    else:
        local = _from_hub(spec)
    check_model_dir(local, allow_pickle=allow_pickle)
    return local


def check_model_dir(local: Path, *, allow_pickle: bool = False) -> None:
    """Raise ModelLoadError unless `local` holds config.json and loadable weights."""
    if not (local / "config.json").exists():
        raise ModelLoadError(
            f"{local} has no config.json: not a transformers checkpoint "
            "(save one with model.save_pretrained(dir) and processor.save_pretrained(dir))"
        )
    if weight_files(local):
        return
    pickles = sorted(p.name for p in local.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise ModelLoadError(
            f"{local} holds only pickle weights ({', '.join(pickles)}); loading them can run "
            "arbitrary code. Convert them to safetensors (load once in a trusted place and "
            "save_pretrained(dir, safe_serialization=True)), or pass --allow-pickle if you "
            "trust the file."
        )
    if not pickles:
        raise ModelLoadError(f"{local} holds no weights (*.safetensors)")


def weight_files(local: Path) -> list[Path]:
    """The checkpoint's safetensors files (subfolders too, not checkpoints/), by relative path."""
    return sorted(p for p in local.rglob("*.safetensors") if p.relative_to(local).parts[0] not in SKIP_DIRS)


def fingerprint(local: Path) -> str:
    """sha256 over the names and bytes of the weight files: identifies the exact weights."""
    digest = hashlib.sha256()
    files = weight_files(local) or sorted(p for p in local.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    for path in files:
        digest.update(str(path.relative_to(local)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def check_tokenizer_fits(tokenizer, config, spec: str) -> None:
    """Refuse a tokenizer that produces ids the text tower has no embedding for."""
    vocab = getattr(getattr(config, "text_config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > int(vocab):
        raise ModelLoadError(
            f"{spec}: the tokenizer has {len(tokenizer)} tokens but the text tower embeds only {vocab}; "
            "the tokenizer does not belong to this model: save the matching processor next to it"
        )
