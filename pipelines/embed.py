"""`fusionindex embed`: Parquet shards -> Beam -> embedding shards + manifest.

Pipeline shape (one output shard per input row group, rows in input order):

    Create(work units) | Reshuffle | EmbedUnit  <- side input: duplicate ids (ReadIds | GroupByKey)

EmbedUnit reads one row group, embeds its rows in batches through `EmbeddingModelHandler`
(the RunInference ModelHandler interface; the model is loaded once per process with Beam's
`shared.Shared`, or once per machine with `MultiProcessShared` for `--large-model`, as
RunInference does), and commits `embeddings/part-i-of-N.parquet` (and
`rejects/part-i-of-N.parquet`) atomically, counts in the Parquet metadata.

Why not the RunInference transform itself: its output loses the row group an item came
from, so writing deterministic per-row-group shards needs a GroupByKey of every embedding
afterwards. That shuffles all vectors across the network and is a barrier in batch mode: no
shard is committed before the last row is embedded, so a killed run keeps nothing and cannot
resume. Per-unit processing commits each shard as soon as it is done; a re-run of the same
command reuses committed shards.

The driver checks read = embedded + rejected + skipped over all shards and writes
`manifest.json` last.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterator
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.utils import multi_process_shared, shared

from encoders.fusion import WeightedFusion
from encoders.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from encoders.loading import fingerprint, resolve_model_dir
from encoders.models import describe_checkpoint
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
from pipelines.inference import THREADS_ENV, Embedded, EmbeddingModelHandler, ItemInput, Rejected
from pipelines.inputs import SUCCESS, Columns, InputError, InputPlan, Row, WorkUnit, iter_unit, plan_inputs, read_ids

log = logging.getLogger(__name__)

COUNTS_KEY = b"fusionindex.counts"
RUN_FILE = ".run.json"  # what this output directory is being built from; decides resume
DEFAULT_RUNNER = "FnApiRunner"  # the local runner that needs no download (DirectRunner tries Prism first)
DUPLICATE_POLICIES = ("reject", "allow")


@dataclass
class EmbedConfig:
    inputs: list[str]
    output: str
    model: str
    batch_size: int = 64
    fusion: WeightedFusion | None = field(default_factory=WeightedFusion)  # None: the model's learned attention fusion
    device: str | None = None
    columns: Columns = field(default_factory=Columns)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_pickle: bool = False
    large_model: bool = False
    duplicate_ids: str = "reject"  # reject: keep the first by input order, reject later ones
    skip_bad_files: bool = False
    restart: bool = False  # ignore committed shards of an interrupted identical run
    preprocess: str = "auto"  # auto | pil | tensor (see pipelines.inference.PREPROCESS_MODES)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    decode_ahead: str = "auto"  # auto (CUDA only) | on | off: decode batch k+1 while batch k runs


@dataclass
class RowResult:
    row_index: int
    id: str | None
    caption: str | None
    outcome: "Embedded | Rejected"


class ReadIds(beam.DoFn):
    """WorkUnit -> (id, (unit index, row index)) for every row that would be embedded."""

    def __init__(self, skip_bad_files: bool):
        self.skip_bad_files = skip_bad_files

    def process(self, unit: WorkUnit):
        try:
            pairs = read_ids(unit)
        except InputError:
            if not self.skip_bad_files:
                raise
            pairs = []  # EmbedUnit rejects the whole unreadable row group
        for row_index, row_id in pairs:
            yield row_id, (unit.index, row_index)


def later_duplicates(element):
    """(id, [(unit, row), ...]) -> (unit, (row, first unit, first row)) for all but the first occurrence."""
    row_id, places = element
    places = sorted(places)
    for unit, row in places[1:]:
        yield unit, (row, places[0][0], places[0][1])


def acquire_model(handler: EmbeddingModelHandler, handle: shared.Shared, tag: str):
    """Load the model once per process (or per machine for large models), as RunInference does."""
    if handler.share_model_across_processes():
        return multi_process_shared.MultiProcessShared(handler.load_model, tag=tag, always_proxy=True).acquire()
    return handle.acquire(handler.load_model, tag=tag)


class EmbedUnit(beam.DoFn):
    """WorkUnit -> committed shard (+ rejects); yields (unit index, counts)."""

    def __init__(self, handler: EmbeddingModelHandler, output: str, unit_paths: list[str], dim: int, batch_size: int, model_tag: str,
                 skip_bad_files: bool, resume: bool, decode_ahead: str = "auto"):
        self.handler = handler
        self.decode_ahead = decode_ahead  # auto: on CUDA only
        self.output = output
        self.unit_paths = unit_paths  # unit index -> source file, for messages
        self.total = len(unit_paths)
        self.dim = dim
        self.batch_size = batch_size
        self.model_tag = model_tag
        self.skip_bad_files = skip_bad_files
        self.resume = resume
        self._shared = shared.Shared()
        self._model = None
        self.read = Metrics.counter("fusionindex", "rows_read")
        self.skipped = Metrics.counter("fusionindex", "rows_skipped")
        self.embedded = Metrics.counter("fusionindex", "rows_embedded")
        self.rejected = Metrics.counter("fusionindex", "rows_rejected")
        self.reused = Metrics.counter("fusionindex", "shards_reused")
        self.batch_ms = Metrics.distribution("fusionindex", "inference_batch_latency_ms")
        self.unit_ms = Metrics.distribution("fusionindex", "unit_ms")  # read + embed + commit, model load excluded
        self.load_ms = Metrics.distribution("fusionindex", "load_model_ms")

    def process(self, unit: WorkUnit, duplicates: dict):
        name = shard_name(unit.index, self.total)
        shard_path = storage.join(self.output, EMBEDDINGS, name)
        if self.resume and storage.exists(shard_path):
            self.reused.inc()
            log.info("reusing committed %s", name)
        else:
            t = time.perf_counter()
            counts = self._embed_unit(unit, name, shard_path, duplicates)
            self.unit_ms.update(int((time.perf_counter() - t) * 1000))
            yield unit.index, counts

    def _embed_unit(self, unit: WorkUnit, name: str, shard_path: str, duplicates: dict) -> dict:
        dups = {row: (u, r) for row, u, r in duplicates.get(unit.index, [])}
        results: list[RowResult] = []
        counts = {"read": 0, "skipped": 0}
        try:
            batches = self._classify(iter_unit(unit, self.batch_size), dups, results, counts)
            for batch, outcomes in self._embed_batches(batches):
                results.extend(RowResult(r.row_index, r.id, r.caption, o) for r, o in zip(batch, outcomes))
        except InputError as exc:
            if not self.skip_bad_files:
                raise
            log.warning("skipping unreadable row group: %s", exc)
            results = [RowResult(unit.first_row + i, None, None, Rejected("unreadable_row_group", str(exc))) for i in range(unit.num_rows)]
            return self._commit(unit, name, shard_path, results, read=unit.num_rows, skipped=0, bad_file=str(exc))
        self.read.inc(counts["read"])
        self.skipped.inc(counts["skipped"])
        return self._commit(unit, name, shard_path, results, read=counts["read"], skipped=counts["skipped"])

    def _classify(self, row_batches: Iterator[list[Row]], dups: dict, results: list[RowResult], counts: dict) -> Iterator[list[Row]]:
        """Count and skip non-success rows, reject null and duplicate ids; yield the rows to embed."""
        for rows in row_batches:
            todo = []
            for row in rows:
                if row.status != SUCCESS:
                    counts["skipped"] += 1
                elif row.id is None:
                    results.append(RowResult(row.row_index, None, row.caption, Rejected("null_id", "id is null")))
                elif row.row_index in dups:
                    first = dups[row.row_index]
                    where = f"{self.unit_paths[first[0]]} row {first[1]}"
                    results.append(RowResult(row.row_index, row.id, row.caption, Rejected("duplicate_id", f"id {row.id!r} first seen in {where}")))
                else:
                    todo.append(row)
            counts["read"] += len(rows)
            if todo:
                yield todo

    def _embed_batches(self, batches: Iterator[list[Row]]):
        """Yield (batch, outcomes). On CUDA, batch k+1 is decoded in a thread while batch k runs
        forward; on CPU they run in turn: the cores are busy either way, and torch work in a
        second thread measurably slowed the forward passes (5-15% on 2 cores)."""
        model = None
        ahead = pool = None
        try:
            for batch in batches:
                if model is None:
                    model = self._get_model()
                    on_cuda = str(model.describe()["device"]).startswith("cuda")
                    if self.decode_ahead == "on" or (self.decode_ahead == "auto" and on_cuda):
                        pool = cf.ThreadPoolExecutor(1, thread_name_prefix="decode")
                items = [ItemInput(r.id, r.caption, r.image) for r in batch]
                if pool is None:
                    yield batch, self._timed(self.handler.run_inference, items, model)
                    continue
                nxt = (batch, items, pool.submit(self.handler.prepare, items, model))
                if ahead is not None:
                    yield ahead[0], self._timed(self.handler.complete, ahead[2].result(), ahead[1], model)
                ahead = nxt
            if ahead is not None:
                yield ahead[0], self._timed(self.handler.complete, ahead[2].result(), ahead[1], model)
        finally:
            if pool is not None:
                pool.shutdown()

    def _timed(self, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        self.batch_ms.update(int((time.perf_counter() - t) * 1000))
        return out

    def _get_model(self):
        if self._model is None:
            t = time.perf_counter()
            self._model = acquire_model(self.handler, self._shared, self.model_tag)
            self.load_ms.update(int((time.perf_counter() - t) * 1000))
        return self._model

    def _commit(self, unit: WorkUnit, name: str, shard_path: str, results: list[RowResult], *, read: int, skipped: int, bad_file: str | None = None) -> dict:
        results.sort(key=lambda r: r.row_index)
        good = [r for r in results if isinstance(r.outcome, Embedded)]
        bad = [r for r in results if isinstance(r.outcome, Rejected)]
        counts = {
            "read": read,
            "embedded": len(good),
            "rejected": len(bad),
            "skipped": skipped,
            "empty_caption": sum(1 for r in good if not r.outcome.has_text),
            "rejects_by_reason": dict(Counter(r.outcome.reason for r in bad)),
            "bad_file": None if bad_file is None else {"path": unit.path, "row_group": unit.row_group, "error": bad_file},
        }
        if read != len(good) + len(bad) + skipped:
            raise RuntimeError(f"unit {unit.index} ({unit.path}): rows do not add up: {counts}")
        if bad:  # rejects first: a committed shard implies its rejects are committed
            _write(storage.join(self.output, REJECTS, name), _rejects_table(bad, unit.path))
        _write(shard_path, _embeddings_table(good, self.dim).replace_schema_metadata({COUNTS_KEY: json.dumps(counts).encode()}))
        self.embedded.inc(len(good))
        self.rejected.inc(len(bad))
        log.info("committed %s: %d embedded, %d rejected, %d skipped", name, len(good), len(bad), skipped)
        return counts


def _embeddings_table(good: list[RowResult], dim: int) -> pa.Table:
    def stack(attr):
        return np.stack([getattr(r.outcome, attr) for r in good]) if good else np.zeros((0, dim), np.float32)

    return pa.Table.from_arrays(
        [
            pa.array([r.id for r in good], pa.string()),
            pa.array([r.caption for r in good], pa.string()),
            vectors_to_arrow(stack("image")),
            vectors_to_arrow(stack("text")),
            vectors_to_arrow(stack("fused")),
        ],
        schema=embeddings_schema(dim),
    )


def _rejects_table(bad: list[RowResult], source: str) -> pa.Table:
    rows = [{"id": r.id, "source_file": source, "row_index": r.row_index, "reason": r.outcome.reason, "message": r.outcome.message} for r in bad]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _write(path: str, table: pa.Table) -> None:
    with storage.atomic_open(path) as fh:
        pq.write_table(table, fh)


def build_pipeline(p: beam.Pipeline, plan: InputPlan, cfg: EmbedConfig, dim: int, model_tag: str, resume: bool):
    """Add the embed transforms to `p`; returns the PCollection of (unit index, counts)."""
    units = p | "Units" >> beam.Create(plan.units)
    if cfg.duplicate_ids == "reject":
        duplicates = (
            units
            | "ReadIds" >> beam.ParDo(ReadIds(cfg.skip_bad_files))
            | "GroupIds" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(later_duplicates)
            | "ByUnit" >> beam.GroupByKey()
            | "Lists" >> beam.MapTuple(lambda unit, rows: (unit, list(rows)))
        )
    else:
        duplicates = p | "NoDuplicates" >> beam.Create([])
    handler = EmbeddingModelHandler(
        cfg.model,
        fusion=cfg.fusion,
        batch_size=cfg.batch_size,
        device=cfg.device,
        max_pixels=cfg.max_pixels,
        max_bytes=cfg.max_bytes,
        allow_pickle=cfg.allow_pickle,
        large_model=cfg.large_model,
        preprocess=cfg.preprocess,
        precision=cfg.precision,
    )
    embed = EmbedUnit(handler, cfg.output, [u.path for u in plan.units], dim, cfg.batch_size, model_tag, cfg.skip_bad_files, resume, cfg.decode_ahead)
    return (
        units
        | "Spread" >> beam.Reshuffle()
        | "Embed" >> beam.ParDo(embed, duplicates=beam.pvalue.AsDict(duplicates))
    )


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the leftover CLI args; the default runner needs no download.

    With several local worker processes, each gets an equal share of the CPUs for torch
    (and OpenMP), instead of every process starting one thread per core.
    """
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    direct = options.view_as(DirectOptions)
    if (direct.direct_num_workers or 1) > 1 and direct.direct_running_mode == "multi_processing":
        share = str(max(1, (os.cpu_count() or 1) // direct.direct_num_workers))
        os.environ.setdefault(THREADS_ENV, share)
        os.environ.setdefault("OMP_NUM_THREADS", share)
    return options


def run_key(cfg: EmbedConfig, plan: InputPlan, model_fingerprint: str, fusion_params: dict) -> dict:
    """Everything that decides the output's bytes: equal keys mean committed shards can be reused."""
    key = {
        "format_version": 1,
        "inputs": {path: storage.version(path) for path in plan.files},
        "units": [(u.path, u.row_group, u.num_rows) for u in plan.units],
        "columns": [asdict(u.columns) for u in plan.units[:1]],
        "model_fingerprint": model_fingerprint,
        "fusion": fusion_params,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "max_pixels": cfg.max_pixels,
        "max_bytes": cfg.max_bytes,
        "duplicate_ids": cfg.duplicate_ids,
        "skip_bad_files": cfg.skip_bad_files,
        "preprocess": cfg.preprocess,
        "precision": cfg.precision,
    }
    return json.loads(json.dumps(key))  # the form it takes in .run.json (tuples become lists)


def prepare_output(output: str, key: dict, restart: bool) -> bool:
    """Get `output` ready; return True when an interrupted identical run's shards can be reused.

    The manifest goes first, so no reader takes the directory as complete while we work.
    A directory holding anything but a fusionindex run is refused.
    """
    names = storage.listdir(output)
    foreign = [n for n in names if not n.startswith(".") and n not in (MANIFEST, EMBEDDINGS, REJECTS)]
    if foreign:
        raise InputError(f"--output {output} already holds files that are not a fusionindex run ({', '.join(foreign[:5])}); choose a new or empty directory")
    run_path = storage.join(output, RUN_FILE)
    same = not restart and storage.exists(run_path) and storage.read_json(run_path) == key
    storage.remove(storage.join(output, MANIFEST))
    for sub in ("", EMBEDDINGS, REJECTS):  # one run per output directory at a time
        storage.remove_temporaries(storage.join(output, sub) if sub else output)
    if not same:
        if names:
            log.info("clearing the previous run in %s", output)
        for name in (EMBEDDINGS, REJECTS):
            storage.remove(storage.join(output, name), recursive=True)
        storage.makedirs(storage.join(output, EMBEDDINGS))
        storage.write_json(run_path, key)
    return same


def distribution_sums(result, names: tuple[str, ...]) -> dict[str, int]:
    """Sum of each fusionindex distribution metric (committed where the runner has it); 0 if absent."""
    from apache_beam.metrics.metric import MetricsFilter

    sums = dict.fromkeys(names, 0)
    try:
        for d in result.metrics().query(MetricsFilter().with_namespace("fusionindex"))["distributions"]:
            if d.key.metric.name in sums:
                value = d.committed if d.committed is not None else d.attempted
                sums[d.key.metric.name] += value.sum if value is not None else 0
    except (NotImplementedError, KeyError, AttributeError) as exc:  # runners differ in metric support
        log.debug("no metrics from the runner: %s", exc)
    return sums


def sum_counts(output: str) -> tuple[dict, list[dict]]:
    """Add up the per-shard counts stored in the committed shards' metadata; list bad files."""
    total = Counter()
    reasons = Counter()
    bad_files = []
    for shard in list_shards(output):
        counts = json.loads(shard.metadata[COUNTS_KEY])
        reasons.update(counts.pop("rejects_by_reason"))
        bad = counts.pop("bad_file", None)
        if bad:
            bad_files.append(bad)
        total.update(counts)
    keys = ("read", "embedded", "rejected", "skipped", "empty_caption")
    return {**{k: int(total[k]) for k in keys}, "rejects_by_reason": dict(sorted(reasons.items()))}, bad_files


def run_embed(cfg: EmbedConfig, beam_args: list[str] | None = None) -> dict:
    """Run the whole embed job; return the manifest written to `cfg.output/manifest.json`."""
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    if cfg.duplicate_ids not in DUPLICATE_POLICIES:
        raise ValueError(f"--duplicate-ids must be one of {', '.join(DUPLICATE_POLICIES)}")
    if cfg.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if cfg.decode_ahead not in ("auto", "on", "off"):
        raise ValueError("--decode-ahead must be auto, on or off")
    model_dir = resolve_model_dir(cfg.model, allow_pickle=cfg.allow_pickle)
    info = describe_checkpoint(model_dir)
    if cfg.fusion is None and not info["fusion"]:
        raise ValueError(f"--fusion attention: {cfg.model} has no learned attention fusion; fine-tune it with `fusionindex finetune --fusion attention`, or use --fusion weighted")
    fusion_params = cfg.fusion.params() if cfg.fusion is not None else info["fusion"]
    model_fp = fingerprint(model_dir)
    plan = plan_inputs(cfg.inputs, cfg.columns, skip_bad_files=cfg.skip_bad_files)
    if not plan.units:
        raise InputError(f"the input files hold no rows: {', '.join(plan.files) or '(all unreadable)'}")
    key = run_key(cfg, plan, model_fp, fusion_params)
    resume = prepare_output(cfg.output, key, cfg.restart)
    committed = len(list_shards(cfg.output, require_complete=False)) if resume else 0
    if committed:
        log.info("resuming an interrupted run: %d of %d shards are committed and reused", committed, len(plan.units))
    options = pipeline_options(beam_args or [])
    model_tag = hashlib.sha256(f"{cfg.model}|{cfg.device}|{model_fp}".encode()).hexdigest()[:16]
    t_pipeline = time.monotonic()
    p = beam.Pipeline(options=options)
    build_pipeline(p, plan, cfg, info["dim"], model_tag, resume)
    result = p.run()
    result.wait_until_finish()
    pipeline_s = time.monotonic() - t_pipeline
    work = distribution_sums(result, ("unit_ms", "load_model_ms", "inference_batch_latency_ms"))
    counts, bad_row_groups = sum_counts(cfg.output)
    if counts["read"] != plan.total_rows or counts["read"] != counts["embedded"] + counts["rejected"] + counts["skipped"]:
        raise RuntimeError(f"row accounting failed: planned {plan.total_rows} rows, shards report {counts}; no manifest written")
    manifest = {
        "kind": "fusionindex.embeddings",
        "format_version": 1,
        "inputs": plan.files,
        "columns": asdict(cfg.columns),
        "counts": counts,
        "bad_files": plan.bad_files + bad_row_groups,
        "shards": len(plan.units),
        "reused_shards": committed,
        "dim": info["dim"],
        "model": {"spec": cfg.model, "family": info["family"], "model_type": info["model_type"], "fingerprint": model_fp},
        "fusion": fusion_params,
        "duplicate_ids": cfg.duplicate_ids,
        "batch_size": cfg.batch_size,
        "device": cfg.device or "auto",
        "preprocess": cfg.preprocess,
        "precision": cfg.precision,
        "runner": str(options.view_as(StandardOptions).runner),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "timings": {"total_s": round(time.monotonic() - t0, 3), "pipeline_s": round(pipeline_s, 3),
                    # summed over workers: time in row groups (model load excluded), model loads, forward passes
                    "units_s": work["unit_ms"] / 1000, "model_load_s": work["load_model_ms"] / 1000,
                    "inference_s": work["inference_batch_latency_ms"] / 1000},
    }
    storage.write_json(storage.join(cfg.output, MANIFEST), manifest)
    log.info("embedded %d of %d rows (%d rejected, %d skipped) into %s", counts["embedded"], counts["read"], counts["rejected"], counts["skipped"], cfg.output)
    return manifest
