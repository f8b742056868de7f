"""Swapping shard files in one step that no kill can leave half done, and sweeping what dead
writers left behind.

Compaction replaces several files by one: it writes the new file under a hidden temporary name,
records the swap in a journal (`.voxtox-swap-<id>.json` in the shards root: the directory, the
temporary file, its final name and the files it replaces), renames the new file into place,
deletes the old ones and deletes the journal. A process killed anywhere in between leaves the
journal, and whoever next takes the shards' lock (storage/shards.py: every writer, and every
voxtox reader that finds a journal) finishes the swap before it reads or changes anything: the
new file was whole (written and fsynced) before the journal was, so finishing is always right.
Readers therefore never see old and new rows side by side (before: a kill between the rename
and the deletions counted 2,112 rows for 1,057 clips until the next compaction).

Temporary files: every writer creates its temporary file under the shards lock and holds an
`flock` on it until it renames or removes it (the kernel releases it however the process dies).
A temporary file nobody holds was left by a dead process; `sweep_dead_temporaries`, run under
the exclusive lock, deletes it, and never one a live writer holds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

JOURNAL_PREFIX = ".voxtox-swap-"
JOURNAL_SUFFIX = ".json"
TEMPORARY_SUFFIX = ".tmp"


# --- temporary files ---------------------------------------------------------------------------


@contextmanager
def locked_temporary(path: Path) -> Iterator[tuple[Path, BinaryIO]]:
    """A new hidden temporary file beside `path`, open for writing and flocked while the block
    runs; removed at the end unless the block renamed it away."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
    handle = temporary.open("xb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield temporary, handle
    finally:
        handle.close()
        temporary.unlink(missing_ok=True)


def is_temporary(name: str) -> bool:
    """Whether `name` is one of voxtox's temporary files of a shard or a swap journal."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX) and (
        ".parquet." in name or JOURNAL_PREFIX in name
    )


def _is_held(path: Path) -> bool:
    """Whether a live process holds `path`'s flock (a vanished file counts as held: not ours)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # releases the flock if we took it
    return False


def sweep_dead_temporaries(root: Path) -> list[Path]:
    """Delete the temporary files under `root` that no live writer holds; returns them. The
    caller holds the shards' exclusive lock (so no writer is between creating and locking one)."""
    removed = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if is_temporary(name) and not _is_held(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary files left by killed runs under %s", len(removed), root)
    return removed


# --- swaps -----------------------------------------------------------------------------------------


def swap_in(root: Path, temporary: Path, target: Path, replaced: list[Path]) -> None:
    """Rename the finished file `temporary` to `target` and delete `replaced` (all in one
    directory under `root`), journalled so that a kill at any point is finished by the next
    holder of the lock. The caller holds the shards' exclusive lock."""
    directory = target.parent
    entry = {
        "directory": os.path.relpath(directory, root),
        "temporary": temporary.name,
        "target": target.name,
        "replaced": [path.name for path in replaced],
    }
    journal = root / f"{JOURNAL_PREFIX}{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
    with locked_temporary(journal) as (written, handle):
        handle.write(json.dumps(entry).encode())
        handle.flush()
        os.fsync(handle.fileno())
        os.replace(written, journal)
    _fsync_directory(root)
    _finish(root, entry)
    journal.unlink()
    _fsync_directory(root)


def _finish(root: Path, entry: dict) -> None:
    directory = root / entry["directory"]
    temporary = directory / entry["temporary"]
    if temporary.exists():
        os.replace(temporary, directory / entry["target"])
    for name in entry["replaced"]:
        (directory / name).unlink(missing_ok=True)
    _fsync_directory(directory)


def pending_swaps(root: Path) -> list[Path]:
    """Journals of swaps a killed process left unfinished (cheap: one listing of `root`)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(root / n for n in names if n.startswith(JOURNAL_PREFIX) and n.endswith(JOURNAL_SUFFIX))


def finish_swaps(root: Path) -> int:
    """Finish every swap a killed process left half done; returns how many. The caller holds
    the shards' exclusive lock."""
    journals = pending_swaps(root)
    for journal in journals:
        _finish(root, json.loads(journal.read_text()))
        journal.unlink()
    if journals:
        _fsync_directory(root)
        log.info("finished %d file swaps that killed runs left half done under %s", len(journals), root)
    return len(journals)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
