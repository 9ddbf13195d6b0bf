"""`embed --carry-columns`: source columns copied, typed as in the source, into the shards, the rejects,
the index's ids.parquet and `search --json` (real Beam DirectRunner, a tiny random CLIP, real JPEGs)."""

from __future__ import annotations

import decimal
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.bench import photo_like
from pipelines.cli import main
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from pipelines.embed.spark_context import spark_missing
from pipelines.inputs import Columns

pytestmark = [pytest.mark.beam]

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("jpg", pa.binary()),
        ("url", pa.string()),
        ("price", pa.decimal128(9, 2)),
        ("tags", pa.list_(pa.string())),
    ]
)


def jpeg(rng) -> bytes:
    buf = io.BytesIO()
    photo_like(rng, 64).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def rows(n: int, seed: int = 0, bad: int | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        data = b"not an image" if i == bad else jpeg(rng)
        price = decimal.Decimal(f"{i}.{i % 100:02d}")
        out.append({"key": f"k{i}", "caption": f"item {i}", "jpg": data, "url": f"https://x.invalid/{i}",
                    "price": price, "tags": [f"t{i % 3}"]})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def carried(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("carry")
    pq.write_table(pa.Table.from_pylist(rows(12, bad=4), schema=SCHEMA), root / "a.parquet", row_group_size=6)
    emb, idx = str(root / "emb"), str(root / "idx")
    flags = ["--input", str(root / "a.parquet"), "--output", emb, "--model", tiny_clip, "--batch-size", "4"]
    assert main(["embed", *flags, "--carry-columns", "url,price", "tags"]) == 0
    assert main(["build-index", "--embeddings", emb, "--output", idx, "--vector", "image"]) == 0
    return root, emb, idx


def test_carried_columns_reach_shards_rejects_and_ids_typed_as_in_the_source(carried):
    root, emb, idx = carried
    shards = pq.read_table(f"{emb}/embeddings")
    for name in ("url", "price", "tags"):
        assert shards.schema.field(name).type == SCHEMA.field(name).type
    source = {r["key"]: r for r in rows(12, bad=4)}
    got = shards.select(["id", "url", "price", "tags"]).to_pylist()
    assert [r["id"] for r in got] == [f"k{i}" for i in range(12) if i != 4]
    assert all(r["url"] == source[r["id"]]["url"] and r["price"] == source[r["id"]]["price"] for r in got)
    rejects = pq.read_table(f"{emb}/rejects").to_pylist()
    assert [(r["id"], r["url"], r["price"]) for r in rejects] == [
        ("k4", "https://x.invalid/4", decimal.Decimal("4.04"))
    ]
    ids = pq.read_table(f"{idx}/ids.parquet")
    assert ids.column_names == ["id", "caption", "url", "price", "tags"]
    assert not ids.schema.metadata  # the index's table, not a copy of the embed run's shard metadata
    assert ids.select(["id", "url", "price", "tags"]).to_pylist() == got  # row i = faiss id i


def test_search_json_prints_the_carried_values(carried, capsys):
    _, _, idx = carried
    capsys.readouterr()
    assert main(["search", "--index", idx, "--text", "item 3", "--k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3
    for h in hits:
        i = int(h["id"][1:])
        assert (
            h["url"] == f"https://x.invalid/{i}" and h["price"] == f"{i}.{i % 100:02d}" and h["tags"] == [f"t{i % 3}"]
        )


def test_bad_carry_columns_are_usage_errors(tmp_path, tiny_clip, capsys):
    pq.write_table(pa.Table.from_pylist(rows(3), schema=SCHEMA), tmp_path / "a.parquet")
    other = SCHEMA.set(SCHEMA.get_field_index("price"), pa.field("price", pa.float64()))
    table = pa.Table.from_pylist([{**r, "price": float(r["price"])} for r in rows(3, seed=1)], schema=other)
    pq.write_table(table, tmp_path / "b.parquet")
    base = ["embed", "--output", str(tmp_path / "o"), "--model", tiny_clip]
    cases = [
        (["--input", str(tmp_path / "a.parquet"), "--carry-columns", "url,sku"], "no column 'sku' (--carry-columns)"),
        (["--input", str(tmp_path / "a.parquet"), "--carry-columns", "content_hash"], "have a column of that name"),
        (["--input", str(tmp_path / "*.parquet"), "--carry-columns", "price"], "price: double but"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        assert main([*base, *flags]) == 2, flags
        assert message in capsys.readouterr().err


def test_a_carried_value_change_alone_keeps_the_vectors_and_is_counted(carried, tiny_clip):
    root, emb, _ = carried
    today = rows(12, bad=4)
    for i in (0, 1, 2):
        today[i]["price"] += decimal.Decimal("1.00")  # a new price: the same image and caption
    today[5]["caption"] = "item 5, now on sale"  # a new caption: embedded again
    pq.write_table(pa.Table.from_pylist(today, schema=SCHEMA), root / "b.parquet", row_group_size=6)
    settings = EmbedSettings(
        inputs=(str(root / "b.parquet"),),
        output=str(root / "emb2"),
        model=tiny_clip,
        batch_size=4,
        columns=Columns(carry=("url", "price", "tags")),
    )
    m = run_embed(settings, previous=emb)
    c = m.counts
    assert (c.unchanged, c.changed, c.metadata_changed) == (10, 1, 3)
    one, two = pq.read_table(f"{emb}/embeddings"), pq.read_table(f"{root}/emb2/embeddings")
    assert two.column("image_embedding").equals(one.column("image_embedding"))  # copied, not re-embedded
    assert two.column("copied").to_pylist() == [i != 5 for i in range(12) if i != 4]
    prices = dict(zip(two.column("id").to_pylist(), two.column("price").to_pylist()))
    assert prices["k0"] == decimal.Decimal("1.00") and prices["k3"] == decimal.Decimal("3.03")  # today's values


@pytest.mark.spark
@pytest.mark.skipif(spark_missing() is not None, reason=spark_missing() or "")
def test_spark_carries_the_same_columns_as_beam_and_counts_metadata_changes(carried, tiny_clip, tmp_path):
    from tests.test_spark import assert_same_output

    root, emb, _ = carried
    today = rows(12, bad=4)
    today[0]["price"] += decimal.Decimal("1.00")
    pq.write_table(pa.Table.from_pylist(today, schema=SCHEMA), tmp_path / "c.parquet", row_group_size=6)
    out = {}
    for engine in ("beam", "spark"):
        extra = {"engine": "spark", "spark_master": "local[2]"} if engine == "spark" else {}
        s = EmbedSettings(inputs=(str(tmp_path / "c.parquet"),), output=str(tmp_path / engine), model=tiny_clip,
                          batch_size=4, columns=Columns(carry=("url", "price", "tags")), **extra)  # fmt: skip
        out[engine] = run_embed(s, previous=emb).counts
    assert_same_output(str(tmp_path / "beam"), str(tmp_path / "spark"))  # carried columns and rejects included
    assert out["spark"] == out["beam"] and out["spark"].metadata_changed == 1


def test_a_nightly_reindex_publishes_a_price_change_without_embedding_again(tmp_path, tiny_clip, capsys):
    """Two nights on one ROOT through the CLI: night two changes only `price` on three rows (same image
    bytes, same caption). The night publishes; those rows keep night one's vectors byte for byte (counted
    `unchanged` and `metadata_changed`), and the new index's ids.parquet and `search --json` show today's prices."""
    from index_builder.embeddings import arrow_to_vectors, list_shards
    from pipelines.reindex.root import run_ids, run_path

    feed, root = tmp_path / "feed", str(tmp_path / "root")
    feed.mkdir()
    night = ["-q", "reindex", "--input", str(feed), "--root", root, "--model", tiny_clip, "--batch-size", "4",
             "--carry-columns", "url,price", "--min-recall", "0", "--report-queries", "2"]  # fmt: skip
    today = rows(10, seed=3)
    pq.write_table(pa.Table.from_pylist(today, schema=SCHEMA), feed / "items.parquet", row_group_size=5)
    assert main(night) == 0
    for i in (1, 4, 7):
        today[i]["price"] += decimal.Decimal("10.00")
    pq.write_table(pa.Table.from_pylist(today, schema=SCHEMA), feed / "items.parquet", row_group_size=5)
    assert main(night) == 0
    one, two = (run_path(root, r) for r in run_ids(root))
    assert json.load(open(f"{root}/LATEST"))["run"].endswith(os.path.basename(two))  # night two published
    run = json.load(open(f"{two}/run.json"))
    assert run["status"] == "published"
    c = run["counts"]
    assert (c["unchanged"], c["metadata_changed"], c["changed"], c["new"], c["deleted"]) == (10, 3, 0, 0, 0)

    def shard(run_dir: str) -> pa.Table:
        return pq.read_table(os.path.dirname(list_shards(run_dir)[0].path)).sort_by("id")

    a, b = shard(one), shard(two)
    assert b.column("copied").to_pylist() == [True] * 10  # every row's vectors copied from night one
    for col in ("image_embedding", "text_embedding", "fused_embedding"):
        va, vb = arrow_to_vectors(a.column(col))[0], arrow_to_vectors(b.column(col))[0]
        assert va.tobytes() == vb.tobytes(), col  # copied, not re-embedded
    want = {r["key"]: r["price"] for r in today}
    ids = pq.read_table(f"{two}/index/ids.parquet")
    assert ids.schema.field("price").type == SCHEMA.field("price").type
    assert dict(zip(ids.column("id").to_pylist(), ids.column("price").to_pylist())) == want
    assert want["k4"] == decimal.Decimal("14.04")
    capsys.readouterr()
    assert main(["search", "--index", root, "--text", "item 4", "--k", "10", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 10 and {h["id"]: h["price"] for h in hits} == {k: str(v) for k, v in want.items()}
