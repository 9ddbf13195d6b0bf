"""The console script's start-up and exit: Python's cyclic garbage collector paused while the
command's libraries import, then kept off everything the start-up made.

Importing torch, torchvision, transformers and Beam creates ~930k objects that live as long as the
process. With the collector on, it scans all of them again each time they grow by a quarter
(1.0-1.4 s of a 5.3 s start-up on the 2-core machine) and once more as the interpreter exits
(1.1 s); docs/performance.md, "Start-up and exit". `gc.freeze()` moves them to a generation the
collector never scans; what the command allocates afterwards is collected as usual. The ~11k
objects the imports left as cyclic garbage are frozen with them (a full collection to find them
costs 0.5 s).

Only the console entry (`pipelines.cli.entry.console`) pauses the collector. A program that calls
`pipelines.cli.main` itself (the tests) keeps its own settings: `resume` is then a no-op.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """First thing at the entry point: no collections while the libraries import."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Start-up is over (the command's modules are imported): freeze what exists and collect again
    from here on. Does nothing unless `pause` paused the collector."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False


def before_exit() -> None:
    """Last thing at the entry point: freeze what is left, so that the interpreter's final
    collection does not scan the whole heap once more (files are closed and logs flushed by then)."""
    gc.freeze()
