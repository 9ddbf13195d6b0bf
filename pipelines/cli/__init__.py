"""`fusionindex` command line: flags -> each command's settings object -> its run function.

One module a job: `entry` (parse, set up logging, dispatch, exit status), `commands` (the
table of commands and their settings classes), `options` (each option generated from its
settings field), `summaries` (each command's run and the line it prints) and `docs` (docs/cli.md
and the README's command list, generated). The nightly TOML config is read by
`pipelines.reindex.config`. Importing this package loads no torch, faiss or Beam.
"""

from pipelines.cli.commands import build_parser
from pipelines.cli.entry import console, main
from pipelines.cli.options import settings_from

__all__ = ["build_parser", "console", "main", "settings_from"]
