"""build-index's add step: which adder a build uses.

    adder_for (here)   None: the shards are added in the build's own process (index_builder.adding)
    beam_stage.py      the add as a Beam stage (AddShards), on the same runner options as `embed`

This module chooses without importing Beam when the shards are added in the build's own process:
importing apache_beam (beam_stage) costs a process ~106 MiB of its own memory and ~38 MiB of
mapped libraries, a fifth of the on-disk build's peak at 2M x 256.
"""

from __future__ import annotations

from index_builder.adding import AddParts


def adder_for(workers: int, beam_args: list[str]) -> AddParts | None:
    """The Beam stage when Beam options or several workers are asked for; None: add in this process."""
    if not beam_args and workers <= 1:
        return None
    from pipelines.index_add.beam_stage import beam_adder

    return beam_adder(beam_args, workers)
