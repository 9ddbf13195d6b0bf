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


def test_parallel_plan_equals_the_serial_plan(tmp_path):
    """The thread pool reads footers out of order; the plan, the bad files and the error raised
    are still the serial loop's: same units in the same order, same skipped files."""
    good = {"key": [str(i) for i in range(10)], "caption": ["c"] * 10, "jpg": [b"x"] * 10}
    for i in range(40):
        if i % 7 == 3:
            (tmp_path / f"{i:03d}.parquet").write_bytes(b"PAR1 this file lost its footer")
        elif i % 11 == 5:
            write(tmp_path / f"{i:03d}.parquet", {k: v[:0] for k, v in good.items()})  # no rows
        else:
            write(tmp_path / f"{i:03d}.parquet", good, row_group_size=1 + i % 4)
    pattern = [str(tmp_path / "*.parquet")]
    serial = plan_inputs(pattern, Columns(), skip_bad_files=True, threads=1)
    assert len(serial.bad_files) == 6 and len(serial.files) == 34 and serial.total_rows == 31 * 10
    for threads in (2, 8, 32, 64):
        assert plan_inputs(pattern, Columns(), skip_bad_files=True, threads=threads) == serial
    with pytest.raises(InputError) as serial_error:
        plan_inputs(pattern, Columns(), threads=1)
    with pytest.raises(InputError) as parallel_error:
        plan_inputs(pattern, Columns(), threads=8)
    assert str(parallel_error.value) == str(serial_error.value) and "003.parquet" in str(serial_error.value)
    # wrong columns always raise, with or without --skip-bad-files: the first such file in input order
    write(tmp_path / "020.parquet", {"key": ["1"], "text": ["x"], "jpg": [b"x"]})
    write(tmp_path / "030.parquet", {"key": ["1"], "label": ["x"], "jpg": [b"x"]})
    for threads in (1, 8):
        with pytest.raises(InputError, match="020.parquet: missing column 'caption'"):
            plan_inputs(pattern, Columns(), skip_bad_files=True, threads=threads)
