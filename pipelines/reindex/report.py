"""report.json and report.html of a nightly run: counts, stage timings and throughput, reject
reasons with examples, gate values against their limits, a recall-vs-nprobe plot, the frontier
(recall against bytes per vector of the candidates screened), the canary
overlap, and sample queries with their top results as images. One self-contained HTML file
(inline SVG plot, inline JPEG thumbnails)."""

from __future__ import annotations

import html
import logging
import math
import random

from encoders import storage
from index_builder.embeddings import REJECTS, list_shards
from index_builder.index_duplicates import DUPLICATES_FILE
from index_builder.records import EmbedManifest, IndexManifest
from pipelines.inputs import Columns
from pipelines.reindex.root import RunRecord
from pipelines.search.html import THUMB
from pipelines.search.report import thumbnails

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
EXAMPLES_PER_REASON = 3
RESULTS_PER_QUERY = 5


def reject_examples(run: str) -> dict[str, list[dict]]:
    """A few reject records per reason, from the run's rejects/ shards."""
    out: dict[str, list[dict]] = {}
    for name in storage.listdir(storage.join(run, REJECTS)):
        if not name.endswith(".parquet"):
            continue
        for r in storage.read_parquet(storage.join(run, REJECTS, name)).to_pylist():
            if len(out.setdefault(r["reason"], [])) < EXAMPLES_PER_REASON:
                out[r["reason"]].append(r)
    return out


def sample_queries(run: str, canaries: list[str] | None, n: int, seed: int = 0) -> list[str]:
    """The canaries' first `n`, else `n` captions of the run's index sampled with a fixed seed."""
    if canaries:
        return canaries[:n]
    captions = [
        c
        for c in storage.read_parquet(storage.join(run, "index", "ids.parquet"), ["caption"]).column(0).to_pylist()
        if c
    ]
    return random.Random(seed).sample(sorted(set(captions)), min(n, len(set(captions))))


def write_report(
    run: str, record: RunRecord, em: EmbedManifest, im: IndexManifest, s, canaries: list[str] | None
) -> dict:
    """Write RUN/report.json and RUN/report.html; return the report data."""
    data = {
        **record.to_dict(),
        "reject_examples": reject_examples(run),
        "recall_by_nprobe": [p.to_dict() for p in im.recall.by_nprobe],
        "frontier": [r for r in im.choice.screened if "recall_at_k" in r],
        "queries": [],
    }
    queries = sample_queries(run, canaries, s.report_queries) if s.report_queries else []
    if queries:
        from pipelines.search.searcher import Searcher

        searcher = Searcher.open(storage.join(run, "index"), s.embed.model, s.embed.device)
        vectors = searcher.towers.encode_texts(queries).numpy()
        for q, hits in zip(queries, searcher.search(vectors, RESULTS_PER_QUERY)):
            data["queries"].append(
                {"query": q, "hits": [{"id": h.id, "score": round(h.score, 6), "caption": h.caption} for h in hits]}
            )
    if record.duplicates:
        data["duplicate_groups"] = shown_groups(run)
    ids = {h["id"] for q in data["queries"] for h in q["hits"]}
    ids |= {i for groups in data.get("duplicate_groups", {}).values() for g in groups for i in g["ids"]}
    thumbs = thumbnails(em.inputs or [], ids, Columns(**(em.columns or {}))) if ids else {}
    storage.write_json(storage.join(run, REPORT_JSON), data)
    with storage.atomic_open(storage.join(run, REPORT_HTML)) as fh:
        fh.write(render(data, thumbs).encode())
    return data


def shown_groups(run: str, groups: int = 3, members: int = 6) -> dict[str, list[dict]]:
    """The largest near-duplicate groups and the newest (those with most rows embedded tonight) of
    the run's index/duplicates.parquet, a few members each, for the report's images."""
    table = storage.read_parquet(storage.join(run, "index", DUPLICATES_FILE), ["id", "group_id", "similarity"])
    fresh: set[str] = set()
    for shard in list_shards(run):
        t = storage.read_parquet(shard.path, ["id", "copied"])
        fresh.update(i for i, c in zip(t.column("id").to_pylist(), t.column("copied").to_pylist()) if not c)
    by_group: dict[str, list[tuple[str, float]]] = {}
    for i, g, sim in zip(*(table.column(c).to_pylist() for c in ("id", "group_id", "similarity"))):
        by_group.setdefault(g, []).append((i, sim))

    def shown(g: str) -> dict:
        rows = sorted(by_group[g], key=lambda r: -r[1])[:members]
        return {
            "group_id": g,
            "size": len(by_group[g]),
            "ids": [i for i, _ in rows],
            "new": sum(i in fresh for i, _ in by_group[g]),
        }

    largest = sorted(by_group, key=lambda g: (-len(by_group[g]), g))[:groups]
    newest = sorted((g for g in by_group if any(i in fresh for i, _ in by_group[g])),
                    key=lambda g: (-sum(i in fresh for i, _ in by_group[g]), g))[:groups]  # fmt: skip
    return {"largest": [shown(g) for g in largest], "newest": [shown(g) for g in newest]}


