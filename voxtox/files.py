"""Small file helpers every layer uses."""

from __future__ import annotations

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
