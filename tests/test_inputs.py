"""Input planning: globs, schema checks with clear errors, work units, fsspec URLs."""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.errors import InputError
from pipelines.inputs import Columns, plan_inputs, read_unit


def write(path, columns: dict, **kw):
    pq.write_table(pa.table(columns), path, **kw)


def test_plan_auto_detects_image_column_and_cuts_row_groups(sample_dir):
    plan = plan_inputs([f"{sample_dir}/*.parquet"], Columns())
    assert len(plan.files) == 2 and plan.total_rows == 60
    assert [u.columns.image for u in plan.units if u.row_group == 0] == ["jpg", "png"]
    assert [u.num_rows for u in plan.units] == [12, 12, 6] * 2
    assert [u.index for u in plan.units] == list(range(6))
    rows = read_unit(plan.units[1])
    assert [r.row_index for r in rows] == list(range(12, 24))
    assert all(isinstance(r.image, bytes) for r in rows)


def test_missing_column_error_lists_existing_columns(tmp_path):
    write(tmp_path / "a.parquet", {"key": ["1"], "text": ["x"], "jpg": [b"x"]})
    with pytest.raises(InputError) as err:
        plan_inputs([str(tmp_path / "a.parquet")], Columns())
    msg = str(err.value)
    assert "a.parquet" in msg and "'caption'" in msg and "key, text, jpg" in msg and "--caption-column" in msg
    plan = plan_inputs([str(tmp_path / "a.parquet")], Columns(caption="text"))
    assert plan.units[0].columns.caption == "text" and plan.units[0].columns.status is None


def test_wrong_types_and_ambiguous_images_are_errors(tmp_path):
    write(tmp_path / "b.parquet", {"key": ["1"], "caption": ["x"], "jpg": ["not bytes"]})
    with pytest.raises(InputError, match="'jpg' has type string, expected binary"):
        plan_inputs([str(tmp_path / "b.parquet")], Columns())
    write(tmp_path / "c.parquet", {"key": ["1"], "caption": ["x"], "jpg": [b"1"], "png": [b"2"]})
    with pytest.raises(InputError, match="several image columns"):
        plan_inputs([str(tmp_path / "c.parquet")], Columns())
    assert plan_inputs([str(tmp_path / "c.parquet")], Columns(image="png")).units[0].columns.image == "png"


def test_glob_matching_nothing_and_corrupt_file(tmp_path):
    with pytest.raises(InputError, match="no file matches"):
        plan_inputs([str(tmp_path / "*.parquet")], Columns())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this file lost its footer")
    with pytest.raises(InputError, match="broken.parquet: not a readable Parquet file"):
        plan_inputs([str(tmp_path / "broken.parquet")], Columns())


def test_fsspec_url_inputs_and_integer_ids():
    fs = fsspec.filesystem("memory")
    with fs.open("/in/x.parquet", "wb") as fh:
        pq.write_table(pa.table({"key": [7, 8], "caption": ["a", None], "webp": [b"1", None]}), fh)
    plan = plan_inputs(["memory://in/*.parquet"], Columns())
    assert len(plan.files) == 1 and plan.files[0].startswith("memory://") and plan.files[0].endswith("/in/x.parquet")
    rows = read_unit(plan.units[0])
    assert [r.id for r in rows] == ["7", "8"] and rows[1].caption is None and rows[0].status == "success"
