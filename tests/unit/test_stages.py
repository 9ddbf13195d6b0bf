"""Stage clocks (exclusive, nested, per-item additions) and the manifest's stage table: pure logic,
with a fake time source."""

from __future__ import annotations

import pytest

from encoders import stages as stages_mod
from encoders.stages import StageClock, host_seconds
from pipelines.embed.timings import manifest_timings, stage_metrics


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def now(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(stages_mod.time, "perf_counter", fake)
    return fake


def test_nested_stages_are_exclusive_and_add_up(now):
    clock = StageClock()
    with clock("assemble"):
        now.now += 1
        with clock("forward"):
            now.now += 5
            with clock("tokenize"):
                now.now += 2
            now.now += 1
        now.now += 0.5
    now.now += 10  # outside every stage: not counted
    with clock("write"):
        now.now += 3
    assert clock.seconds == {"assemble": 1.5, "forward": 6, "tokenize": 2, "write": 3}
    assert sum(clock.seconds.values()) == 12.5


def test_add_moves_time_out_of_the_active_stage(now):
    clock = StageClock()
    with clock("decode"):
        now.now += 4
        clock.add("probe", 1.5)  # measured by the caller inside decode
    assert clock.seconds == {"decode": 2.5, "probe": 1.5}


def test_a_stage_left_by_an_exception_is_still_counted(now):
    clock = StageClock()
    with pytest.raises(ValueError), clock("forward"):
        now.now += 2
        raise ValueError
    with clock("write"):
        now.now += 1
    assert clock.seconds == {"forward": 2, "write": 1}


def test_timed_counts_producing_each_item(now):
    def rows():
        for i in range(3):
            now.now += 1  # reading a batch
            yield i

    clock = StageClock()
    got = []
    for row in clock.timed(rows(), "read"):
        with clock("classify"):
            now.now += 0.25
        got.append(row)
    assert got == [0, 1, 2]
    assert clock.seconds == {"read": 3, "classify": 0.75}


def test_manifest_table_from_summed_counters():
    unit = {"read": 0.5, "decode": 2.0, "forward": 4.0, "tokenize": 0.25, "write": 0.25}
    metrics = stage_metrics(unit, {})
    assert metrics["stage_us_decode"] == 2_000_000
    other = stage_metrics({"read": 0.5, "wait": 1.0}, {"probe": 0.5, "decode": 1.0})
    summed = {k: metrics.get(k, 0) + other.get(k, 0) for k in {*metrics, *other}}
    t = manifest_timings({**summed, "rows_read": 9}, units_s=9.5, rows=1000)
    assert list(t["stages_s"]) == ["read", "decode", "tokenize", "forward", "write", "wait"]  # STAGES order
    assert t["stages_s"]["read"] == 1.0
    assert t["other_s"] == pytest.approx(9.5 - 8.5)
    assert t["decode_ahead_s"] == {"probe": 0.5, "decode": 1.0}
    # host work: read + tokenize + write (unit thread) + probe (decode-ahead thread), per row
    assert t["host_us_per_row"] == pytest.approx((1.0 + 0.25 + 0.25 + 0.5) / 1000 * 1e6)
    assert t["unit_thread_host_us_per_row"] == pytest.approx((1.0 + 0.25 + 0.25) / 1000 * 1e6)
    assert host_seconds({"decode": 1, "forward": 1, "wait": 1}) == 0
    assert manifest_timings({"rows_read": 5}, units_s=1.0, rows=5) == {}  # no stages reported: no table
