"""Adding the shards into copies of a trained template and merging them into one index.

Global ids are assigned in shard order (the valid rows, numbered from 0), so a merged index
equals one built by adding every vector to one copy of the template. Parts (one shard's inverted
lists, index_builder.parts) come from this process or from a parallel adder (`AddParts`, the Beam
stage in pipelines/) and merge in RAM or on disk (index.ivfdata).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

import faiss
import numpy as np
import pyarrow as pa

from encoders import storage
from index_builder import faiss_io
from index_builder.candidates import ID_BYTES
from index_builder.embeddings import Shard, arrow_to_vectors
from index_builder.layout import IVFDATA_FILE, PARTS_DIR, TEMPLATE_FILE
from index_builder.parts import add_part, merge_in_ram, merge_on_disk, part_name
from index_builder.sampling import ShardCache
from index_builder.settings import BuildSettings
from index_builder.split import combine, members, owners, shard_dirs, with_ids

log = logging.getLogger(__name__)

# (template path, shards, first global id of each, vector, parts directory, index shard (k, K) or
# None) -> the part paths, in shard order: a parallel adder (pipelines.index_add.beam_stage, a Beam stage)
AddParts = Callable[[str, list[Shard], list[int], str, str, "tuple[int, int] | None"], list[str]]


def ids_table(shards: list[Shard], cache: ShardCache) -> pa.Table:
    """id, caption and the carried columns of every row with a vector, in global-id order (row i =
    faiss id i)."""
    for shard in shards:
        if shard.path not in cache.labels:
            cache.vectors(shard)
    tables = [cache.labels[shard.path] for shard in shards]
    return pa.concat_tables(tables).replace_schema_metadata(None)  # not the embed run's shard metadata


def shard_rows(ids: pa.ChunkedArray, vectors: pa.ChunkedArray, first_id: int, only: tuple[int, int] | None):
    """(vectors [m, d], global ids [m]) of one embeddings shard's rows with a vector, numbered from
    `first_id`; with `only` = (k, K), just the rows of index shard k of K (index_builder.split)."""
    x, valid = arrow_to_vectors(vectors)
    return valid_rows(x, valid, ids.filter(pa.array(valid)) if only is not None else None, first_id, only)


def valid_rows(x: np.ndarray, valid: np.ndarray, valid_ids: pa.ChunkedArray | None, first_id: int, only):
    """shard_rows of vectors already read: `valid_ids`, the ids of the rows with a vector (needed with `only`)."""
    x, gids = (x if valid.all() else x[valid]), first_id + np.arange(int(valid.sum()), dtype=np.int64)
    if only is not None:
        mine = owners(valid_ids.to_pylist(), only[1]) == only[0]
        x, gids = x[mine], gids[mine]
    return x, gids


def parts_in_process(template, shards: list[Shard], offsets: list[int], cache: ShardCache, only=None):
    """The part of each shard, in order, added by one worker copy of the template in this process."""
    worker = faiss_io.copy(template)
    for i, (shard, first_id) in enumerate(zip(shards, offsets)):
        x, valid = cache.vectors(shard)
        yield add_part(worker, *valid_rows(x, valid, cache.labels[shard.path].column("id"), first_id, only))
        log.info("added shard %d/%d%s", i + 1, len(shards), f" (index shard {only[0] + 1}/{only[1]})" if only else "")


def add_and_merge(
    template: faiss.Index,
    shards: list[Shard],
    valid_counts: list[int],
    cache: ShardCache,
    *,
    add_parts: AddParts | None = None,
    template_path: str | None = None,
    parts_dir: str | None = None,
    ivfdata: str | None = None,
    only: tuple[int, int] | None = None,
) -> faiss.Index:
    """Every shard's vectors with global ids (valid rows numbered in shard order) in a copy of
    `template` (with `only` = (k, K): the rows of index shard k of K). Parts come from `add_parts`
    (written under `parts_dir`; the workers read the template from `template_path`) or from this
    process; they merge in RAM, or on disk into the local file `ivfdata` when it is given."""
    offsets = np.concatenate([[0], np.cumsum(valid_counts)[:-1]]).astype(int).tolist()
    if add_parts is not None:
        paths = add_parts(template_path, shards, offsets, cache.vector, parts_dir, only)
        if ivfdata:
            return merge_on_disk(template, paths, ivfdata)
        return merge_in_ram(template, (np.frombuffer(storage.read_bytes(p), np.uint8) for p in paths))
    parts = parts_in_process(template, shards, offsets, cache, only)
    if not ivfdata:
        return merge_in_ram(template, parts)
    with tempfile.TemporaryDirectory(prefix="fusionindex-parts-") as tmp:
        paths = []
        for i, data in enumerate(parts):
            paths.append(os.path.join(tmp, part_name(i)))
            data.tofile(paths[-1])
        return merge_on_disk(template, paths, ivfdata)


def add_all(
    cfg: BuildSettings, template, shards, valid_counts, cache, add_parts, ondisk_dir: str | None
) -> faiss.Index:
    """add_and_merge into IDX's parts directory (a parallel adder reads the template from IDX), once
    per index shard; their lists on disk under `ondisk_dir` when given."""
    k_shards = cfg.num_index_shards
    if k_shards > 1:
        template = with_ids(template)
    template_path = None
    if add_parts is not None:
        template_path = storage.join(cfg.output, TEMPLATE_FILE)
        faiss_io.write_index(template, template_path)
    parts = []
    for k, name in enumerate(shard_dirs(k_shards) if k_shards > 1 else [""]):
        ivfdata = os.path.join(ondisk_dir, name, IVFDATA_FILE) if ondisk_dir else None
        if ivfdata:
            os.makedirs(os.path.dirname(ivfdata), exist_ok=True)
        parts.append(
            add_and_merge(
                template,
                shards,
                valid_counts,
                cache,
                add_parts=add_parts,
                template_path=template_path,
                parts_dir=storage.join(cfg.output, PARTS_DIR),
                ivfdata=ivfdata,
                only=(k, k_shards) if k_shards > 1 else None,
            )  # fmt: skip
        )
    return combine(parts)


def lists_of(index: faiss.Index) -> str:
    """What holds the index's vectors: "lists" (IVF), "fast-scan" (IVF fast-scan blocks) or "flat"."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return "flat"
    return "fast-scan" if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan) else "lists"


def estimated_memory(template: faiss.Index, n: int) -> int:
    """Bytes in RAM of `template` once it holds n vectors: codes and ids plus the trained parts."""
    ids = ID_BYTES if faiss.try_extract_index_ivf(template) is not None else 0
    return int(n * (code_bytes(template) + ids)) + len(faiss_io.to_bytes(template))


def code_bytes(index: faiss.Index) -> float:
    """Bytes per stored vector in the lists, its id apart (what --max-bytes-per-vector bounds)."""
    index = members(index)[0]
    if isinstance(index, faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # fast-scan blocks: packed codes and per-vector factors (index_builder.candidates)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(lists, faiss.BlockInvertedLists):
            return lists.block_size / lists.n_per_block
        return float(ivf.code_size)
    return float(index.sa_code_size())