def recall_plot(curve: list[dict], chosen: int | None, width: int = 420, height: int = 240) -> str:
    """An SVG line plot of recall@k against nprobe (log2 axis), the chosen nprobe marked."""
    if not curve:
        return "<p>(no inverted lists: exact search)</p>"
    pad = 40
    xs = [c["nprobe"] for c in curve]
    span = max(1, len(xs) - 1)

    def x(i: int) -> float:
        return pad + (width - 2 * pad) * i / span

    def y(r: float) -> float:
        return height - pad - (height - 2 * pad) * r

    points = " ".join(f"{x(i):.1f},{y(c['recall_at_k']):.1f}" for i, c in enumerate(curve))
    dots = "".join(
        f'<circle cx="{x(i):.1f}" cy="{y(c["recall_at_k"]):.1f}" r="{5 if c["nprobe"] == chosen else 3}" '
        f'fill="{"#c22" if c["nprobe"] == chosen else "#236"}"><title>nprobe {c["nprobe"]}: '
        f"{c['recall_at_k']:.3f}</title></circle>"
        for i, c in enumerate(curve)
    )
    ticks = "".join(
        f'<text x="{x(i):.1f}" y="{height - pad + 16}" font-size="11" text-anchor="middle">{n}</text>'
        for i, n in enumerate(xs)
    )
    yticks = "".join(
        f'<text x="{pad - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>'
        f'<line x1="{pad}" x2="{width - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
        for v in (0, 0.25, 0.5, 0.75, 1.0)
    )
    return (
        f'<svg id="recall-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="recall against nprobe">{yticks}'
        f'<polyline fill="none" stroke="#236" stroke-width="2" points="{points}"/>{dots}{ticks}'
        f'<text x="{width / 2}" y="{height - 4}" font-size="12" text-anchor="middle">nprobe (chosen in red)</text>'
        f'<text x="12" y="{height / 2}" font-size="12" transform="rotate(-90 12 {height / 2})" '
        f'text-anchor="middle">recall@10</text></svg>'
    )


def frontier_plot(rows: list[dict], kept: str, width: int = 420, height: int = 240) -> str:
    """An SVG scatter of the screened candidates' recall@k against bytes per vector (log2 axis),
    the kept factory in red; "" without candidates."""
    if not rows:
        return ""
    pad, logs = 40, [math.log2(r["bytes_per_vector"]) for r in rows]
    lo, hi = min(logs), max(max(logs), min(logs) + 1)

    def x(b: float) -> float:
        return pad + (width - 2 * pad) * (math.log2(b) - lo) / (hi - lo)

    def y(r: float) -> float:
        return height - pad - (height - 2 * pad) * r

    dots = "".join(
        f'<circle cx="{x(r["bytes_per_vector"]):.1f}" cy="{y(r["recall_at_k"]):.1f}" r="4" '
        f'fill="{"#c22" if r["factory"] == kept else "#236"}"><title>{html.escape(r["factory"])}: '
        f"{r['bytes_per_vector']:g} B, {r['recall_at_k']:.3f}</title></circle>"
        for r in rows
    )
    ticks = "".join(
        f'<text x="{x(b):.1f}" y="{height - pad + 16}" font-size="11" text-anchor="middle">{b:g}</text>'
        for b in sorted({r["bytes_per_vector"] for r in rows})
    )
    return (
        f'<svg id="frontier-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="recall against bytes per vector">{dots}{ticks}<text x="{width / 2}" y="{height - 4}" '
        f'font-size="12" text-anchor="middle">bytes per vector (kept in red)</text></svg>'
    )


def frontier_html(rows: list[dict], kept: str) -> str:
    """The frontier of the build that chose the index: a table and its plot."""
    if not rows:
        return "<p>no candidates screened (a --factory or the default index)</p>"
    table = _table([[r["factory"], r["bytes_per_vector"], f"{r['recall_at_k']:.3f}", r["nprobe"]] for r in rows],
                   ["candidate", "bytes/vector", "recall@k (subsample)", "nprobe"])  # fmt: skip
    return table + frontier_plot(rows, kept)


