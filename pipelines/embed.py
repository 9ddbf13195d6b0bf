"""`fusionindex embed`: Parquet shards -> Beam RunInference -> embedding shards + manifest.

Pipeline shape (one output shard per input row group, rows in input order):

    Create(work units) | Reshuffle | ReadUnit --rows--> RunInference(Keyed(EmbeddingModelHandler))
                                       \--counts, read-time rejects--\         |
                                                               Flatten <-------/
                                                     GroupByKey(unit) | WriteUnit

WriteUnit writes `embeddings/part-i-of-N.parquet` (and `rejects/part-i-of-N.parquet` when a
row was rejected) atomically, with the unit's counts in the Parquet key-value metadata. The
driver sums those counts after the run, checks read = embedded + rejected + skipped, and
writes `manifest.json` last.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from encoders.fusion import WeightedFusion
from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from encoders.loading import describe_clip_checkpoint, fingerprint, resolve_model_dir
from encoders.towers import has_caption
from index_builder import storage
from index_builder.embeddings import (
    EMBEDDINGS,
    MANIFEST,
    REJECTS,
    REJECTS_SCHEMA,
    embeddings_schema,
    list_shards,
    shard_name,
    vectors_to_arrow,
)
from pipelines.inference import Embedded, EmbeddingModelHandler, ItemInput, Rejected
from pipelines.inputs import SUCCESS, Columns, InputError, WorkUnit, plan_inputs, read_unit

log = logging.getLogger(__name__)

COUNTS_KEY = b"fusionindex.counts"
DEFAULT_RUNNER = "FnApiRunner"  # the local runner that needs no download (DirectRunner tries Prism first)


@dataclass
class EmbedConfig:
    inputs: list[str]
    output: str
    model: str
    batch_size: int = 64
    fusion: WeightedFusion = field(default_factory=WeightedFusion)
    device: str | None = None
    columns: Columns = field(default_factory=Columns)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_pickle: bool = False
    large_model: bool = False


class ReadUnit(beam.DoFn):
    """WorkUnit -> rows to embed (main), plus ('done' tag) the unit's read counts and read-time rejects."""

    DONE = "done"

    def __init__(self):
        self.read = Metrics.counter("fusionindex", "rows_read")
        self.skipped = Metrics.counter("fusionindex", "rows_skipped")

    def process(self, unit: WorkUnit):
        rows = read_unit(unit)
        skipped = sent = 0
        for row in rows:
            if row.status != SUCCESS:
                skipped += 1
            elif row.id is None:
                yield beam.pvalue.TaggedOutput(self.DONE, (unit.index, ("result", row.row_index, None, row.caption, Rejected("null_id", "id is null"))))
            else:
                sent += 1
                yield (unit.index, row.row_index, row.id, row.caption), ItemInput(row.id, row.caption, row.image)
        self.read.inc(len(rows))
        self.skipped.inc(skipped)
        yield beam.pvalue.TaggedOutput(self.DONE, (unit.index, ("read", len(rows), skipped, sent, unit.path)))


def _to_unit(keyed):
    (unit_index, row_index, row_id, caption), result = keyed
    return unit_index, ("result", row_index, row_id, caption, result)


class WriteUnit(beam.DoFn):
    """(unit index, [read record, results...]) -> committed shard (+ rejects), counts in its metadata."""

    def __init__(self, output: str, total_units: int, dim: int):
        self.output = output
        self.total = total_units
        self.dim = dim
        self.embedded = Metrics.counter("fusionindex", "rows_embedded")
        self.rejected = Metrics.counter("fusionindex", "rows_rejected")
        self.shards = Metrics.counter("fusionindex", "shards_written")

    def process(self, element):
        unit_index, records = element
        reads = [r for r in records if r[0] == "read"]
        results = sorted((r for r in records if r[0] == "result"), key=lambda r: r[1])
        if len(reads) != 1:
            raise RuntimeError(f"unit {unit_index}: expected one read record, got {len(reads)}")
        _, read, skipped, sent, source = reads[0]
        good = [r for r in results if isinstance(r[4], Embedded)]
        bad = [r for r in results if isinstance(r[4], Rejected)]
        counts = {
            "read": read,
            "embedded": len(good),
            "rejected": len(bad),
            "skipped": skipped,
            "empty_caption": sum(1 for r in good if not r[4].has_text),
            "rejects_by_reason": dict(Counter(r[4].reason for r in bad)),
        }
        if len(results) != read - skipped:
            raise RuntimeError(f"unit {unit_index} ({source}): rows do not add up: {counts}, sent {sent}")
        name = shard_name(unit_index, self.total)
        if bad:
            self._write(storage.join(self.output, REJECTS, name), self._rejects(bad, source), None)
        self._write(storage.join(self.output, EMBEDDINGS, name), self._embeddings(good), counts)
        self.embedded.inc(len(good))
        self.rejected.inc(len(bad))
        self.shards.inc()
        log.info("wrote %s: %d embedded, %d rejected, %d skipped", name, len(good), len(bad), skipped)
        yield unit_index, counts

    def _embeddings(self, good) -> pa.Table:
        def stack(attr):
            return np.stack([getattr(r[4], attr) for r in good]) if good else np.zeros((0, self.dim), np.float32)

        return pa.Table.from_arrays(
            [
                pa.array([r[2] for r in good], pa.string()),
                pa.array([r[3] for r in good], pa.string()),
                vectors_to_arrow(stack("image")),
                vectors_to_arrow(stack("text")),
                vectors_to_arrow(stack("fused")),
            ],
            schema=embeddings_schema(self.dim),
        )

    @staticmethod
    def _rejects(bad, source: str) -> pa.Table:
        rows = [{"id": r[2], "source_file": source, "row_index": r[1], "reason": r[4].reason, "message": r[4].message} for r in bad]
        return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)

    @staticmethod
    def _write(path: str, table: pa.Table, counts: dict | None) -> None:
        if counts is not None:
            table = table.replace_schema_metadata({COUNTS_KEY: json.dumps(counts).encode()})
        with storage.atomic_open(path) as fh:
            pq.write_table(table, fh)


