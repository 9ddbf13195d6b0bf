"""Pick and load a model family from a `--model` spec; save and load learned fusion.

    load_towers(spec)        -> ClipTowers | DualTowers, with .learned_fusion attached
    load_preprocessing(spec) -> ClipPreprocessing | DualPreprocessing: the same preprocessing
                                and tokenizer, no weights loaded
    describe_checkpoint(dir) -> family, model_type, dim, learned fusion params, tensor recipe
                                (config files only, no weights loaded)
    resolve_model(spec)      -> ResolvedModel: the spec resolved to a local directory, described
                                and fingerprinted once; the loaders above take it instead of a spec

A fine-tuned model is one directory: the family's own files plus, when attention fusion was
trained, `fusion.safetensors` and `fusionindex.json` ({"fusion": params, "training": ...}).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from encoders.dual import MODEL_TYPE as DUAL_TYPE
from encoders.dual import DualPreprocessing, DualTowers, dual_recipe
from encoders.fusion import AttentionFusion
from encoders.loading import ModelLoadError, check_tokenizer_fits, fingerprint, resolve_model_dir
from encoders.tensor_images import Recipe, recipe_of
from encoders.towers import ClipPreprocessing, ClipTowers, Preprocessing, Towers

log = logging.getLogger(__name__)

FUSION_FILE = "fusion.safetensors"
META_FILE = "fusionindex.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable ({exc})") from exc


def describe_checkpoint(local: Path) -> dict:
    """Family, model_type, embedding dim, learned fusion params and the tensor preprocessing
    recipe (None when the processor is not resize + center crop), read from config files.

    Raises ModelLoadError when the checkpoint is neither family, or its tokenizer does not
    fit its text tower, so a wrong --model fails before any pipeline starts.
    """
    raw = _read_json(local / "config.json")
    meta = _read_json(local / META_FILE) if (local / META_FILE).exists() else {}
    fusion = meta.get("fusion")
    if raw.get("model_type") == DUAL_TYPE:
        if not (local / "text" / "config.json").exists():
            raise ModelLoadError(f"{local}: a {DUAL_TYPE} model needs its text encoder in text/")
        return {
            "family": "dual",
            "model_type": DUAL_TYPE,
            "dim": int(raw["projection_dim"]),
            "fusion": fusion,
            "tensor_recipe": dual_recipe(raw),
        }
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(local, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{local}: cannot read config.json ({exc})") from exc
    dim = getattr(config, "projection_dim", None)
    if not (hasattr(config, "vision_config") and hasattr(config, "text_config") and dim):
        raise ModelLoadError(
            f"{local} is a {getattr(config, 'model_type', '?')!r} checkpoint, not a CLIP-like model with "
            f"vision and text towers projected to a shared space, nor a {DUAL_TYPE} model; pass a CLIP checkpoint "
            "or a directory written by `fusionindex finetune`"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{local}: no usable tokenizer ({exc}); save the processor with processor.save_pretrained(dir)"
        ) from exc
    check_tokenizer_fits(tokenizer, config, str(local))
    try:
        recipe = recipe_of(AutoImageProcessor.from_pretrained(local, trust_remote_code=False))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{local}: no usable image processor ({exc}); save it with processor.save_pretrained(dir)"
        ) from exc
    return {
        "family": "clip",
        "model_type": config.model_type,
        "dim": int(dim),
        "fusion": fusion,
        "tensor_recipe": recipe,
    }


@dataclass(frozen=True)
class ResolvedModel:
    """A --model spec resolved once (by a driver) and handed to whoever loads it: its local
    directory, what `describe_checkpoint` reads from it and the weights' fingerprint. Small and
    picklable: workers receive it with their job."""

    spec: str
    local_dir: Path
    allow_pickle: bool
    family: str  # "clip" or "dual"
    model_type: str
    dim: int
    fusion: dict | None  # the learned fusion's params (None: the checkpoint has none)
    fingerprint: str  # sha256 of the weight files (loading.fingerprint)
    tensor_recipe: Recipe | None  # None: the processor is not resize + center crop

    def here(self) -> Path:
        """The directory on this machine: `local_dir`, or, on a worker where the driver's copy (a
        remote model's cache, the HF cache) is absent, the spec resolved again here."""
        if (self.local_dir / "config.json").exists():
            return self.local_dir
        return resolve_model_dir(self.spec, allow_pickle=self.allow_pickle)


