"""The checks a run must pass before LATEST moves to it. Pure functions of the run's figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from index_builder.records import Counts, IndexManifest


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool | None  # None: does not apply to this run (the reason is in `detail`)
    value: float | None
    limit: str  # as shown to people: "<= 0.05", "== 1234"
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_gates(
    counts: Counts,
    index: IndexManifest,
    *,
    max_reject_rate: float,
    min_recall: float,
    canary: dict | None,
    min_canary_overlap: float,
    duplicates: dict | None = None,
    max_duplicate_rate: float | None = None,
) -> list[Gate]:
    """Every gate of a run: `counts` from the embed manifest, `index` the index manifest, `canary`
    the overlap measured against the published index (None when there are no canary queries)."""
    gates = [
        count_invariant(counts),
        index_holds_every_embedded_row(counts, index),
        reject_rate(counts, max_reject_rate),
        recall_gate(index, min_recall),
        canary_overlap(canary, min_canary_overlap),
    ]
    if max_duplicate_rate is not None and duplicates is not None:
        gates.append(duplicate_rate(duplicates, index, max_duplicate_rate))
    return gates


def count_invariant(counts: Counts) -> Gate:
    """Every row read is embedded, rejected or skipped; every embedded row is new, changed or unchanged."""
    parts = counts.embedded + counts.rejected + counts.skipped
    classes = counts.new + counts.changed + counts.unchanged
    ok = counts.read == parts and counts.embedded == classes
    return Gate(
        "count_invariant",
        ok,
        counts.read,
        f"== {parts} (embedded + rejected + skipped)",
        f"read {counts.read}; embedded {counts.embedded} = new {counts.new} + changed "
        f"{counts.changed} + unchanged {counts.unchanged}; rejected {counts.rejected}; "
        f"skipped {counts.skipped}",
    )


def index_holds_every_embedded_row(counts: Counts, index: IndexManifest) -> Gate:
    expected = counts.embedded - index.skipped_null_vectors
    return Gate(
        "index_holds_every_embedded_row",
        index.ntotal == expected,
        index.ntotal,
        f"== {expected}",
        f"{index.ntotal} {index.vector} vectors in the index for {counts.embedded} embedded rows",
    )


def reject_rate(counts: Counts, max_reject_rate: float) -> Gate:
    considered = counts.read - counts.skipped
    rate = counts.rejected / considered if considered else 0.0
    return Gate(
        "reject_rate",
        rate <= max_reject_rate,
        round(rate, 6),
        f"<= {max_reject_rate}",
        f"{counts.rejected} of {considered} success rows rejected"
        + "".join(f"; {k} {v}" for k, v in counts.rejects_by_reason.items()),
    )


def recall_gate(index: IndexManifest, min_recall: float) -> Gate:
    recall = index.recall.recall_at_k
    return Gate(
        "recall",
        recall >= min_recall,
        round(recall, 6),
        f">= {min_recall}",
        f"recall@{index.recall.k} against exact search at nprobe {index.nprobe}",
    )


def canary_overlap(canary: dict | None, min_canary_overlap: float) -> Gate:
    """Not applicable (passed None) without canary queries or when the canary was skipped."""
    if canary is None:
        return Gate("canary_overlap", None, None, f">= {min_canary_overlap}", "no --canary-queries given")
    if canary.get("skipped"):
        return Gate("canary_overlap", None, None, f">= {min_canary_overlap}", canary["skipped"])
    mean = canary["mean_overlap"]
    return Gate(
        "canary_overlap",
        mean >= min_canary_overlap,
        round(mean, 6),
        f">= {min_canary_overlap}",
        f"mean top-{canary['k']} overlap of {canary['queries']} canary queries with the published index",
    )


def duplicate_rate(duplicates: dict, index: IndexManifest, max_duplicate_rate: float) -> Gate:
    rate = duplicates["rows_in_groups"] / index.ntotal if index.ntotal else 0.0
    return Gate(
        "duplicate_rate",
        rate <= max_duplicate_rate,
        round(rate, 6),
        f"<= {max_duplicate_rate}",
        f"{duplicates['rows_in_groups']} of {index.ntotal} indexed items in {duplicates['groups']} "
        f"near-duplicate groups at cosine >= {duplicates['threshold']:g}",
    )


def failed(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if g.passed is False]