def build_pipeline(p: beam.Pipeline, units: list[WorkUnit], handler: EmbeddingModelHandler, output: str, dim: int):
    """Add the embed transforms to `p`; returns the PCollection of (unit index, counts)."""
    read = (
        p
        | "Units" >> beam.Create(units)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(ReadUnit()).with_outputs(ReadUnit.DONE, main="rows")
    )
    embedded = (
        read.rows
        | "Embed" >> RunInference(KeyedModelHandler(handler))
        | "ByUnit" >> beam.Map(_to_unit)
    )
    return (
        (embedded, read[ReadUnit.DONE])
        | "Join" >> beam.Flatten()
        | "Group" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(WriteUnit(output, len(units), dim))
    )


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the leftover CLI args; the default runner needs no download."""
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options


def prepare_output(output: str) -> None:
    """Remove a previous run's outputs (manifest first); refuse a directory holding anything else."""
    names = [n for n in storage.listdir(output) if not n.startswith(".")]
    foreign = [n for n in names if n not in (MANIFEST, EMBEDDINGS, REJECTS)]
    if foreign:
        raise InputError(f"--output {output} already holds files that are not a fusionindex run ({', '.join(foreign[:5])}); choose a new or empty directory")
    if names:
        log.info("replacing the previous run in %s", output)
    for name in (MANIFEST, EMBEDDINGS, REJECTS):
        storage.remove(storage.join(output, name), recursive=True)
    storage.makedirs(storage.join(output, EMBEDDINGS))


def sum_counts(output: str) -> dict:
    """Add up the per-shard counts stored in the committed shards' metadata."""
    total = Counter()
    reasons = Counter()
    for shard in list_shards(output):
        counts = json.loads(shard.metadata[COUNTS_KEY])
        reasons.update(counts.pop("rejects_by_reason"))
        total.update(counts)
    keys = ("read", "embedded", "rejected", "skipped", "empty_caption")
    return {**{k: int(total[k]) for k in keys}, "rejects_by_reason": dict(sorted(reasons.items()))}


def run_embed(cfg: EmbedConfig, beam_args: list[str] | None = None) -> dict:
    """Run the whole embed job; return the manifest written to `cfg.output/manifest.json`."""
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    model_dir = resolve_model_dir(cfg.model, allow_pickle=cfg.allow_pickle)
    info = describe_clip_checkpoint(model_dir)
    plan = plan_inputs(cfg.inputs, cfg.columns)
    if not plan.units:
        raise InputError(f"the input files hold no row groups: {', '.join(plan.files)}")
    prepare_output(cfg.output)
    handler = EmbeddingModelHandler(
        cfg.model,
        fusion=cfg.fusion,
        batch_size=cfg.batch_size,
        device=cfg.device,
        max_pixels=cfg.max_pixels,
        max_bytes=cfg.max_bytes,
        allow_pickle=cfg.allow_pickle,
        large_model=cfg.large_model,
    )
    options = pipeline_options(beam_args or [])
    t_pipeline = time.monotonic()
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, plan.units, handler, cfg.output, info["dim"])
    pipeline_s = time.monotonic() - t_pipeline
    counts = sum_counts(cfg.output)
    if counts["read"] != plan.total_rows or counts["read"] != counts["embedded"] + counts["rejected"] + counts["skipped"]:
        raise RuntimeError(f"row accounting failed: planned {plan.total_rows} rows, shards report {counts}; no manifest written")
    manifest = {
        "kind": "fusionindex.embeddings",
        "format_version": 1,
        "inputs": plan.files,
        "columns": asdict(cfg.columns),
        "counts": counts,
        "shards": len(plan.units),
        "dim": info["dim"],
        "model": {"spec": cfg.model, "model_type": info["model_type"], "fingerprint": fingerprint(model_dir)},
        "fusion": cfg.fusion.params(),
        "batch_size": cfg.batch_size,
        "device": cfg.device or "auto",
        "runner": str(options.view_as(StandardOptions).runner),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "timings": {"total_s": round(time.monotonic() - t0, 3), "pipeline_s": round(pipeline_s, 3)},
    }
    storage.write_json(storage.join(cfg.output, MANIFEST), manifest)
    log.info("embedded %d of %d rows (%d rejected, %d skipped) into %s", counts["embedded"], counts["read"], counts["rejected"], counts["skipped"], cfg.output)
    return manifest
