"""How OpenMP waiters wait in processes that run torch (and faiss): a short spin by default.

libgomp, the OpenMP runtime of torch's Linux wheels (and faiss's), lets a thread that waits for
the rest of its team spin for a while before sleeping: 300,000 turns by default. When the core
another team member needs is held by some other thread (a second worker process, a read-ahead
thread, another job on the machine), the waiter spins through that thread's time slice and small
parallel regions take many times their work: `embed` beside a 1-thread busy loop took 77-79 s
with libgomp's default against 19 s idle. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) fixed that
(29-31 s) but cost 7-10% on an idle machine (20.3-21.6 s against 18.3-19.2). GOMP_SPINCOUNT=10000,
a spin of a few microseconds, keeps most of both: 19.4-19.6 s idle, 34 s beside the busy loop
(docs/performance.md, "OpenMP waiters"). A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.

libgomp reads the environment once, when it loads (on `import torch`): `apply_defaults` must run
before that, which the CLI does first thing; worker processes inherit the environment (Spark
executors get it forwarded, the Dataflow image sets it). A value already set is left alone.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # either one set by the user: DEFAULTS stay out


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set DEFAULTS in `environ` unless it sets one of USER_SETTINGS; returns what was set here.
    Too late once torch is imported in this process: then it sets nothing and says so."""
    todo = {} if any(k in environ for k in USER_SETTINGS) else dict(DEFAULTS)
    if todo and environ is os.environ and "torch" in sys.modules:
        log.debug("torch is already imported: OpenMP keeps its own wait policy (set %s before importing it)", todo)
        return {}
    environ.update(todo)
    return todo


def wait_policy(environ: Mapping[str, str]) -> str:
    """How OpenMP waiters wait in a process started with `environ` once apply_defaults ran:
    OMP_WAIT_POLICY's value when one is set, else 'GOMP_SPINCOUNT=N'."""
    if environ.get("OMP_WAIT_POLICY", "").strip():
        return environ["OMP_WAIT_POLICY"].strip().upper()
    return f"GOMP_SPINCOUNT={environ.get('GOMP_SPINCOUNT') or DEFAULTS['GOMP_SPINCOUNT']}"
