"""Small file helpers every layer uses."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, block_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks (constant memory whatever the file's size)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()
