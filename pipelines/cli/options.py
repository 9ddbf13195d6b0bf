"""Option generation: the parser's options, with defaults and allowed values from the settings classes.

`settings_from` builds a settings object from the parsed flags by field name (or its
metadata's `dest`), so adding an option touches the parser and that object only.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import fields, is_dataclass

from encoders.settings import FUSIONS
from index_builder.choose import MERGE
from index_builder.embeddings import VECTOR_COLUMNS
from index_builder.settings import RETRAIN, BuildSettings
from pipelines.embed.settings import (
    DECODE_AHEAD,
    DUPLICATE_POLICIES,
    ENGINES,
    PRECISIONS,
    PREPROCESS_MODES,
    EmbedSettings,
)
from pipelines.inputs import Columns

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
