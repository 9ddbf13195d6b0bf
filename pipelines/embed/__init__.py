"""`fusionindex embed`: Parquet shards -> Beam or Spark -> embedding shards + manifest.

    settings.py  EmbedSettings (what is asked), Runtime (what it resolves to on a machine)
    handler.py   the RunInference ModelHandler: bytes + caption in, vectors out
    rows.py      row classification before the model (skip, null id, duplicates)
    shards.py    committing a unit's shard and rejects; reading back counts and runtimes
    output.py    the run key in DIR/.run.json: what a re-run may reuse
    worker.py    work units (one row group each): read, classify, embed, commit; streamed with decode-ahead; no Beam
    join.py      the id join's per-element steps (read keys, decide), shared by both engines
    beam.py      the Beam graph and options; DoFns are thin wrappers over the worker
    spark.py     the Spark driver (--engine spark): the same join and units as RDDs
    run.py       the driver both engines share: plan, prepare output, run, sum counts, manifest last

One output shard per input row group, rows in input order. Why not the RunInference
transform itself: its output loses the row group an item came from, so writing deterministic
per-row-group shards needs a GroupByKey of every embedding afterwards. That shuffles all
vectors and is a barrier in batch mode: no shard is committed before the last row is embedded,
so a killed run keeps nothing and cannot resume. Per-unit processing commits each shard as
soon as it is done; a re-run of the same command reuses committed shards. The handler keeps
RunInference's interface and is tested inside `RunInference(KeyedModelHandler(...))`.

Nothing is imported here: `import pipelines.embed.settings` must stay cheap (the CLI builds its
parser from it), so callers import `pipelines.embed.run.run_embed` themselves.
"""
