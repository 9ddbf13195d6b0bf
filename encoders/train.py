"""Contrastive fine-tuning of a `Towers` model (+ attention fusion), pure torch.

Loss per batch of (image, caption, query) items, with a learnable temperature t:
    L = InfoNCE(image, caption) + InfoNCE(query, fused(image, caption))   [second term: rows with a query]
InfoNCE is symmetric: cross-entropy of the similarity matrix / t over rows and over columns.
The second term is what teaches attention fusion (and the towers) that a shopper's query
should land on the fused item vector; with weighted fusion it still trains the towers.

The caller supplies the data (`Example` lists), a `validate` callback returning a recall to
maximise, and a `checkpoint` callback; this module knows nothing of files or Parquet.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from encoders.fusion import AttentionFusion, Fusion
from encoders.images import ImageRejected
from encoders.settings import TrainConfig
from encoders.text import has_caption
from encoders.towers import Towers

log = logging.getLogger(__name__)


@dataclass
class Example:
    id: str
    image: Callable[[], Image.Image]  # decodes on demand: a catalogue does not fit in memory as pixels
    caption: str | None
    query: str | None


@dataclass
class TrainState:
    epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)
    stopped: str = ""


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between aligned rows of a and b (both normalised)."""
    logits = logit_scale.exp().clamp(max=100) * a @ b.T
    target = torch.arange(len(a), device=a.device)
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


class Trainer:
    """Owns the optimiser, temperature and loop; `run` returns the final TrainState."""

    def __init__(self, towers: Towers, fusion: Fusion, cfg: TrainConfig):
        self.towers, self.fusion, self.cfg = towers, fusion, cfg
        self.device = towers.device
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=self.device))
        modules = towers.modules()
        for name in cfg.freeze:
            for p in modules[name].parameters():
                p.requires_grad_(False)
        groups = [
            {
                "params": [p for n in ("image", "text") if n not in cfg.freeze for p in modules[n].parameters()],
                "lr": cfg.lr,
            }
        ]
        head = list(modules["heads"].parameters()) + [self.logit_scale]
        if isinstance(fusion, AttentionFusion):
            fusion.to(self.device)
            head += list(fusion.parameters())
        groups.append({"params": head, "lr": cfg.head_lr})
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
        self.amp = cfg.amp if cfg.amp is not None else self.device.startswith("cuda")
        self._text_cache: dict[str, torch.Tensor] = {}
        self.unusable: dict[str, str] = {}  # example id -> reject reason of an image that did not decode

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "logit_scale": self.logit_scale.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            self.logit_scale.copy_(state["logit_scale"].to(self.device))

    def set_train(self, mode: bool) -> None:
        """Train mode for what is trained; frozen towers stay in eval mode (no dropout, fixed BN)."""
        for name, module in self.towers.modules().items():
            module.train(mode and name not in self.cfg.freeze)
        if isinstance(self.fusion, AttentionFusion):
            self.fusion.train(mode)

    def texts(self, texts: list[str]) -> torch.Tensor:
        """Normalised text vectors; a frozen text encoder's pooled outputs are cached per string."""
        t = self.towers
        if "text" not in self.cfg.freeze:
            return t.text_features({k: v.to(self.device) for k, v in t.tokenize(texts).items()}).float()
        todo = sorted({x for x in texts if x not in self._text_cache})
        if todo:
            with torch.no_grad():
                pooled = t.text_backbone({k: v.to(self.device) for k, v in t.tokenize(todo).items()}).float()
            self._text_cache.update(zip(todo, pooled))
        return t.text_head(torch.stack([self._text_cache[x] for x in texts])).float()

    def decoded(self, batch: Sequence[Example]) -> tuple[list[Example], list[Image.Image]]:
        """The batch's examples whose image decodes, and those images; the others are recorded
        in `unusable` (and logged once each), never silently dropped."""
        kept, images = [], []
        for e in batch:
            try:
                images.append(e.image())
                kept.append(e)
            except ImageRejected as exc:
                if e.id not in self.unusable:
                    log.warning("training item %s left out: %s (%s)", e.id, exc, exc.reason)
                self.unusable[e.id] = exc.reason
        return kept, images

    def step(self, batch: Sequence[Example]) -> float | None:
        """One optimiser step; None when fewer than two items of the batch decode (no negatives)."""
        t = self.towers
        batch, images = self.decoded(batch)
        if len(batch) < 2:
            return None
        captions = [e.caption if has_caption(e.caption) else "" for e in batch]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            img = t.image_features(t.preprocess_images(images).to(self.device)).float()
            txt = self.texts(captions)
            loss = info_nce(img, txt, self.logit_scale)
            rows = [i for i, e in enumerate(batch) if has_caption(e.query)]
            if len(rows) > 1:
                has_text = torch.tensor([has_caption(e.caption) for e in batch], device=self.device)
                fused = self.fusion(img, txt, has_text)
                q = self.texts([batch[i].query for i in rows])
                loss = loss + info_nce(q, fused[rows], self.logit_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def run(
        self,
        train: list[Example],
        validate: Callable[[], dict],
        checkpoint: Callable[[TrainState, bool], None],
        state: TrainState | None = None,
        progress: Callable | None = None,
    ) -> TrainState:
        """Train from `state.epoch` on; validate and checkpoint after every epoch."""
        cfg = self.cfg
        state = state or TrainState()
        started = time.monotonic()
        while state.epoch < cfg.epochs:
            rng = random.Random(cfg.seed * 1000 + state.epoch)  # the same order on resume
            order = list(range(len(train)))
            rng.shuffle(order)
            torch.manual_seed(cfg.seed * 1000 + state.epoch)
            self.set_train(True)
            batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            batches = [b for b in batches if len(b) > 1]  # a batch of 1 has no negatives
            losses = []
            bar = progress(total=len(batches), desc=f"epoch {state.epoch + 1}/{cfg.epochs}") if progress else None
            out_of_time = False
            for b in batches:
                loss = self.step([train[i] for i in b])
                if loss is not None:
                    losses.append(loss)
                if bar:
                    bar.update(1)
                    if losses:
                        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                if cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60:
                    out_of_time = True
                    break
            self.set_train(False)
            metrics = validate()
            record = {
                "epoch": state.epoch + 1,
                "loss": float(np.mean(losses)) if losses else None,
                "batches": len(losses),
                "seconds": round(time.monotonic() - started, 1),
                "temperature": float(1 / self.logit_scale.detach().exp()),
                **metrics,
            }
            state.history.append(record)
            if bar:
                bar.set_postfix(loss=f"{record['loss'] or float('nan'):.3f}", val=f"{metrics['val_recall']:.3f}")
                bar.close()
            log.info(
                "epoch %d: loss %.4f, val recall %.4f",
                record["epoch"],
                record["loss"] or float("nan"),
                metrics["val_recall"],
            )
            state.epoch += 1
            improved = metrics["val_recall"] > state.best
            if improved:
                state.best, state.best_epoch = metrics["val_recall"], state.epoch
            checkpoint(state, improved)
            if out_of_time:
                state.stopped = f"time budget of {cfg.max_minutes} min reached in epoch {state.epoch}"
                break
            if state.epoch - state.best_epoch >= cfg.patience:
                state.stopped = f"early stop: no better validation recall for {cfg.patience} epochs"
                break
        return state
