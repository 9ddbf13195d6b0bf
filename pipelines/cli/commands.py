"""The commands: name, one-line help, description, settings class and run function, in `--help` order.

`build_parser` generates every sub-parser from this table and the settings classes' fields
(`pipelines.cli.options`); `docs/cli.md` and the README's command list are generated from the
same table (`pipelines.cli.docs`). A new command is a settings class, a run function in
`summaries` and a row here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from encoders.settings import RandomClipSettings
from index_builder.duplicates_settings import DuplicatesSettings
from index_builder.settings import BuildSettings, EvaluateIndexSettings
from pipelines.cli import summaries
from pipelines.cli.options import Parser, add_options
from pipelines.datasets.settings import CatalogueSettings, SampleSettings
from pipelines.embed.settings import EmbedSettings
from pipelines.reindex.settings import ReindexSettings
from pipelines.search.settings import ReportSettings, SearchSettings
from pipelines.training.settings import EvaluateSettings, FinetuneSettings

PROG = "fusionindex"
DESCRIPTION = "Image-caption embedding and IVF-PQ indexing pipeline."


@dataclass(frozen=True)
class Command:
    name: str
    settings: type  # its options are this class's option fields
    run: Callable[[argparse.Namespace, list[str]], int]  # (parsed flags, Beam arguments) -> exit status
    help: str  # one line: `fusionindex --help`, the README's command list
    description: str | None = None  # `fusionindex NAME --help`, docs/cli.md
    beam: bool = False  # takes Beam pipeline options it does not know itself (--runner, ...)
    required_flags: bool = True  # False: required options may come from elsewhere (reindex --config)
    lean_allocators: bool = False  # builds indexes: the entry sets Arrow's and glibc's allocators first
    imports: Callable[[argparse.Namespace], tuple[str, ...]] = lambda args: ()  # its run's modules (start-up)
    early: Callable[[argparse.Namespace], None] | None = None  # what starts before the imports, beside them


def engine_modules(args: argparse.Namespace) -> tuple[str, ...]:
    """The modules an embed run imports: the driver and its engine (Beam, or Spark without Beam)."""
    engine = "pipelines.embed.spark" if getattr(args, "engine", "beam") == "spark" else "pipelines.embed.beam"
    return ("pipelines.embed.run", engine)


COMMANDS = (
    Command(
        "embed",
        EmbedSettings,
        summaries.cmd_embed,
        "embed Parquet shards into embedding shards (Beam or Spark)",
        "Embed image-caption Parquet shards, fuse, and write embedding shards + manifest.json. "
        "Options Beam knows (--runner, ...) go to Beam; --engine spark runs the same units on Spark.",
        beam=True,
        imports=engine_modules,
        early=summaries.start_engine_early,
    ),
    Command(
        "build-index",
        BuildSettings,
        summaries.cmd_build,
        "train, add and merge a FAISS index over embedding shards; tune nprobe for a recall target",
        beam=True,
        lean_allocators=True,
        imports=lambda args: ("index_builder.build", "pipelines.index_add"),
    ),
    Command(
        "evaluate-index",
        EvaluateIndexSettings,
        summaries.cmd_evaluate_index,
        "re-measure an index: recall@1/10/100 against exact search, recall by nprobe, latency",
    ),
    Command(
        "duplicates",
        DuplicatesSettings,
        summaries.cmd_duplicates,
        "near-duplicate groups of an index's items: IDX/duplicates.parquet",
        "Group the items of IDX whose stored vectors are at cosine >= --threshold (connected components of those "
        "pairs; exact copies by their bytes or caption without a search) and write IDX/duplicates.parquet: id, "
        "group_id, similarity. `search --collapse-duplicates` then returns one result per group.",
    ),
    Command("search", SearchSettings, summaries.cmd_search, "rank the index for a text and/or image query"),
    Command(
        "reindex",
        ReindexSettings,
        summaries.cmd_reindex,
        "the nightly job: incremental embed, index, gates, report, atomic publish (exit 3: a gate failed)",
        "Embed today's catalogue against the published run (unchanged rows keep their vectors), build "
        "the index on the published template unless the vectors drifted, check the gates and publish ROOT/LATEST "
        "only if they pass. Exit 0 published (or nothing to do), 3 a gate failed (LATEST untouched), 2 usage error.",
        beam=True,
        required_flags=False,
        lean_allocators=True,
        imports=lambda args: ("pipelines.reindex.run", "index_builder.build", *engine_modules(args)),
    ),
    Command(
        "finetune",
        FinetuneSettings,
        summaries.cmd_finetune,
        "contrastive fine-tuning (+ attention fusion) on image-caption pairs",
        "Fine-tune a CLIP checkpoint (--model) or a new ResNet + text-encoder model on "
        "image-caption Parquet shards. Rows of split 'train' / 'val' are used where a split column exists.",
    ),
    Command(
        "evaluate",
        EvaluateSettings,
        summaries.cmd_evaluate,
        "recall@1/5/10: text->image, image->text, query->fused vs query->image",
    ),
    Command("report", ReportSettings, summaries.cmd_report, "an HTML page of queries and their top results as images"),
    Command(
        "make-catalogue",
        CatalogueSettings,
        summaries.cmd_make_catalogue,
        "a real catalogue from Debian packages (emoji, openclipart), img2dataset schema",
    ),
    Command(
        "make-sample",
        SampleSettings,
        summaries.cmd_make_sample,
        "write a small synthetic catalogue (real JPEG/PNG bytes) in img2dataset's schema",
    ),
    Command(
        "make-random-clip",
        RandomClipSettings,
        summaries.cmd_make_random_clip,
        "write a tiny random CLIP checkpoint (for demos and tests only)",
    ),
)
BY_NAME = {c.name: c for c in COMMANDS}


def build_parser() -> Parser:
    """The `fusionindex` parser; `parser.commands` maps each command name to its sub-parser."""
    parser = Parser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for c in COMMANDS:
        p = sub.add_parser(c.name, help=c.help, description=c.description)
        add_options(p, c.settings, required=c.required_flags)
    parser.commands = sub.choices  # name -> its parser
    return parser
