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
    gates = []
    parts = counts.embedded + counts.rejected + counts.skipped
    classes = counts.new + counts.changed + counts.unchanged
    ok = counts.read == parts and counts.embedded == classes
    gates.append(
        Gate(
            "count_invariant",
            ok,
            counts.read,
            f"== {parts} (embedded + rejected + skipped)",
            f"read {counts.read}; embedded {counts.embedded} = new {counts.new} + changed "
            f"{counts.changed} + unchanged {counts.unchanged}; rejected {counts.rejected}; "
            f"skipped {counts.skipped}",
        )
    )
    expected = counts.embedded - index.skipped_null_vectors
    gates.append(
        Gate(
            "index_holds_every_embedded_row",
            index.ntotal == expected,
            index.ntotal,
            f"== {expected}",
            f"{index.ntotal} {index.vector} vectors in the index for {counts.embedded} embedded rows",
        )
    )
    considered = counts.read - counts.skipped
    rate = counts.rejected / considered if considered else 0.0
    gates.append(
        Gate(
            "reject_rate",
            rate <= max_reject_rate,
            round(rate, 6),
            f"<= {max_reject_rate}",
            f"{counts.rejected} of {considered} success rows rejected"
            + "".join(f"; {k} {v}" for k, v in counts.rejects_by_reason.items()),
        )
    )
    recall = index.recall.recall_at_k
    gates.append(
        Gate(
            "recall",
            recall >= min_recall,
            round(recall, 6),
            f">= {min_recall}",
            f"recall@{index.recall.k} against exact search at nprobe {index.nprobe}",
        )
    )
    if canary is None:
        gates.append(Gate("canary_overlap", None, None, f">= {min_canary_overlap}", "no --canary-queries given"))
    elif canary.get("skipped"):
        gates.append(Gate("canary_overlap", None, None, f">= {min_canary_overlap}", canary["skipped"]))
    else:
        mean = canary["mean_overlap"]
        gates.append(
            Gate(
                "canary_overlap",
                mean >= min_canary_overlap,
                round(mean, 6),
                f">= {min_canary_overlap}",
                f"mean top-{canary['k']} overlap of {canary['queries']} canary queries with the published index",
            )
        )
    if max_duplicate_rate is not None and duplicates is not None:
        rate = duplicates["rows_in_groups"] / index.ntotal if index.ntotal else 0.0
        gates.append(
            Gate(
                "duplicate_rate",
                rate <= max_duplicate_rate,
                round(rate, 6),
                f"<= {max_duplicate_rate}",
                f"{duplicates['rows_in_groups']} of {index.ntotal} indexed items in {duplicates['groups']} "
                f"near-duplicate groups at cosine >= {duplicates['threshold']:g}",
            )
        )
    return gates


def failed(gates: list[Gate]) -> list[Gate]:
    return [g for g in gates if g.passed is False]
