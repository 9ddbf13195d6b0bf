"""`fusionindex report`: an HTML page showing queries and their top results as images.

Images are looked up by id in the catalogue files the index was built from (the embeddings
manifest's `inputs`, read through the one Parquet reader with the columns the embed run used)
and inlined as small JPEG thumbnails, so the page is one file.
"""

from __future__ import annotations

import base64
import io
import logging
import random

from encoders import storage
from encoders.errors import SettingsError
from encoders.images import ImageRejected, decode_image, flatten_on_white
from pipelines.datasets.items import LABELLED, load_items, unique_query_rows
from pipelines.inputs import Columns, iter_unit, plan_inputs
from pipelines.search.html import THUMB, QueryResult, render
from pipelines.search.searcher import Searcher

log = logging.getLogger(__name__)


def thumbnails(paths: list[str], ids: set[str], columns: Columns) -> dict[str, str]:
    """id -> data: URI of a JPEG thumbnail, for the ids found in `paths`."""
    out: dict[str, str] = {}
    for unit in plan_inputs(paths, columns).units:
        for rows in iter_unit(unit):
            for row in rows:
                if row.id not in ids or row.id in out:
                    continue
                try:
                    img = flatten_on_white(decode_image(row.image))
                except ImageRejected as exc:
                    log.warning("no thumbnail for %s: %s", row.id, exc)
                    continue
                img.thumbnail((THUMB, THUMB))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=85)
                out[row.id] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def run_report(
    index: str,
    output: str,
    *,
    queries: list[str] | None = None,
    queries_from: list[str] | None = None,
    split: str | None = "test",
    n: int = 12,
    k: int = 5,
    model: str | None = None,
    seed: int = 0,
    device: str | None = None,
    columns: Columns = LABELLED,
) -> list[QueryResult]:
    """Search each query (given, and/or `n` unique data queries of `split` sampled from
    `queries_from`), write the page to `output`, return the results."""
    asked: list[tuple[str, str | None]] = [(q, None) for q in queries or []]
    if not asked and not queries_from:
        raise SettingsError("give --queries or --queries-from")
    searcher = Searcher.open(index, model, device)
    if queries_from:
        items = load_items(queries_from, split, columns)
        rows = unique_query_rows(items)
        for i in random.Random(seed).sample(rows, min(n, len(rows))):
            asked.append((items[i].query, items[i].id))
    results = [QueryResult(q, exp, searcher.search(searcher.query_vector(text=q), k)[0]) for q, exp in asked]
    ids = {h.id for r in results for h in r.hits} | {r.expected for r in results if r.expected}
    source = searcher.source
    thumbs = thumbnails(source.inputs or [], ids, Columns(**(source.columns or {})))
    with storage.atomic_open(output) as fh:
        fh.write(render(results, thumbs, searcher.index.manifest).encode())
    return results