def _table(rows: list[list], head: list[str]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _groups_html(groups: dict[str, list[dict]], thumbs: dict[str, str]) -> str:
    out = ""
    for kind, shown in groups.items():
        out += f"<h4>{kind}</h4>" + ("" if shown else "<p>none</p>")
        for g in shown:
            cells = "".join(_thumb_cell(i, thumbs) for i in g["ids"])
            about = f"group {html.escape(g['group_id'])}: {g['size']} items, {g['new']} new tonight"
            out += f"<p>{about}</p><table><tr>{cells}</tr></table>"
    return out


def _thumb_cell(item: str, thumbs: dict[str, str]) -> str:
    name = html.escape(item)
    img = f'<img src="{thumbs[item]}" width="{THUMB}" alt="{name}">' if item in thumbs else "(no image)"
    return f"<td>{img}<br><small>{name}</small></td>"


def render(data: dict, thumbs: dict[str, str]) -> str:
    """The report page (pure: report data and id -> data: URI thumbnails in, HTML out)."""
    status = data["status"]
    colour = {"published": "#2a2", "rejected": "#c22"}.get(status, "#888")
    failed = data.get("failed_gates") or []
    head = (
        f"<h1>fusionindex nightly run {html.escape(data['run'])}</h1>"
        f'<p class="status" style="color:{colour}"><b>{html.escape(status)}</b>'
        + (f": gate{'s' if len(failed) > 1 else ''} {html.escape(', '.join(failed))} failed" if failed else "")
        + f"</p><p>previous published run: {html.escape(data.get('previous') or 'none (first night)')}; model "
        f"<code>{html.escape(data['model']['spec'])}</code></p>"
    )
    counts = _table([[k, v] for k, v in data["counts"].items()], ["rows", "count"])
    gates = _table(
        [
            [
                g["name"],
                "pass" if g["passed"] else ("n/a" if g["passed"] is None else "FAIL"),
                g["value"],
                g["limit"],
                g["detail"],
            ]
            for g in data["gates"]
        ],
        ["gate", "result", "value", "limit", "detail"],
    )
    stages = _table(
        [[name, st["seconds"], st.get("rows_per_s", "")] for name, st in data.get("stages", {}).items()],
        ["stage", "seconds", "rows/s"],
    )
    ix = data["index"]
    index = (
        f"<p>{html.escape(ix['factory'])}, {ix['ntotal']} vectors, nprobe {ix['nprobe']}, recall@10 "
        f"{ix['recall']['recall_at_k']:.3f} against exact search; template {html.escape(ix['training']['mode'])}: "
        f"{html.escape(str(ix['training'].get('reason', '')))}</p>"
    )
    rejects = (
        "".join(
            f"<h4>{html.escape(reason)} ({data['rejects_by_reason'].get(reason, len(rows))})</h4>"
            + _table(
                [[r["id"], r["source_file"], r["row_index"], r["message"]] for r in rows],
                ["id", "file", "row", "message"],
            )
            for reason, rows in data["reject_examples"].items()
        )
        or "<p>no rejects</p>"
    )
    canary = data.get("canary")
    if not canary:
        canary_html = "<p>no canary queries</p>"
    elif canary.get("skipped"):
        canary_html = f"<p>skipped: {html.escape(canary['skipped'])}</p>"
    else:
        canary_html = (
            f"<p>mean top-{canary['k']} overlap {canary['mean_overlap']:.3f} over {canary['queries']} "
            "queries; lowest:</p>" + _table([[w["query"], w["overlap"]] for w in canary["worst"]], ["query", "overlap"])
        )
    groups_html = _groups_html(data.get("duplicate_groups", {}), thumbs)
    grid = ""
    for q in data["queries"]:
        cells = ""
        for h in q["hits"]:
            hid = html.escape(h["id"])
            img = f'<img src="{thumbs[h["id"]]}" width="{THUMB}" alt="{hid}">' if h["id"] in thumbs else "(no image)"
            cells += f"<td>{img}<br><small>{h['score']:.3f} {hid}</small></td>"
        grid += f"<h4>&ldquo;{html.escape(q['query'])}&rdquo;</h4><table><tr>{cells}</tr></table>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fusionindex run report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}</style></head><body>"
        f"{head}<h2>Rows</h2>{counts}<h2>Gates</h2>{gates}<h2>Stages</h2>{stages}<h2>Index</h2>{index}"
        f"{recall_plot(data['recall_by_nprobe'], ix['nprobe'])}"
        f"<h3>Frontier</h3>{frontier_html(data.get('frontier', []), ix['factory'])}<h2>Rejects</h2>{rejects}"
        f"<h2>Canary queries</h2>{canary_html}<h2>Sample queries</h2>{grid or '<p>none</p>'}"
        + (f"<h2>Near-duplicate groups</h2>{groups_html}" if groups_html else "")
        + "</body></html>\n"
    )
