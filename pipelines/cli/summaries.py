"""Each command's run: settings from the flags -> the library call -> the one summary line it prints."""

from __future__ import annotations

import json

from encoders.errors import SettingsError
from encoders.options import flag_of
from encoders.settings import RandomClipSettings
from index_builder.duplicates_settings import DuplicatesSettings
from index_builder.settings import BuildSettings, EvaluateIndexSettings
from pipelines.cli.options import settings_from
from pipelines.datasets.settings import CatalogueSettings, SampleSettings
from pipelines.embed.settings import EmbedSettings
from pipelines.reindex.settings import ReindexSettings
from pipelines.search.settings import ReportSettings, SearchSettings
from pipelines.training.settings import EvaluateSettings, FinetuneSettings


def cmd_reindex(args, rest: list[str]) -> int:
    from pipelines.reindex.run import run_reindex

    wanted = (("root", ReindexSettings), ("inputs", EmbedSettings), ("model", EmbedSettings))
    missing = [flag_of(cls, name) for name, cls in wanted if not getattr(args, name)]
    if missing:
        raise SettingsError(f"reindex needs {', '.join(missing)} (on the command line or in --config)")
    args.output = args.embeddings = args.root  # each run's own paths are set by the driver
    args.template = None
    r = run_reindex(settings_from(ReindexSettings, args), rest)
    c = r.record.counts.to_dict() if r.record.counts else {}
    how = {"published": "published", "rejected": "REJECTED (LATEST unchanged)", "unchanged": "nothing to do"}[r.status]
    print(
        f"run {r.run_id}: {how}; "
        + ", ".join(f"{k} {v}" for k, v in c.items())
        + (f"; failed gates: {', '.join(r.record.failed_gates)}" if r.status == "rejected" else "")
    )
    return r.exit_code


def start_engine_early(args) -> None:
    """Before embed's imports: with --engine spark, Spark's JVM and Python daemons start beside them
    (pipelines/embed/spark_context.py `start_early`)."""
    if args.engine == "spark":
        from pipelines.embed.spark_context import start_early

        start_early(settings_from(EmbedSettings, args))


def cmd_embed(args, rest: list[str]) -> int:
    from pipelines.embed.run import run_embed

    try:
        m = run_embed(settings_from(EmbedSettings, args), rest)
    finally:
        if args.engine == "spark":
            from pipelines.embed.spark_context import discard_early

            discard_early()
    c = m.counts
    print(
        f"embedded {c.embedded} of {c.read} rows ({c.rejected} rejected, {c.skipped} skipped, "
        f"{c.empty_caption} without caption) into {args.output} in {m.timings.total_s:.1f} s"
        + (f"; reused {m.reused_shards} of {m.shards} committed shards" if m.reused_shards else "")
    )
    return 0


def cmd_build(args, rest) -> int:
    from index_builder.build import build_index
    from pipelines.index_add import adder_for

    settings = settings_from(BuildSettings, args)
    m = build_index(settings, adder_for(settings.workers, rest))
    r = m.recall
    print(
        f"built {m.factory} over {m.ntotal} {m.vector} vectors in {args.output} "
        f"({m.bytes_per_vector:g} B/vector, {m.memory_bytes / 2**20:.1f} MiB; nprobe {m.nprobe}, "
        f"recall@{r.k} {r.recall_at_k:.3f} vs exact on {r.queries} held-out queries"
        + ("" if r.reached else f", BELOW the target {r.target}")
        + f") in {m.timings.total_s:.1f} s"
    )
    return 0


def cmd_duplicates(args, rest) -> int:
    from index_builder.index_duplicates import DUPLICATES_FILE, write_duplicates
    from index_builder.records import Latest

    s = settings_from(DuplicatesSettings, args)
    if Latest.exists(s.index):
        raise SettingsError(
            f"{s.index} is a reindex ROOT, and a published run is never changed afterwards: compute the groups "
            "inside the night (reindex --duplicates 0.97), or give an index directory of your own"
        )
    c = write_duplicates(s.index, s.threshold, s.vector)
    print(
        f"{c['groups']} groups, {c['rows_in_groups']} items in them ({c['vector']} vectors at cosine >= "
        f"{c['threshold']:g}; {c['searched']} searched over {c['search']}) -> {s.index}/{DUPLICATES_FILE}"
    )
    return 0


