"""Tombstones: the recordings `voxtox forget` (or retention) erased, so that no later run labels
them again unless told to (`voxtox label --allow-forgotten`).

A tombstone must recognise the same audio when it arrives again, and nothing more: it is the
sha256 of the recording's bytes (what ingest computes before it decodes anything) and the day it
was forgotten. No URI, speaker, transcript, duration or reason is kept, so the tombstone file
says only "a recording with this hash was erased on this day". Whoever holds the audio (or its
hash) can still tell that it was here once; that is what recognising it again requires.

One text file beside the tables, `<data_dir>/shards/tombstones.txt`, one `<sha256> <YYYY-MM-DD>`
line per recording, rewritten atomically under the shards' exclusive lock (storage/erasure.py).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import date
from functools import lru_cache
from pathlib import Path

TOMBSTONES_FILE = "tombstones.txt"
HEADER = "# voxtox tombstones: sha256 of an erased recording's bytes, and the day it was erased\n"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(text: str) -> bool:
    return bool(SHA256.match(text))


def tombstones_file(shards_root: Path) -> Path:
    return shards_root / TOMBSTONES_FILE


def read_tombstones(path: Path) -> dict[str, str]:
    """sha256 -> the day it was forgotten; empty when nothing was ever forgotten."""
    if not path.exists():
        return {}
    found: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        sha, _, day = line.partition(" ")
        if not is_sha256(sha):
            raise ValueError(f"{path}:{number}: not a tombstone line (expected '<sha256> <date>'): {line[:80]!r}")
        found[sha] = day.strip()
    return found


def forgotten_sha256s(path: Path) -> frozenset[str]:
    """The forgotten hashes; read again only when the file was replaced (writers ask for every
    source they write)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return frozenset()
    return _forgotten(str(path), stat.st_ino, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _forgotten(path: str, inode: int, mtime_ns: int) -> frozenset[str]:
    return frozenset(read_tombstones(Path(path)))


def add_tombstones(path: Path, sha256s: set[str] | frozenset[str], day: date) -> int:
    """Record `sha256s` as forgotten on `day` (those already there keep their first day);
    returns how many are new. The caller holds the shards' exclusive lock."""
    known = read_tombstones(path)
    new = {sha: day.isoformat() for sha in sorted(sha256s) if sha not in known}
    if not new:
        return 0
    lines = "".join(f"{sha} {when}\n" for sha, when in sorted((known | new).items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("w") as handle:
            handle.write(HEADER + lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(new)
