"""Retrieval quality of a model on a catalogue split: caption -> image, image -> caption, and a
shopper's query against image-only versus fused item vectors (does fusion help?)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from encoders.fusion import WeightedFusion
from encoders.images import ImageRejected, decode_image
from encoders.models import load_towers
from encoders.text import has_caption
from encoders.towers import Towers
from index_builder.pair_recall import recall_at_k
from pipelines.datasets.items import LABELLED, Item, load_items, unique_query_rows
from pipelines.inputs import Columns


@dataclass
class Vectors:
    image: np.ndarray
    caption: np.ndarray
    has_caption: np.ndarray
    query: np.ndarray  # rows for items with a query, see query_rows
    query_rows: np.ndarray
    undecodable: list[str]  # ids whose image did not decode (zero image vector, never a hit)


def embed_items(towers: Towers, items: list[Item], batch_size: int = 64) -> Vectors:
    """Image, caption and (unique) query vectors of `items`; undecodable images get a zero vector
    and are listed in `undecodable`."""
    img, cap, qry, bad = [], [], [], []
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
                bad.append(it.id)
        good = [p for p in pics if p is not None]
        vecs = iter(towers.encode_images(good).numpy() if good else np.zeros((0, towers.dim), np.float32))
        img.extend(next(vecs) if p is not None else np.zeros(towers.dim, np.float32) for p in pics)
        cap.append(towers.encode_texts([it.caption if has_caption(it.caption) else "" for it in chunk]).numpy())
        qs = [it.query for i, it in enumerate(chunk, start) if i in wanted]
        if qs:
            qry.append(towers.encode_texts(qs).numpy())
    return Vectors(
        np.stack(img),
        np.concatenate(cap),
        np.array([has_caption(it.caption) for it in items]),
        np.concatenate(qry) if qry else np.zeros((0, towers.dim), np.float32),
        np.array(query_rows, dtype=np.int64),
        bad,
    )


def fused_vectors(v: Vectors, fusion) -> np.ndarray:
    device = next(fusion.parameters()).device if isinstance(fusion, torch.nn.Module) else torch.device("cpu")
    args = (torch.from_numpy(x).to(device) for x in (v.image, v.caption, v.has_caption))
    with torch.inference_mode():
        return fusion(*args).cpu().numpy()


def evaluate_vectors(v: Vectors, fusions: dict[str, object]) -> dict:
    """text->image, image->text recall, and query-text recall against fused and image-only items."""
    cap_rows = np.nonzero(v.has_caption)[0]
    out = {
        "items": int(len(v.image)),
        "undecodable_images": len(v.undecodable),
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


def run_evaluate(
    model: str,
    data: list[str],
    *,
    split: str | None = "test",
    device: str | None = None,
    limit: int | None = None,
    columns: Columns = LABELLED,
) -> dict:
    towers = load_towers(model, device=device)
    items = load_items(data, split, columns, limit)
    t = time.monotonic()
    report = evaluate_vectors(embed_items(towers, items), model_fusions(towers))
    return {
        "model": model,
        "fingerprint": towers.fingerprint(),
        "family": towers.family,
        "data": data,
        "split": split,
        "seconds": round(time.monotonic() - t, 1),
        **report,
    }
