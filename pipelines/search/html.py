"""The report page: queries and their top hits as inline thumbnails, one self-contained HTML file."""

from __future__ import annotations

import html
from dataclasses import dataclass

from index_builder.records import IndexManifest
from index_builder.search import Hit

THUMB = 96


@dataclass
class QueryResult:
    query: str
    expected: str | None  # the id this query was written for, when it comes from the data
    hits: list[Hit]


def render(results: list[QueryResult], thumbs: dict[str, str], manifest: IndexManifest) -> str:
    """`thumbs`: id -> data: URI; `manifest`: the index manifest."""
    src = manifest.source.manifest
    model = src.model.spec if src.model and src.model.spec else "(not recorded)"
    fusion = (src.fusion or {}).get("kind", "(not recorded)")
    found = sum(1 for r in results if r.expected and any(h.id == r.expected for h in r.hits))
    asked = sum(1 for r in results if r.expected)
    head = (
        f"<h1>fusionindex search report</h1><p>index: {html.escape(manifest.factory)} over {manifest.ntotal} "
        f"{html.escape(manifest.vector)} vectors; model <code>{html.escape(model)}</code>; fusion "
        f"{html.escape(fusion)}.</p>"
    )
    if asked:
        head += f"<p>{found} of {asked} data queries find their own item in the top {len(results[0].hits)} (green).</p>"
    blocks = []
    for r in results:
        cells = []
        for h in r.hits:
            style = "border:3px solid #2a2" if h.id == r.expected else "border:3px solid #ddd"
            img = f'<img src="{thumbs[h.id]}" style="{style}" width="{THUMB}">' if h.id in thumbs else "(no image)"
            caption = html.escape((h.caption or "")[:60])
            cells.append(f"<td>{img}<br><small>{h.rank}. {h.score:.3f}<br>{caption}</small></td>")
        want = ""
        if r.expected:
            want = f" <small>(for item {html.escape(r.expected)}{': ' if r.expected in thumbs else ''}"
            want += (f'<img src="{thumbs[r.expected]}" width="32">' if r.expected in thumbs else "") + ")</small>"
        blocks.append(f"<h3>&ldquo;{html.escape(r.query)}&rdquo;{want}</h3><table><tr>{''.join(cells)}</tr></table>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fusionindex report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{vertical-align:top;text-align:center;padding:4px}</style>"
        f"</head><body>{head}{''.join(blocks)}</body></html>\n"
    )
