"""Scratch space of a running flow: `<data_dir>/work/<run_id>/`, removed when the run ends.

Decoded audio is staged there between stages (hundreds of MB for long recordings). A run that
is killed cannot clean up after itself, so every run holds an exclusive lock on its directory
(`flock`, released by the kernel when the process dies however it dies), and each new run
removes the directories whose lock nobody holds: no later run can use them.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: A directory without a lock file is left alone this long: its run may be creating the lock.
UNLOCKED_GRACE_S = 600.0


def _try_lock(path: Path):  # noqa: ANN202 - an open file holding the lock, or None
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _is_stale(directory: Path, now: float) -> bool:
    lock_file = directory / LOCK_NAME
    if not lock_file.exists():
        return now - directory.stat().st_mtime > UNLOCKED_GRACE_S
    handle = _try_lock(lock_file)
    if handle is None:
        return False  # a live run holds it
    handle.close()
    return True


def sweep_stale_work(root: Path) -> list[Path]:
    """Remove the work directories of runs that are no longer running; returns them."""
    if not root.is_dir():
        return []
    now = time.time()
    removed = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            stale = _is_stale(directory, now)
        except OSError:
            continue  # vanished meanwhile, or not ours to read
        if stale:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    if removed:
        log.info("removed %d work directories left by runs that ended: %s", len(removed), removed)
    return removed


@contextmanager
def run_work_dir(root: Path, run_id: str) -> Iterator[Path]:
    """A locked work directory for one run, removed when the run ends (and, if the process is
    killed instead, by the next run's sweep)."""
    sweep_stale_work(root)
    directory = root / run_id
    directory.mkdir(parents=True, exist_ok=True)
    handle = _try_lock(directory / LOCK_NAME)
    if handle is None:
        raise RuntimeError(f"work directory {directory} is in use by another running process")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        handle.close()
