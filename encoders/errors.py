"""The project's usage errors: one base class, so the CLI can tell them from bugs.

A `UsageError` means the user asked for something that cannot work (a flag value, a path, an
input file, a model); its message names the culprit and the fix, and the CLI prints it as one
line with exit status 2. Any other exception is a bug and keeps its traceback.

It lives in the lowest layer (no imports) so `encoders/`, `index_builder/` and `pipelines/`
all raise the same base; the checks that name a flag (`check_choice`, `check_at_least`) live with
the option declarations in `encoders.options`. Data problems in single rows are not errors:
they become reject records (`encoders.images.ImageRejected` carries their reason code).
"""

from __future__ import annotations


class UsageError(Exception):
    """Something asked for cannot be done; the message says what and how to fix it."""


class SettingsError(UsageError):
    """A setting (a command-line flag) has a value that cannot work."""


class InputError(UsageError):
    """An input file or directory cannot be read as asked; the message names it."""
