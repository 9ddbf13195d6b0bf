"""Beam pipeline options, for every stage that runs on Beam (`embed`, the `build-index` add stage).

    pipeline_options(args)   the leftover CLI args as PipelineOptions, checked (runner, --dry_run)
    beam_flags / unknown_beam_args   what Beam accepts, for the CLI's "did you mean"
    workers_on_this_machine  whether the runner's workers are this machine (a local runner)
    thread_layout            how the run's workers share a machine's cores (pipelines/threads.py)
    is_dry_run / dry_run_done   --dry_run=True (DataflowRunner builds the job and submits nothing)

Nothing embed-specific lives here: the embed graph and its DoFns are in pipelines/embed/beam.py.
"""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)

from encoders.errors import SettingsError
from pipelines.dry_run import DryRun
from pipelines.threads import ThreadLayout, beam_layout

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"  # the local runner that needs no download (DirectRunner tries Prism first)
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
# Runners that would give a wrong result without saying so: refused, with the reason.
REFUSED_RUNNERS = {
    "DaskRunner": "Beam's DaskRunner loses data silently: only the last-applied branch of a pipeline runs, "
    "elements emitted in finish_bundle are dropped, and it reports no metrics; use the default FnApiRunner "
    "(--direct_num_workers N --direct_running_mode multi_processing) or DataflowRunner",
}


def _beam_parser():
    """An argument parser holding every option Beam's PipelineOptions classes define
    (as PipelineOptions.get_all_options builds it; Beam only warns about the rest). A bad value
    for a Beam option raises SettingsError instead of printing usage and exiting."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class Strict(_BeamArgumentParser):
        def error(self, message):
            if not message.startswith("ambiguous option: "):  # Beam ignores those too
                raise SettingsError(f"Beam option: {message}")

    parser = Strict(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def beam_flags() -> list[str]:
    """Every --flag Beam knows."""
    return sorted(o for a in _beam_parser()._actions for o in a.option_strings if o.startswith("--"))


def unknown_beam_args(args: list[str]) -> list[str]:
    """The arguments among `args` that no Beam pipeline option accepts."""
    return _beam_parser().parse_known_args(args)[1]


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the leftover CLI args; the default runner needs no download. SettingsError
    (with the fix) for a refused or unavailable runner and for a --dry_run that would run the job."""
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = DEFAULT_RUNNER
    name = runner_name(options)
    if name in REFUSED_RUNNERS:
        raise SettingsError(f"--runner {standard.runner} is refused: {REFUSED_RUNNERS[name]}")
    dry_run = options.view_as(TestOptions).dry_run
    if isinstance(dry_run, str) and dry_run.lower() in ("false", "0", "no", ""):
        raise SettingsError(
            f"--dry_run={dry_run}: Beam takes any value as true and would not submit the job; "
            "leave --dry_run out to run it, or write --dry_run=True"
        )
    if dry_run and name != "DataflowRunner":
        raise SettingsError(
            f"--dry_run: only DataflowRunner builds a job without running it; {name} would run the pipeline"
        )
    try:
        from apache_beam.runners.runner import create_runner

        create_runner(standard.runner)
        if name == "DataflowRunner":  # Beam without [gcp] creates the runner and fails only when submitting
            import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
    except (ValueError, ImportError) as exc:
        hint = "; install the Dataflow extra: pip install 'fusionindex[dataflow]'" if name == "DataflowRunner" else ""
        raise SettingsError(f"--runner {standard.runner}: {exc}{hint}") from exc
    return options


def thread_layout(options: PipelineOptions) -> ThreadLayout:
    """How this run's workers share a machine's cores (pipelines/threads.py: their torch threads)."""
    direct = options.view_as(DirectOptions)
    return beam_layout(
        runner_name(options),
        num_workers=direct.direct_num_workers,
        running_mode=direct.direct_running_mode,
        experiments=options.view_as(DebugOptions).experiments or (),
    )


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name, however it was given (a name, a dotted path or an instance)."""
    runner = options.view_as(StandardOptions).runner
    return runner.rsplit(".", 1)[-1] if isinstance(runner, str) else type(runner).__name__


def workers_on_this_machine(options: PipelineOptions) -> bool:
    """Whether the runner's workers run on this machine (a local runner), so that what this
    machine resolves (its device, its CPUs) is theirs."""
    return runner_name(options) in LOCAL_RUNNERS


def is_dry_run(options: PipelineOptions) -> bool:
    """`--dry_run=True`: the runner builds the job (DataflowRunner: the job graph and its
    request) and submits nothing. No output will be written, so no later stage may run."""
    return bool(options.view_as(TestOptions).dry_run)


def dry_run_done(stage: str, options: PipelineOptions, runner, written: str = "nothing was written") -> DryRun:
    """The DryRun ending a command whose `stage` was only built; `written`: what the driver did write."""
    return DryRun(stage, runner_name(options), runner, written)
