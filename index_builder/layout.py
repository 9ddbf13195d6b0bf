"""What an index directory holds and how it is committed.

IDX/index.faiss [+ index.ivfdata]   (or IDX/shard-KKKKK-of-NNNNN/ each, with K index shards)
IDX/ids.parquet                     row i = faiss id i: id, caption
IDX/template.faiss                  the trained empty template (a later build may reuse it)
IDX/manifest.json                   written last: the build is committed when it exists
"""

from __future__ import annotations

import os

import faiss
import pyarrow as pa
import pyarrow.parquet as pq

from encoders import storage
from index_builder import faiss_io
from index_builder.embeddings import MANIFEST
from index_builder.split import members, shard_dirs

INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"  # the inverted lists of an index merged on disk, beside index.faiss
PARTS_DIR = ".parts"  # inverted-list parts written by parallel adders, removed once merged
IDS_FILE = "ids.parquet"
TEMPLATE_FILE = "template.faiss"


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set `nprobe` on every IVF member of `index`: the default a server gets when it loads index.faiss as is."""
    for member in members(index):
        ivf = faiss.try_extract_index_ivf(member)
        if ivf is not None:
            ivf.nprobe = nprobe


def write_members(index: faiss.Index, output: str, ondisk: str | None, k_shards: int) -> list[dict]:
    """Write the index (or each index shard, in its own directory) under IDX, with its on-disk lists
    when they were merged on disk (built under `ondisk`); remove what an earlier build of another
    shape left. Returns [{"path", "ntotal", "bytes"}] (path "" is IDX itself)."""
    names = shard_dirs(k_shards) if k_shards > 1 else [""]
    for stale in [n for n in storage.listdir(output) if n.startswith("shard-") and n not in names]:
        storage.remove(storage.join(output, stale), recursive=True)
    if k_shards > 1:
        storage.remove(storage.join(output, INDEX_FILE))
    out = []
    for name, member in zip(names, members(index)):
        where = storage.join(output, name) if name else output
        lists = storage.join(where, IVFDATA_FILE)
        if ondisk:
            storage.put(os.path.join(ondisk, name, IVFDATA_FILE), lists)
        else:
            storage.remove(lists)
        faiss_io.write_index(member, storage.join(where, INDEX_FILE))
        size = storage.size(storage.join(where, INDEX_FILE)) + (storage.size(lists) if ondisk else 0)
        out.append({"path": name, "ntotal": int(member.ntotal), "bytes": size})
    return out


def commit(
    output: str, index: faiss.Index, template: faiss.Index, ids: pa.Table, ondisk: str | None, k_shards: int
) -> list[dict]:
    """Write IDX's files but the manifest, after removing the old manifest (IDX is uncommitted from
    here until `storage.write_json(MANIFEST)`) and stray temporaries. Returns write_members' records."""
    storage.remove(storage.join(output, MANIFEST))
    storage.remove_temporaries(output)
    shards = write_members(index, output, ondisk, k_shards)
    faiss_io.write_index(template, storage.join(output, TEMPLATE_FILE))
    with storage.atomic_open(storage.join(output, IDS_FILE)) as fh:
        pq.write_table(ids, fh)
    return shards
