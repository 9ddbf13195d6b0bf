"""Records end to end: an index built from vectors made elsewhere (their embeddings manifest records
only `dim`) is searched with the model given on the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from encoders import storage
from encoders.models import describe_checkpoint
from index_builder.embeddings import embeddings_table, shard_name
from pipelines.cli import main


def test_search_of_vectors_made_elsewhere_needs_model_and_works_with_it(tmp_path, tiny_clip, capsys):
    d = describe_checkpoint(Path(tiny_clip))["dim"]
    x = np.random.default_rng(0).standard_normal((300, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb, idx = str(tmp_path / "emb"), str(tmp_path / "idx")
    ids = [f"item-{i}" for i in range(len(x))]
    os.makedirs(os.path.join(emb, "embeddings"))
    pq.write_table(embeddings_table(ids, ids, x, x, x), os.path.join(emb, "embeddings", shard_name(0, 1)))
    storage.write_json(os.path.join(emb, "manifest.json"), {"dim": d})  # no model, no fusion
    assert main(["-q", "build-index", "--embeddings", emb, "--output", idx]) == 0
    assert json.load(open(os.path.join(idx, "manifest.json")))["source"]["manifest"] == {"dim": d}
    capsys.readouterr()

    assert main(["-q", "search", "--index", idx, "--text", "a red square"]) == 2
    err = capsys.readouterr().err
    assert "records no model" in err and "pass --model" in err and "Traceback" not in err

    assert main(["-q", "search", "--index", idx, "--text", "a red square", "--model", tiny_clip, "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 10 and all(h["id"] in set(ids) for h in hits)
    assert [h["rank"] for h in hits] == list(range(1, 11))
