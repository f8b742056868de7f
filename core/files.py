"""Small file helpers every layer uses."""

from __future__ import annotations

import errno
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory whatever the file's size)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSON Lines file; a line that is not a
    JSON object is a ValueError naming the file and the line."""
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg} at column {error.colno})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: each line must be a JSON object")
        yield number, record


#: What a full disk (or a spent quota) says, as an errno and in the words of libraries that drop it.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "database or disk is full")  # the last: SQLite


class DiskFullError(OSError):
    """A write that found no space left, naming where it wrote (an OSError with that filename)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ENOSPC, "No space left on device", str(path))

    def __str__(self) -> str:
        return (f"no space left on the disk of {self.filename}: free some space there, or give a "
                "--data-dir on a larger disk; then run the same command again (what was written is kept, "
                "nothing is duplicated)")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a library's error that kept only the message) is a full disk."""
    return getattr(error, "errno", None) in _DISK_FULL_ERRNOS or any(t in str(error) for t in _DISK_FULL_TEXTS)