def resolve_model(spec: str, *, allow_pickle: bool = False) -> ResolvedModel:
    """Resolve, describe and fingerprint `spec` (ModelLoadError with the fix when unusable)."""
    local = resolve_model_dir(spec, allow_pickle=allow_pickle)
    info = describe_checkpoint(local)
    return ResolvedModel(spec, local, allow_pickle, **info, fingerprint=fingerprint(local))


def _resolved(spec: str | ResolvedModel, allow_pickle: bool) -> tuple[Path, str, str]:
    """(local dir, family, model_type) of a spec or of a model resolved before."""
    if isinstance(spec, ResolvedModel):
        return spec.here(), spec.family, spec.model_type
    local = resolve_model_dir(spec, allow_pickle=allow_pickle)
    info = describe_checkpoint(local)
    return local, info["family"], info["model_type"]


def load_learned_fusion(local: Path, dim: int) -> AttentionFusion | None:
    if not (local / META_FILE).exists():
        return None
    params = _read_json(local / META_FILE).get("fusion")
    if not params or params.get("kind") != "attention":
        return None
    if int(params["dim"]) != dim:
        raise ModelLoadError(f"{local}/{META_FILE}: fusion dim {params['dim']} != model dim {dim}")
    fusion = AttentionFusion(dim, int(params["hidden"]))
    fusion.load_state_dict(load_file(local / FUSION_FILE))
    return fusion.eval()


def load_towers(spec: str | ResolvedModel, *, device: str | None = None, allow_pickle: bool = False) -> Towers:
    """Load either family from a directory, fsspec URL or hub id, or from a model resolved before."""
    local, family, model_type = _resolved(spec, allow_pickle)
    if isinstance(spec, ResolvedModel):
        spec, allow_pickle = spec.spec, spec.allow_pickle
    if family == "dual":
        towers: Towers = DualTowers.load(local, device=device)
    else:
        towers = ClipTowers.load(local, device=device, allow_pickle=allow_pickle)
    towers.learned_fusion = load_learned_fusion(local, towers.dim)
    log.info(
        "loaded %s (%s, %d-d%s) on %s",
        spec,
        model_type,
        towers.dim,
        ", attention fusion" if towers.learned_fusion is not None else "",
        towers.device,
    )
    return towers


def load_preprocessing(spec: str | ResolvedModel, *, allow_pickle: bool = False) -> Preprocessing:
    """Either family's image preprocessing and tokenizer, as `load_towers(spec)` has them, from
    config and processor files only: no weights are read (a --large-model worker process uses it
    to send the shared model tensors). `allow_pickle` only changes which checkpoints resolve."""
    if isinstance(spec, ResolvedModel):
        local, dual = spec.here(), spec.family == "dual"
    else:
        local = resolve_model_dir(spec, allow_pickle=allow_pickle)
        dual = _read_json(local / "config.json").get("model_type") == DUAL_TYPE
    if dual:
        return DualPreprocessing.load(local)
    return ClipPreprocessing.load(local)


def save_model(towers: Towers, out: Path, *, fusion: AttentionFusion | None = None, meta: dict | None = None) -> Path:
    """Write towers (+ learned fusion) as one directory that `--model` accepts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    towers.save(out)
    doc = dict(meta or {})
    if fusion is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in fusion.state_dict().items()}, out / FUSION_FILE)
        doc["fusion"] = fusion.params()
    (out / META_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return out


__all__ = [
    "ResolvedModel",
    "resolve_model",
    "describe_checkpoint",
    "load_towers",
    "load_preprocessing",
    "load_learned_fusion",
    "save_model",
    "check_tokenizer_fits",
]
