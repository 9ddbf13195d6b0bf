"""`fusionindex` command line: flags -> each command's settings object -> its run function.

One module a job: `entry` (parse, set up logging, dispatch, exit status), `options` (the
parser's options, from the settings classes), `parsers` (one sub-parser per command) and
`summaries` (each command's run and the line it prints). The nightly TOML config is read by
`pipelines.reindex.config`. Importing this package loads no torch, faiss or Beam.
"""

from pipelines.cli.entry import build_parser, main
from pipelines.cli.options import settings_from

__all__ = ["build_parser", "main", "settings_from"]
