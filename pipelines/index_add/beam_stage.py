"""The parallel add of `build-index` as a Beam stage, on the same runner options as `embed`.

    (shard index, shard path, first global id) --Reshuffle--> AddShards --> PARTS/part-SSSSS-KKKKK.ivl

Each worker loads the trained template once (`DoFn.setup`), adds each shard it is given with
its global ids and writes only that shard's inverted lists (index_builder.parts): never a copy
of the coarse quantizer. The driver then merges the parts in shard order (in RAM or on disk).
Parts are written atomically under deterministic names, so a retried bundle rewrites the same
file. Not RunInference: there is no model and no batching to do, one shard is one unit of work.
"""

from __future__ import annotations

import logging

import apache_beam as beam
import faiss

from encoders import storage
from index_builder import faiss_io
from index_builder.adding import AddParts, shard_rows
from index_builder.embeddings import Shard, vector_column
from index_builder.parts import add_part, part_name

log = logging.getLogger(__name__)


def part_path(parts_dir: str, number: int, only: tuple[int, int] | None) -> str:
    """Where the stage writes the part of embeddings shard `number` (for index shard only[0])."""
    return storage.join(parts_dir, part_name(number, only[0] if only else 0))


class AddShards(beam.DoFn):
    """(shard index, shard path, first id) -> the part's path, written under `parts_dir`; with
    `only` = (k, K), the part holds just the rows of index shard k."""

    def __init__(self, template_path: str, vector: str, parts_dir: str, only: tuple[int, int] | None):
        self.template_path, self.vector, self.parts_dir, self.only = template_path, vector, parts_dir, only
        self.index: faiss.Index | None = None

    def setup(self) -> None:
        self.index = faiss_io.read_index(self.template_path)

    def process(self, item):
        number, path, first_id = item
        table = storage.read_parquet(path, ["id", vector_column(self.vector)])
        data = add_part(self.index, *shard_rows(table.column(0), table.column(1), first_id, self.only))
        out = part_path(self.parts_dir, number, self.only)
        with storage.atomic_open(out) as fh:
            fh.write(data.tobytes())
        yield out


def beam_adder(beam_args: list[str], workers: int = 1) -> AddParts:
    """An `AddParts` running the AddShards stage with these Beam options; `workers` > 1 with no
    runner options means that many local worker processes. With `--dry_run=True` (DataflowRunner)
    the stage's job is built, not submitted, and the adder raises DryRun (no index is written)."""
    from pipelines.beam_options import dry_run_done, is_dry_run, pipeline_options

    args = list(beam_args)
    if workers > 1 and not any(a.startswith(("--runner", "--direct_num_workers")) for a in args):
        args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    options = pipeline_options(args)  # bad Beam options are refused here, before any training
    dry_run = is_dry_run(options)

    def add(template_path: str, shards: list[Shard], offsets: list[int], vector: str, parts_dir: str, only=None):
        if not dry_run:
            storage.remove(parts_dir, recursive=True)
        items = [(i, s.path, first) for i, (s, first) in enumerate(zip(shards, offsets))]
        p = beam.Pipeline(options=options)
        _ = (
            p
            | "Shards" >> beam.Create(items)
            | "Spread" >> beam.Reshuffle()
            | "AddShards" >> beam.ParDo(AddShards(template_path, vector, parts_dir, only))
        )
        p.run().wait_until_finish()
        if dry_run:  # no part was written: the build cannot go on
            raise dry_run_done("build-index add", options, p.runner, "the driver wrote the trained template only")
        paths = [part_path(parts_dir, i, only) for i in range(len(shards))]
        missing = [p for p in paths if not storage.exists(p)]
        if missing:
            raise RuntimeError(f"the add stage finished without writing {len(missing)} parts, e.g. {missing[0]}")
        log.info("added %d shards in a Beam stage (%s)", len(shards), " ".join(args) or "default runner")
        return paths

    return add
