"""An index opened with the towers its items were embedded with: queries are encoded and fused
exactly as the items were."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from encoders import storage
from encoders.errors import InputError, UsageError
from encoders.fusion import Fusion, WeightedFusion, fusion_from_params
from encoders.images import ImageRejected, decode_image
from encoders.models import load_towers
from encoders.towers import Towers, embed_query
from index_builder.index_duplicates import collapse, read_groups
from index_builder.records import EmbedManifest, Latest
from index_builder.search import Hit, LoadedIndex
from pipelines.search.settings import SearchSettings

log = logging.getLogger(__name__)


class Searcher:
    def __init__(self, index: LoadedIndex, towers: Towers, fusion: Fusion):
        self.index, self.towers, self.fusion = index, towers, fusion

    @property
    def source(self) -> EmbedManifest:
        """The embeddings manifest the index was built from."""
        return self.index.manifest.source.manifest

    @classmethod
    def open(cls, index: str, model: str | None = None, device: str | None = None) -> Searcher:
        """Load IDX (or, for a nightly ROOT, the index of the run LATEST names) and the model
        (default: the one recorded in the embeddings manifest; a usage error when it records none)."""
        idx = LoadedIndex.load(Latest.index_of(index))
        source = idx.manifest.source.manifest
        spec = model or source.model_spec()
        towers = load_towers(spec, device=device)
        built_with = source.model.spec if source.model and source.model.spec else "the model that made the vectors"
        if towers.dim != idx.dim:
            raise UsageError(
                f"model gives {towers.dim}-d vectors but the index holds {idx.dim}-d ones; use the model the index "
                f"was built with ({built_with})"
            )
        if source.model and source.model.fingerprint and towers.fingerprint() != source.model.fingerprint:
            log.warning(
                "the model's weights differ from those the index was built with (%s): rankings may be meaningless",
                built_with,
            )
        return cls(idx, towers, query_fusion(source, towers))

    def query_vector(self, text: str | None = None, image: Image.Image | None = None) -> np.ndarray:
        """[1, dim]: the text, the image, or (both) their fusion."""
        return embed_query(self.towers, self.fusion, text, image)

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None) -> list[list[Hit]]:
        return self.index.search(vectors, k=k, nprobe=nprobe)


def query_fusion(source: EmbedManifest, towers: Towers) -> Fusion:
    """The fusion the items were embedded with; where the manifest records none (vectors made
    elsewhere), the model's learned fusion or else an even weighting (text + image queries only)."""
    if source.fusion is None:
        learned = towers.learned_fusion
        log.info("the embeddings manifest records no fusion: a text + image query is fused with %s",
                 "alpha = beta = 0.5" if learned is None else "the model's learned fusion")  # fmt: skip
        return WeightedFusion() if learned is None else learned
    try:
        return fusion_from_params(source.fusion, towers.learned_fusion)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def read_query_image(path: str) -> Image.Image:
    """The decoded image file at `path` (local or URL); InputError naming the file otherwise."""
    fs, p = storage.url_to_fs(path)
    try:
        with fs.open(p, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"--image {path}: cannot read it ({exc})") from exc
    try:
        return decode_image(data)
    except ImageRejected as exc:
        raise InputError(f"--image {path}: not a usable image ({exc.reason}: {exc})") from exc


def collapsed_search(searcher: Searcher, query: np.ndarray, k: int, nprobe: int | None, groups: dict) -> list[Hit]:
    """The top k hits of one query vector, one per near-duplicate group (`groups`: id -> group_id):
    4x more hits are asked for until k groups show or the index has no more to give."""
    fetch, ntotal = k, searcher.index.index.ntotal
    while True:
        fetch = min(ntotal, fetch * 4)
        hits = searcher.search(query, fetch, nprobe)[0]
        out = collapse(hits, groups, k)
        if len(out) >= k or fetch >= ntotal or len(hits) < fetch:
            return out


def run_search(s: SearchSettings) -> list[Hit]:
    """The top s.k hits for the query (the image and the groups are read before any model loads)."""
    image = read_query_image(s.image) if s.image is not None else None
    groups = read_groups(Latest.index_of(s.index)) if s.collapse_duplicates else None
    searcher = Searcher.open(s.index, s.model, s.device)
    query = searcher.query_vector(s.text, image)
    if groups is not None:
        return collapsed_search(searcher, query, s.k, s.nprobe, groups)
    return searcher.search(query, s.k, s.nprobe)[0]
