"""`fusionindex report`: an HTML page showing queries and their top results as images.

Images are looked up by id in the catalogue files the index was built from (the embeddings
manifest's `inputs`) and inlined as small JPEG thumbnails, so the page is one file.
"""
from __future__ import annotations

import base64
import html
import io
import random
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoders.fusion import fusion_from_params
from encoders.images import ImageRejected, decode_image
from encoders.models import load_towers
from encoders.towers import embed_query
from index_builder import storage
from index_builder.search import Hit, LoadedIndex
from pipelines.finetune import load_items, unique_query_rows
from pipelines.inputs import IMAGE_COLUMNS

THUMB = 96


@dataclass
class QueryResult:
    query: str
    expected: str | None  # the id this query was written for, when it comes from the data
    hits: list[Hit]


def thumbnails(paths: list[str], ids: set[str], id_column: str = "key") -> dict[str, str]:
    """id -> data: URI of a JPEG thumbnail, for the ids found in `paths`."""
    out: dict[str, str] = {}
    for path in paths:
        fs, p = storage.url_to_fs(path)
        with fs.open(p, "rb") as fh:
            pf = pq.ParquetFile(fh)
            image_col = next(c for c in IMAGE_COLUMNS if c in pf.schema_arrow.names)
            table = pf.read(columns=[id_column, image_col])
        table = table.filter(pc.is_in(table.column(id_column).cast("string"), value_set=pa.array(sorted(ids), pa.string())))
        for key, data in zip(table.column(id_column).to_pylist(), table.column(image_col).to_pylist()):
            try:
                img = decode_image(data).convert("RGB")
            except ImageRejected:
                continue
            img.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            out[str(key)] = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return out


def run_report(index: str, output: str, *, queries: list[str] | None = None, queries_from: list[str] | None = None,
               split: str | None = "test", n: int = 12, k: int = 5, model: str | None = None, seed: int = 0, device: str | None = None) -> list[QueryResult]:
    idx = LoadedIndex.load(index)
    source = idx.manifest["source"]["manifest"]
    towers = load_towers(model or source["model"]["spec"], device=device)
    fusion = fusion_from_params(source["fusion"], towers.learned_fusion)
    asked: list[tuple[str, str | None]] = [(q, None) for q in queries or []]
    if queries_from:
        items = load_items(queries_from, split)
        rows = unique_query_rows(items)
        for i in random.Random(seed).sample(rows, min(n, len(rows))):
            asked.append((items[i].query, items[i].id))
    if not asked:
        raise ValueError("give --queries or --queries-from")
    results = [QueryResult(q, exp, idx.search(embed_query(towers, fusion, text=q), k=k)[0]) for q, exp in asked]
    ids = {h.id for r in results for h in r.hits} | {r.expected for r in results if r.expected}
    thumbs = thumbnails(source["inputs"], ids, source["columns"]["id"])
    with storage.atomic_open(output) as fh:
        fh.write(render(results, thumbs, idx.manifest).encode())
    return results


def render(results: list[QueryResult], thumbs: dict[str, str], manifest: dict) -> str:
    src = manifest["source"]["manifest"]
    found = sum(1 for r in results if r.expected and any(h.id == r.expected for h in r.hits))
    asked = sum(1 for r in results if r.expected)
    head = (f"<h1>fusionindex search report</h1><p>index: {html.escape(manifest['factory'])} over {manifest['ntotal']} "
            f"{html.escape(manifest['vector'])} vectors; model <code>{html.escape(src['model']['spec'])}</code>; fusion "
            f"{html.escape(src['fusion']['kind'])}.</p>")
    if asked:
        head += f"<p>{found} of {asked} data queries find their own item in the top {len(results[0].hits)} (green).</p>"
    blocks = []
    for r in results:
        cells = []
        for h in r.hits:
            style = "border:3px solid #2a2" if h.id == r.expected else "border:3px solid #ddd"
            img = f'<img src="{thumbs[h.id]}" style="{style}" width="{THUMB}">' if h.id in thumbs else "(no image)"
            cells.append(f"<td>{img}<br><small>{h.rank}. {h.score:.3f}<br>{html.escape((h.caption or '')[:60])}</small></td>")
        want = ""
        if r.expected:
            want = f' <small>(for item {html.escape(r.expected)}{": " if r.expected in thumbs else ""}'
            want += (f'<img src="{thumbs[r.expected]}" width="32">' if r.expected in thumbs else "") + ")</small>"
        blocks.append(f"<h3>&ldquo;{html.escape(r.query)}&rdquo;{want}</h3><table><tr>{''.join(cells)}</tr></table>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fusionindex report</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;text-align:center;padding:4px}</style>"
            f"</head><body>{head}{''.join(blocks)}</body></html>\n")
