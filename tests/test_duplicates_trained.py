"""Re-encoded copies group under a model trained in the test, distinct pictures do not.

A random tiny CLIP puts every picture near every other (tests/test_duplicates_images.py needs a threshold
of 0.9995 there); here tiny CLIP is first fine-tuned (`trained_clip` in tests/conftest.py: 20 epochs,
~400 rows of drawn shapes, CPU seconds) so that the 40 classes (5 shapes x 8 colours) spread apart, and the
issue's threshold 0.97 is used:
JPEG q95 -> q60 and PNG -> JPEG q80 copies group, no two of the 40 classes do. Measured when written:
copies >= 0.9997, distinct classes at most 0.9445 (p99 0.866, mean 0.163); under the untrained model the
distinct classes reach 1.0 (mean 0.991) and all 49 rows form one group. The whole file: ~35 s on 2 busy cores."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from index_builder.build import build_index
from index_builder.embeddings import arrow_to_vectors, list_shards
from index_builder.index_duplicates import DUPLICATES_FILE
from index_builder.settings import BuildSettings
from pipelines.cli import main
from pipelines.datasets.sample import BACKGROUNDS, COLOURS, SHAPES, draw
from pipelines.embed.run import run_embed
from pipelines.embed.settings import EmbedSettings
from tests.unit.test_duplicates import as_groups

pytestmark = [pytest.mark.beam]

THRESHOLD = 0.97
CLASSES = [(s, c) for s in SHAPES for c in COLOURS]  # 40
REENCODED = CLASSES[0:40:9]  # JPEG q95 -> decoded -> JPEG q60: 5 classes
FROM_PNG = CLASSES[4:40:9]  # PNG -> decoded -> JPEG q80: 4 classes


def encode(img: Image.Image, fmt: str, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def reencode(data: bytes, quality: int) -> bytes:
    return encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> str:
    """One picture per class (`shape-colour`, JPEG q95, PNG for FROM_PNG) and its re-encoded copies (`re-...`)."""
    rows = []
    for shape, colour in CLASSES:
        img = draw(shape, COLOURS[colour], BACKGROUNDS["white"], 96)
        key = f"{shape}-{colour}"
        data = encode(img, "PNG") if (shape, colour) in FROM_PNG else encode(img, "JPEG", 95)
        rows.append({"key": key, "caption": f"a {colour} {shape}", "jpg": data})
        if (shape, colour) in REENCODED + FROM_PNG:
            copy = reencode(data, 60 if (shape, colour) in REENCODED else 80)
            assert copy != data
            rows.append({"key": f"re-{key}", "caption": f"a {colour} {shape}", "jpg": copy})
    schema = pa.schema([("key", pa.string()), ("caption", pa.string()), ("jpg", pa.binary())])
    path = tmp_path_factory.mktemp("dupcat") / "items.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def groups_under(model: str, items: str, out: str) -> tuple[dict[str, set[str]], dict[str, np.ndarray]]:
    """embed -> build-index (image vectors) -> `fusionindex duplicates --threshold 0.97`: the groups and the vectors."""
    run_embed(EmbedSettings(inputs=(items,), output=f"{out}/emb", model=model, batch_size=16))
    build_index(BuildSettings(f"{out}/emb", f"{out}/idx", vector="image"))
    assert main(["-q", "duplicates", "--index", f"{out}/idx", "--threshold", str(THRESHOLD)]) == 0
    table = pq.read_table(os.path.dirname(list_shards(f"{out}/emb")[0].path))
    vectors = arrow_to_vectors(table.column("image_embedding"))[0]
    by_id = {i: v / np.linalg.norm(v) for i, v in zip(table.column("id").to_pylist(), vectors)}
    return as_groups(pq.read_table(f"{out}/idx/{DUPLICATES_FILE}")), by_id


def test_reencoded_copies_group_and_distinct_classes_do_not_under_a_trained_model(trained_clip, catalogue, tmp_path):
    groups, v = groups_under(trained_clip, catalogue, str(tmp_path))
    planted = {f"{s}-{c}": {f"{s}-{c}", f"re-{s}-{c}"} for s, c in REENCODED + FROM_PNG}
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, planted.values()))
    copies = [float(v[k] @ v[f"re-{k}"]) for k in planted]
    keys = [f"{s}-{c}" for s, c in CLASSES]
    distinct = np.array([[v[a] @ v[b] for b in keys] for a in keys])[~np.eye(len(keys), dtype=bool)]
    print(f"trained: copies min {min(copies):.4f}; distinct classes max {distinct.max():.4f}, "
          f"p99 {np.quantile(distinct, 0.99):.4f}, mean {distinct.mean():.4f}")  # fmt: skip
    assert min(copies) >= THRESHOLD > distinct.max()


def test_the_untrained_model_cannot_tell_the_classes_apart_at_that_threshold(tiny_clip, catalogue, tmp_path):
    """The control: the same catalogue and threshold under the random model the trained one started from."""
    groups, v = groups_under(tiny_clip, catalogue, str(tmp_path))
    keys = [f"{s}-{c}" for s, c in CLASSES]
    distinct = np.array([[v[a] @ v[b] for b in keys] for a in keys])[~np.eye(len(keys), dtype=bool)]
    print(f"untrained: distinct classes max {distinct.max():.4f}, mean {distinct.mean():.4f}")
    assert distinct.mean() > THRESHOLD and [len(g) for g in groups.values()] == [49]  # one blob of every row