def cmd_search(args, rest) -> int:
    from pipelines.search.searcher import run_search

    for h in run_search(settings_from(SearchSettings, args)):
        if args.json:
            print(
                json.dumps(
                    {"rank": h.rank, "id": h.id, "score": round(h.score, 6), "caption": h.caption, **h.carried},
                    ensure_ascii=False,
                    default=str,  # carried values JSON has no type for (dates, decimals) as text
                )
            )
        else:
            print(f"{h.rank:>3}  {h.score:+.4f}  {h.id}  {h.caption}")
    return 0


def cmd_finetune(args, rest) -> int:
    from pipelines.training.finetune import run_finetune

    progress = None
    if not args.quiet:
        from tqdm.auto import tqdm as progress
    s = run_finetune(settings_from(FinetuneSettings, args), progress=progress)
    print(
        f"fine-tuned {s['family']} model in {s['seconds']:.0f} s: best val recall {s['best_val_recall']:.3f} at epoch "
        f"{s['best_epoch']} ({s['stopped']}); model in {s['output']}"
    )
    return 0


def cmd_evaluate(args, rest) -> int:
    from encoders import storage
    from pipelines.training.evaluation import run_evaluate
    from pipelines.training.markdown import to_markdown

    s = settings_from(EvaluateSettings, args)
    split = None if s.split == "all" else s.split
    report = run_evaluate(s.model, list(s.data), split=split, device=s.device, limit=s.limit, columns=s.columns)
    md = to_markdown(report)
    if s.json:
        storage.write_json(s.json, report)
    if s.markdown:
        with storage.atomic_open(s.markdown) as fh:
            fh.write(md.encode())
    print(md, end="")
    return 0


def cmd_evaluate_index(args, rest) -> int:
    from encoders import storage
    from index_builder.records import Latest
    from index_builder.remeasure import evaluate_index

    s = settings_from(EvaluateIndexSettings, args)
    r = evaluate_index(Latest.index_of(s.index), s.embeddings, s.queries, s.seed, s.nprobe)
    if s.json:
        storage.write_json(s.json, r)
    claimed = r["claimed_recall_at"] or {}
    print(f"{r['factory']} ({r['ntotal']} vectors) at nprobe {r['nprobe']}, {r['queries']} queries:")
    for k, v in r["recall_at"].items():
        said = f" (manifest: {claimed[k]:.3f}, difference {r['difference'][k]:+.3f})" if k in r["difference"] else ""
        print(f"  recall@{k} {v:.3f}{said}")
    lat = r["latency"]
    alone, batched = lat["batch_1_ms"], lat["batch_1024_us_per_query"]
    print(f"  latency: {alone:.3f} ms a query alone, {batched:.1f} us a query in a batch of 1024")
    return 0


def cmd_report(args, rest) -> int:
    from pipelines.search.report import run_report

    s = settings_from(ReportSettings, args)
    results = run_report(
        s.index,
        s.output,
        queries=list(s.queries) if s.queries else None,
        queries_from=list(s.queries_from) if s.queries_from else None,
        split=None if s.split == "all" else s.split,
        n=s.n,
        k=s.k,
        model=s.model,
        seed=s.seed,
        device=s.device,
        columns=s.columns,
    )
    asked = [r for r in results if r.expected]
    found = sum(any(h.id == r.expected for h in r.hits) for r in asked)
    print(
        f"wrote {s.output}: {len(results)} queries"
        + (f", {found} of {len(asked)} find their own item in the top {s.k}" if asked else "")
    )
    return 0


def cmd_make_catalogue(args, rest) -> int:
    from pipelines.datasets.catalogue import make_catalogue

    s = settings_from(CatalogueSettings, args)
    summary = make_catalogue(s.output, source=s.source, limit=s.limit, image_size=s.image_size)
    print(
        f"wrote {summary['rows']} rows in {len(summary['shards'])} shards to {s.output} (splits: {summary['by_split']})"
    )
    return 0


def cmd_make_sample(args, rest) -> int:
    from pipelines.datasets.sample import make_sample

    s = settings_from(SampleSettings, args)
    paths = make_sample(s.output, rows=s.rows, shards=s.shards, seed=s.seed)
    print(f"wrote {s.rows} rows in {len(paths)} shards to {s.output}")
    return 0


def cmd_make_random_clip(args, rest) -> int:
    from encoders.random_models import make_random_clip

    s = settings_from(RandomClipSettings, args)
    make_random_clip(s.output, seed=s.seed)
    print(f"wrote a RANDOM (untrained) CLIP checkpoint to {s.output}: its rankings are meaningless")
    return 0
