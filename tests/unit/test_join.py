"""The id join's per-element step both engines run (pipelines/embed/join.py): tuples in, plans out."""

from __future__ import annotations

import itertools

from pipelines.embed.join import DELETED, decide_grouped

TODAY = [(1, 40, b"c", b"t"), (0, 7, b"c", b"t"), (2, 3, b"x", b"t")]  # (unit, row, content, caption)
PREVIOUS = [(4, 9, b"c", b"t"), (3, 2, b"c", b"t")]  # (shard, row, content, caption): two copies


def test_verdicts_do_not_depend_on_the_shuffle_order():
    """Beam's CoGroupByKey and Spark's groupByKey hand over an id's rows in any order."""
    seen = set()
    for today in itertools.permutations(TODAY):
        for previous in itertools.permutations(PREVIOUS):
            out = decide_grouped(today, previous, reject_duplicates=True, comparable=True)
            seen.add(tuple(out))
    plans = ((1, (40, "duplicate", (0, 7), False)), (2, (3, "duplicate", (0, 7), False)))
    assert seen == {(*plans, (0, (7, "unchanged", (3, 2), False)))}


def test_deleted_and_changed():
    assert list(decide_grouped([], PREVIOUS, reject_duplicates=True, comparable=True)) == [(DELETED, 1)]
    assert list(decide_grouped(TODAY[:1], PREVIOUS, reject_duplicates=True, comparable=False)) == [
        (1, (40, "changed", None, False))
    ]
    assert list(decide_grouped(TODAY[:1], [], reject_duplicates=True, comparable=True)) == []


def test_a_carried_value_change_alone_is_unchanged_with_metadata_changed():
    """The 5th element: the hash of the carried columns (embed --carry-columns)."""
    today = [(0, 7, b"c", b"t", b"new price")]
    previous = [(3, 2, b"c", b"t", b"old price")]
    out = list(decide_grouped(today, previous, reject_duplicates=True, comparable=True))
    assert out == [(0, (7, "unchanged", (3, 2), True))]
