"""OpenMP's wait policy for processes that run torch (and faiss) on shared cores: PASSIVE by default.

libgomp, the OpenMP runtime of torch's Linux wheels, lets a thread that waits for the rest of its
team spin for a while before sleeping. When the core another team member needs is held by some
other thread (a second worker process, a decode-ahead or read-ahead thread, another job on the
machine), the waiter spins through that thread's time slice: small parallel regions (the image
processor's per-image copies, a uint8 stack) then take 10-20x their work. PASSIVE waiters sleep
at once. Figures in docs/performance.md.

libgomp reads the environment once, when it loads (on `import torch`): `apply_defaults` must run
before that, which the CLI does first thing; worker processes inherit the environment (Spark
executors get it forwarded, the Dataflow image sets it). A value already set is left alone.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set each of DEFAULTS that `environ` does not set yet; returns the ones set here.
    Too late once torch is imported in this process: then it sets nothing and says so."""
    todo = {k: v for k, v in DEFAULTS.items() if k not in environ}
    if todo and environ is os.environ and "torch" in sys.modules:
        log.debug("torch is already imported: OpenMP keeps its own wait policy (set %s before importing it)", todo)
        return {}
    environ.update(todo)
    return todo
