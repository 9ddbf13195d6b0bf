"""One reindex per ROOT at a time: ROOT/.lock, created exclusively, refreshed by a heartbeat.

The lock file is created with mode "xb" (locally O_EXCL; on S3 a conditional put, If-None-Match),
so of two runs starting together exactly one gets it. It holds the owner (host, pid, a random
token), the run id and a heartbeat time that a background thread refreshes. A lock is stale, and
taken over, when its heartbeat is older than `stale_after`, or when its owner is a process of this
host that no longer exists (a run killed with kill -9 is taken over at once by the next run on
the same machine). On a filesystem whose fsspec driver has no exclusive create, the lock falls
back to write-then-read-back (a race of a few milliseconds remains; say so in its log).
Heartbeats replace the file atomically, so a reader never sees half a record; a lock that still
cannot be read (truncated by hand, say) is judged by its file's age. A run whose lock was taken
over while it ran (its heartbeat stalled past `stale_after`) learns it at its next beat and
`ensure_held` refuses to publish.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from encoders import storage
from encoders.errors import UsageError

log = logging.getLogger(__name__)

LOCK = ".lock"


class Busy(UsageError):
    """Another reindex holds the lock of this ROOT."""


class LockLost(Busy):
    """Another reindex took this run's lock over while it ran; it must not publish."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: dict, now: float, stale_after: float) -> bool:
    """Whether a lock record may be taken over (pure but for the pid check on this host)."""
    if now - lock.get("heartbeat", 0) > stale_after:
        return True
    return lock.get("host") == socket.gethostname() and not _alive(int(lock.get("pid", -1)))


class RunLock:
    """Context manager holding ROOT/.lock for `run_id` (Busy when another live run has it)."""

    def __init__(self, root: str, run_id: str, *, stale_after: float = 900.0, heartbeat_every: float = 30.0):
        self.path = storage.join(root, LOCK)
        self.stale_after, self.heartbeat_every = stale_after, heartbeat_every
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "run": run_id}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: dict | None = None  # the record that replaced ours, once a heartbeat finds it

    def _write(self, mode: str) -> None:
        fs, p = storage.url_to_fs(self.path)
        with fs.open(p, mode) as fh:
            fh.write(json.dumps({**self.record, "heartbeat": time.time()}).encode())

    def _create(self) -> bool:
        try:
            self._write("xb")
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):  # no exclusive create: write, then read back
            log.warning("%s: this filesystem has no exclusive create; locking by write-then-read-back", self.path)
            if storage.exists(self.path):
                return False
            self._write("wb")
            time.sleep(0.2)
            return storage.read_json(self.path).get("token") == self.record["token"]

    def _read_held(self) -> dict:
        """The lock record on ROOT; an unreadable one is aged by its file's modification time."""
        for attempt in range(3):
            try:
                held = storage.read_json(self.path)
                if isinstance(held, dict):
                    return held
            except FileNotFoundError:
                return {}
            except ValueError:
                pass
            time.sleep(0.2 * (attempt + 1))
        fs, p = storage.url_to_fs(self.path)
        try:
            mtime = fs.modified(p).timestamp()
        except (OSError, NotImplementedError):
            mtime = time.time()
        log.warning("%s is not a lock record this tool wrote; judging it by its age", self.path)
        return {"run": "(unreadable lock)", "host": "?", "pid": "?", "heartbeat": mtime}

    def __enter__(self) -> RunLock:
        if not self._create():
            held = self._read_held()
            if not is_stale(held, time.time(), self.stale_after):
                age = time.time() - held.get("heartbeat", 0)
                raise Busy(
                    f"another reindex (run {held.get('run')}, {held.get('host')} pid {held.get('pid')}, heartbeat "
                    f"{age:.0f} s ago) holds {self.path}; it is taken over once its heartbeat is "
                    f"{self.stale_after:.0f} s old or its process is gone"
                )
            log.warning(
                "taking over the stale lock of run %s (%s pid %s)", held.get("run"), held.get("host"), held.get("pid")
            )
            if self._read_held().get("token") != held.get("token"):  # someone beat us to it, or it woke up
                raise Busy(f"the lock {self.path} changed hands while this run looked at it; run again later")
            storage.remove(self.path)
            if not self._create():
                raise Busy(f"another reindex took over the stale lock {self.path} first")
        self._thread = threading.Thread(target=self._beat, name="reindex-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            try:
                held = self._read_held()
                if held.get("token") != self.record["token"]:
                    self.lost = held
                    log.error("lost the lock %s to run %s; this run will not publish", self.path, held.get("run"))
                    return
                storage.write_json(self.path, {**self.record, "heartbeat": time.time()})
            except OSError as exc:  # a missed beat is retried; a lost lock is reported above
                log.warning("lock heartbeat failed: %s", exc)

    def ensure_held(self) -> None:
        """Raise LockLost when another run has taken the lock over (checked afresh, not only by the
        heartbeat)."""
        held = self.lost or self._read_held()
        if held.get("token") != self.record["token"]:
            raise LockLost(
                f"another reindex (run {held.get('run')}, {held.get('host')} pid {held.get('pid')}) took over "
                f"{self.path} while this run worked, so nothing was published; raise --lock-stale-after above "
                f"the longest stall of this job (now {self.stale_after:.0f} s)"
            )

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if self._read_held().get("token") == self.record["token"]:
                storage.remove(self.path)
        except (OSError, ValueError) as err:
            log.warning("could not release %s: %s", self.path, err)
