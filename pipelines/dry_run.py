"""`DryRun`: how a command ends after `--dry_run=True` (no Beam import, so the CLI can catch it cheaply)."""

from __future__ import annotations


class DryRun(Exception):
    """Ends a command after a dry run: `stage`'s job was built and nothing ran, so no output was
    written and no later stage may run. Not an error: the CLI prints it and exits 0. `runner` is
    the Beam runner object (DataflowRunner keeps the pipeline proto in `runner.proto_pipeline`
    and the job request in `runner.job`)."""

    def __init__(self, stage: str, runner_name: str, runner: object, written: str = "nothing was written"):
        self.stage, self.runner = stage, runner
        super().__init__(f"dry run: the {stage} job graph was built for {runner_name}; nothing ran; {written}")
