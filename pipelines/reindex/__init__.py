"""`fusionindex reindex`: the nightly job. One command embeds today's catalogue against the last
published run (unchanged rows copy their vectors), builds the index (reusing the trained template
unless the vectors drifted), checks gates, writes a report and only then publishes atomically.

    settings.py  ReindexSettings (embed + build settings and the gates' limits); TOML config
    root.py      ROOT/runs/<run id>/ and ROOT/LATEST: naming, reading, publishing, pruning
    lock.py      one reindex per ROOT at a time (exclusive create, heartbeat, stale takeover)
    gates.py     the checks that must pass before LATEST moves (pure)
    canary.py    top-k overlap of canary queries between the previous and the new index
    report.py    report.json and report.html of a run
    run.py       the driver
"""
