"""Where a unit's time goes: seconds per named stage, exclusive, for the manifest's stage table.

`with clock("decode"): ...` adds the block's time to "decode". Stages nest and are exclusive:
entering one pauses the stage around it, so the stages of one thread add up to the time spent
inside any of them, and a caller can wrap a whole call without counting its inner stages twice.
A clock belongs to one thread (the decode-ahead thread has its own). `NO_CLOCK` ignores
everything: what callers outside the embed worker (search, fine-tuning, tests) get by default.

Stages (the issue's list): read (Parquet -> rows), classify, probe (image headers), decode
(decode + resize/normalise, CPU or device), tokenize, forward (towers + fusion, results to the
host), assemble (model inputs, per-row results, shard table), write (Parquet shard + rejects),
plus copy (unchanged rows' vectors read from the previous run) and wait (the main thread waiting
for the decode-ahead thread). Host work is everything but decode, forward and wait.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

STAGES = ("read", "classify", "probe", "decode", "tokenize", "forward", "assemble", "write", "copy", "wait")
NOT_HOST = ("decode", "forward", "wait")  # device-bound work, and waiting for it


class StageClock:
    """Exclusive seconds per stage for one thread; see the module docstring."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self, stage)

    def _enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._since
        self._stack.append(stage)
        self._since = now

    def _exit(self) -> None:
        now = time.perf_counter()
        self.seconds[self._stack.pop()] += now - self._since
        self._since = now

    def add(self, stage: str, seconds: float) -> None:
        """Count `seconds`, measured by the caller inside the active stage, as `stage` instead (for
        per-item loops, where a context manager per item would cost more than what it measures)."""
        self.seconds[stage] += seconds
        if self._stack:
            self.seconds[self._stack[-1]] -= seconds

    def timed(self, items: Iterable, stage: str) -> Iterator:
        """`items`, with the time spent producing each one counted as `stage`."""
        it = iter(items)
        while True:
            with self(stage):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item


class _Stage:
    """A clock's context manager (a class, not @contextmanager: half the overhead per use)."""

    __slots__ = ("clock", "stage")

    def __init__(self, clock: StageClock, stage: str):
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.clock._enter(self.stage)

    def __exit__(self, *exc) -> None:
        self.clock._exit()


class _NoClock(StageClock):
    """Measures nothing."""

    _null = nullcontext()

    def __call__(self, stage: str):  # type: ignore[override]
        return self._null

    def add(self, stage: str, seconds: float) -> None:
        pass

    def timed(self, items: Iterable, stage: str) -> Iterator:
        return iter(items)


NO_CLOCK: StageClock = _NoClock()


def host_seconds(stages: dict[str, float]) -> float:
    """The host work in a stage table: everything but decode, forward and waiting for them."""
    return sum(v for k, v in stages.items() if k not in NOT_HOST)
