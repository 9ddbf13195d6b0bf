"""Entry and dispatch: parse the command line, set up logging, run the command, map errors to exit codes.

`embed` hands options it does not know to Beam when Beam knows them (`--runner`,
`--direct_num_workers 2 --direct_running_mode multi_processing`, Dataflow options); any other
unknown option is an error. Usage errors (`encoders.errors.UsageError`) print one line and exit 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import sys

from encoders import openmp
from encoders.errors import SettingsError, UsageError
from index_builder import faiss_defaults
from index_builder.allocators import lean_allocators
from pipelines import startup
from pipelines.cli.commands import BY_NAME, build_parser
from pipelines.cli.options import Parser
from pipelines.dry_run import DryRun
from pipelines.reindex.config import load_config


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("fusionindex", "pipelines", "encoders", "index_builder"):
        logging.getLogger(name).setLevel(level)
    if not verbose:  # read by huggingface_hub/transformers when they load (not imported here: slow)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def beam_args(parser: Parser, args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The leftover arguments, when they are Beam options (of `embed`, `reindex`, `build-index`);
    SettingsError otherwise."""
    if not rest:
        return []
    if not BY_NAME[args.command].beam:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from pipelines.beam_options import beam_flags, unknown_beam_args

    unknown = unknown_beam_args(rest)
    if not unknown:
        return rest
    flag = next((a for a in unknown if a.startswith("-")), unknown[0])
    if not flag.startswith("-"):
        raise SettingsError(f"unexpected argument {flag!r}")
    ours = [o for a in parser.commands[args.command]._actions for o in a.option_strings]
    close = difflib.get_close_matches(flag.split("=", 1)[0], ours + beam_flags(), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise SettingsError(f"unknown option {flag}: neither an {args.command} option nor a Beam pipeline option{hint}")


def with_config(parser: Parser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parse `argv`; for reindex --config, again with the file's values as defaults (flags win)."""
    args, rest = parser.parse_known_args(argv)
    if args.command != "reindex" or not args.config:
        return args, rest
    p = parser.commands["reindex"]
    defaults, beam = load_config(p, args.config)
    extend = {a.dest for a in p._actions if a.nargs in ("+", "*")}
    p.set_defaults(**{k: v for k, v in defaults.items() if k not in extend or getattr(args, k) is None})
    args, rest = parser.parse_known_args(argv)
    return args, beam + rest  # Beam options on the command line come later and win


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 2 usage error, 3 a reindex gate failed; a bug raises)."""
    openmp.apply_defaults()  # before anything imports torch (libgomp reads it once)
    parser = build_parser()
    try:
        args, rest = with_config(parser, argv)
        _setup_logging(args.verbose, args.quiet)
        command = BY_NAME[args.command]
        if command.lean_allocators:  # it builds indexes: process-wide settings for that
            lean_allocators()  # freed shard buffers go back to the system
            faiss_defaults.apply()  # BLAS distances for small sub-quantizers too
        if command.early:
            command.early(args)
        for module in command.imports(args):  # its libraries, while the console's collector is paused
            importlib.import_module(module)
        startup.resume()
        return command.run(args, beam_args(parser, args, rest))
    except SystemExit as exc:  # argparse: --help (0) or a one-line error (2)
        return exc.code if isinstance(exc.code, int) else 2
    except UsageError as exc:
        print(f"fusionindex: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except DryRun as exc:  # --dry_run=True: the job was built, not submitted; no output, not an error
        print(exc)
        return 0


def console() -> int:
    """The `fusionindex` console script and `python -m pipelines.cli`: `main` with Python's garbage
    collector paused while the command's libraries import, and its last full scan skipped at exit
    (pipelines/startup.py)."""
    startup.pause()
    try:
        return main()
    finally:
        startup.before_exit()
