"""Spark's Python daemon for `embed --engine spark` executors (`spark.python.daemon.module`).

PySpark forks every Python worker from one daemon process per executor. This daemon imports
torch, transformers, the embedder and the unit worker first (no Beam) (15-25 s on a busy 2-core
machine), so each forked worker starts with them already imported; the model itself is still
loaded once per worker, on its first unit (pipelines/embed/spark.py). Nothing here runs torch
code before the fork: the intra-op thread pools are created lazily, in the workers.

It is this process's entry point, so it sets the collector as the console does
(pipelines/startup.py): paused while it imports, then everything imported frozen before the
forks, which also keeps the workers' collections off the pages they share with the daemon.
"""

if __name__ == "__main__":
    from pipelines import startup

    startup.pause()
    import pyspark.daemon

    import pipelines.embed.spark  # noqa: F401  (the join's and the embed task's functions)
    import pipelines.embed.worker  # noqa: F401  (torch, transformers; no Beam)

    startup.resume()
    pyspark.daemon.manager()
