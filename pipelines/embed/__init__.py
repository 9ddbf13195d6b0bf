"""`fusionindex embed`: Parquet shards -> Beam or Spark -> embedding shards + manifest.

    run.py       the driver, whatever the engine: resolve the model and runtime once, plan, prepare
                 the output (run key, resume), run the engine, sum counts, manifest last
    engine.py    the Engine interface (EngineWork in, EngineRun with typed EngineMetrics out)
    beam.py      BeamEngine: the Beam graph; DoFns are thin wrappers over the worker
    spark.py     SparkEngine (--engine spark): the same join and units as RDDs; executors import no Beam
    spark_context.py  Spark on the driver: what is missing, executor paths, the SparkContext, threads
    worker.py    work units (one row group each): read, classify, embed, commit; a plain loop; no Beam
    stream.py    the same units with read/decode-ahead: read, decode and write threads, typed messages
                 through bounded queues; UnitFeeder for an engine that hands over one unit a call
    embedder.py  bytes + caption in, vectors out (no Beam)
    handler.py   the embedder as Beam's RunInference ModelHandler
    process.py   the worker set-up hook: process-wide settings (torch threads, PIL's limit)
    settings.py  EmbedSettings (what is asked), Runtime (what it resolves to on a machine)
    rows.py      row classification before the model (skip, null id, duplicates)
    shards.py    committing a unit's shard and rejects; reading back counts and runtimes
    output.py    the run key in DIR/.run.json: what a re-run may reuse
    join.py      the id join's per-element steps (read keys, decide), shared by both engines
    outcomes.py, timings.py, progress.py, spark_daemon.py: per-item results, stage metrics, the
                 driver's progress line, Spark's Python daemon

Beam's options (runner checks, --dry_run), shared with the index add stage, are in
pipelines/beam_options.py.

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
