"""Per-stage timings: a unit's stage clocks as engine metrics, and the metrics as the manifest's table.

Every engine carries the stages as integer counters (microseconds) named `stage_us_<stage>`
(the unit's own thread) and `ahead_us_<stage>` (the read-ahead, decode-ahead and write threads): Beam counters, the
Spark driver's sums. `manifest_timings` turns the summed counters back into seconds.
"""

from __future__ import annotations

from encoders.stages import STAGES, host_seconds

UNIT_PREFIX, AHEAD_PREFIX = "stage_us_", "ahead_us_"


def stage_metrics(stages: dict[str, float], ahead: dict[str, float]) -> dict[str, int]:
    """Counter name -> microseconds, for one unit's two clocks (stages never measured are left out)."""
    out = {UNIT_PREFIX + k: round(v * 1e6) for k, v in stages.items()}
    out.update({AHEAD_PREFIX + k: round(v * 1e6) for k, v in ahead.items() if v})
    return out


def manifest_timings(metrics: dict[str, int], units_s: float, rows: int) -> dict:
    """The manifest's stage figures from summed counters: `stages_s` (the units' own thread, in
    STAGES order; they add up to units_s but for `other_s`, the time between stages),
    `decode_ahead_s` (the read-ahead, decode-ahead and write threads', overlapping them), and `host_us_per_row`: all
    host work (everything but decode, forward and waiting for them, every thread) per row read, and
    `unit_thread_host_us_per_row`, the part on the units' own thread."""
    stages = _seconds(metrics, UNIT_PREFIX)
    ahead = _seconds(metrics, AHEAD_PREFIX)
    if not stages:
        return {}
    host = host_seconds(stages) + host_seconds(ahead)
    return {
        "stages_s": stages,
        "other_s": round(units_s - sum(stages.values()), 3),
        **({"decode_ahead_s": ahead} if ahead else {}),
        "host_us_per_row": round(host / rows * 1e6, 1) if rows else None,
        # of it, on the units' own thread (with read/decode-ahead the rest runs beside the forward passes)
        "unit_thread_host_us_per_row": round(host_seconds(stages) / rows * 1e6, 1) if rows else None,
    }


def _seconds(metrics: dict[str, int], prefix: str) -> dict[str, float]:
    found = {k[len(prefix) :]: v / 1e6 for k, v in metrics.items() if k.startswith(prefix)}
    order = [k for k in STAGES if k in found] + sorted(k for k in found if k not in STAGES)
    return {k: round(found[k], 4) for k in order}
