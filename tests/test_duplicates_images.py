"""Near-duplicate groups of real images: embed (Beam DirectRunner, a tiny random CLIP) -> build-index
-> duplicates. Byte-identical copies group by their bytes' hash; re-encoded copies (JPEG q95 -> q70)
by their vectors. A random CLIP maps every picture close to every other (distinct images here reach
~0.997), so the threshold sits between that and the re-encoded copies (~0.9999): the mechanics are
under test, not a model's sense of sameness."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.bench import photo_like
from encoders import storage
from index_builder.build import build_index
from index_builder.index_duplicates import DUPLICATES_FILE, write_duplicates
from index_builder.settings import BuildSettings
from pipelines.cli import main
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from tests.unit.test_duplicates import as_groups

pytestmark = [pytest.mark.beam]

THRESHOLD = 0.9995


def jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """24 distinct photos; `same-3` / `same-4`: byte-identical copies of 3 and 4 (other captions);
    `re-5` / `re-6`: 5 and 6 decoded and re-encoded at quality 70."""
    root = tmp_path_factory.mktemp("dupimg")
    rng = np.random.default_rng(0)
    data = [jpeg(photo_like(rng, 96), 95) for _ in range(24)]
    rows = [{"key": f"p{i:02d}", "caption": f"photo {i}", "jpg": b} for i, b in enumerate(data)]
    rows += [{"key": f"same-{i}", "caption": f"another caption {i}", "jpg": data[i]} for i in (3, 4)]
    reencoded = [jpeg(Image.open(io.BytesIO(data[i])).convert("RGB"), 70) for i in (5, 6)]
    rows += [{"key": f"re-{i}", "caption": f"photo {i}", "jpg": b} for i, b in zip((5, 6), reencoded)]
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("jpg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "items.parquet")
    return root


@pytest.fixture(scope="module")
def index(catalogue, tiny_clip):
    out = str(catalogue / "emb")
    run_embed(EmbedSettings(inputs=(str(catalogue / "items.parquet"),), output=out, model=tiny_clip, batch_size=8))
    build_index(BuildSettings(out, str(catalogue / "idx"), vector="image"))
    return str(catalogue / "idx")


def test_byte_copies_and_reencoded_copies_group_and_distinct_photos_do_not(index, capsys):
    assert main(["duplicates", "--index", index, "--threshold", str(THRESHOLD)]) == 0
    assert "4 groups, 8 items in them (image vectors at cosine >= 0.9995; 26 searched" in capsys.readouterr().out
    table = pq.read_table(f"{index}/{DUPLICATES_FILE}")
    assert as_groups(table) == {
        "p03": {"p03", "same-3"},
        "p04": {"p04", "same-4"},
        "p05": {"p05", "re-5"},
        "p06": {"p06", "re-6"},
    }
    sim = dict(zip(table.column("id").to_pylist(), table.column("similarity").to_pylist()))
    assert sim["same-3"] == pytest.approx(1.0, abs=1e-6) and THRESHOLD <= sim["re-5"] < 1.0
    # 26 searched: the two byte copies share their originals' search


def hits(capsys, *flags) -> list[str]:
    capsys.readouterr()
    assert main(["search", *flags, "--json"]) == 0
    return [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]


def test_search_collapses_each_group_to_its_best_hit(index, catalogue, capsys):
    write_duplicates(index, THRESHOLD)
    query = str(catalogue / "query.jpg")
    (catalogue / "query.jpg").write_bytes(pq.read_table(catalogue / "items.parquet").column("jpg")[5].as_py())
    plain = hits(capsys, "--index", index, "--image", query, "--k", "10")
    assert set(plain[:2]) == {"p05", "re-5"}  # the photo and its re-encoded copy, both
    collapsed = hits(capsys, "--index", index, "--image", query, "--k", "5", "--collapse-duplicates")
    assert collapsed[0] in {"p05", "re-5"} and "re-5" not in collapsed[1:] and "p05" not in collapsed[1:]
    assert len(collapsed) == 5 and collapsed[1:] == [h for h in plain if h not in {"p05", "re-5"}][:4]


def test_duplicates_refuse_bad_requests(index, tmp_path, capsys):
    assert main(["duplicates", "--index", index, "--threshold", "1.5"]) == 2
    assert "--threshold must be a cosine in (0, 1]" in capsys.readouterr().err
    assert main(["duplicates", "--index", str(tmp_path)]) == 2
    assert "run `fusionindex build-index`" in capsys.readouterr().err
    storage.write_json(str(tmp_path / "LATEST"), {"run": "runs/x"})
    assert main(["duplicates", "--index", str(tmp_path)]) == 2
    assert "a published run is never changed" in capsys.readouterr().err
    no_groups = str(tmp_path / "idx")
    shutil.copytree(index, no_groups, ignore=shutil.ignore_patterns(DUPLICATES_FILE))
    assert main(["search", "--index", no_groups, "--text", "x", "--collapse-duplicates"]) == 2
    assert "run `fusionindex duplicates --index" in capsys.readouterr().err


def test_fused_copies_need_the_same_caption_too(index):
    write_duplicates(index, THRESHOLD, vector="fused")
    groups = as_groups(pq.read_table(f"{index}/{DUPLICATES_FILE}"))
    assert "p03" not in groups and groups["p05"] == {"p05", "re-5"}  # same-3 has another caption


def test_a_nightly_reindex_groups_before_publish_incrementally_and_can_gate(catalogue, tiny_clip, tmp_path, capsys):
    root, feed = str(tmp_path / "root"), tmp_path / "feed"
    feed.mkdir()
    items = pq.read_table(catalogue / "items.parquet")
    pq.write_table(items, feed / "items.parquet")
    night = ["reindex", "--input", str(feed), "--root", root, "--model", tiny_clip, "--vector", "image"]
    night += ["--duplicates", str(THRESHOLD), "--batch-size", "8", "--min-recall", "0"]
    assert main(night) == 0
    first = storage.read_json(f"{root}/{storage.read_json(f'{root}/LATEST')['run']}/run.json")
    assert first["duplicates"]["groups"] == 4 and not first["duplicates"]["incremental"]
    assert "duplicates" in first["stages"]
    copy = {"key": "same-7", "caption": "a copy", "jpg": items.column("jpg")[7].as_py()}
    pq.write_table(pa.concat_tables([items, pa.Table.from_pylist([copy], schema=items.schema)]), feed / "items.parquet")
    assert main(night) == 0  # night two: one new row, a byte copy of p07
    latest = storage.read_json(f"{root}/LATEST")["run"]
    second = storage.read_json(f"{root}/{latest}/run.json")
    d = second["duplicates"]
    assert (d["groups"], d["rows_in_groups"], d["new_rows_in_groups"], d["incremental"]) == (5, 10, 1, True)
    assert d["searched"] == 1 and second["counts"]["metadata_changed"] == 0
    groups = as_groups(pq.read_table(f"{root}/{latest}/index/{DUPLICATES_FILE}"))
    assert groups["p07"] == {"p07", "same-7"}
    shown = storage.read_json(f"{root}/{latest}/report.json")["duplicate_groups"]
    assert [g["group_id"] for g in shown["newest"]] == ["p07"] and shown["newest"][0]["new"] == 1
    assert len(shown["largest"]) == 3 and all(g["size"] == 2 for g in shown["largest"])
    page = (tmp_path / "root" / latest / "report.html").read_text()
    assert "<h2>Near-duplicate groups</h2>" in page and 'alt="same-7"' in page  # its thumbnail
    capsys.readouterr()
    assert main([*night, "--max-duplicate-rate", "0.1"]) == 3  # 10 of 29 items in groups
    assert "failed gates: duplicate_rate" in capsys.readouterr().out
    assert storage.read_json(f"{root}/LATEST")["run"] == latest  # not published
