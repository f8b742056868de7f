"""Inputs of a served deployment stay below its inbox.

Whoever can start a run of a served deployment (anyone with the Prefect UI's login) chooses its
`inputs`. `voxtox serve` therefore names its inbox in the environment of the flow runs it starts
(`VOXTOX_SERVED_INBOX`), and those runs read nothing that does not resolve (`..` and symlinks
followed) below it: an input outside is a reject with the reason `outside_inbox`, and is never
opened, nor is a URL fetched. A local user running `voxtox label` has no such variable and reads
whatever they name. The variable comes from the serving process, not from a run's parameters, so
a run cannot lift it.

The records of inputs refused before any stage opens them (`SourceRejection`, unreadable names)
live here too: the ingest and write stages and the label flow share them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceRejection:
    uri: str
    reason: str
    detail: str
    source_sha256: str | None = None
    stage: str = "ingest"


#: The reason of an input whose file name is not valid UTF-8 text (it cannot be stored or shown).
UNREADABLE_NAME = "unreadable_name"


def printable_name(uri: str) -> str:
    """`uri` as valid UTF-8 text. A file name's bytes that are not UTF-8 reach Python as lone
    surrogates (PEP 383), which Parquet, JSON and Prefect's API all refuse; they are shown as
    `\\xNN` escapes instead (`bad\\xff.wav`)."""
    try:
        raw = uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (from a JSON manifest's \\ud800)
        return uri.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def reject_unreadable_names(uris: list[str]) -> tuple[list[str], list[SourceRejection]]:
    """Split `uris` into those whose names are text and a rejection for each of the others, before
    any task sees them: one such name used to fail every run, and every rerun, at the write."""
    readable, rejected = [], []
    for uri in uris:
        shown = printable_name(uri)
        if shown == uri:
            readable.append(uri)
        else:
            detail = "the file name is not valid UTF-8 (its other bytes are shown as \\xNN); rename the file to label it"
            rejected.append(SourceRejection(shown, UNREADABLE_NAME, detail))
    return readable, rejected


SERVED_INBOX_ENV = "VOXTOX_SERVED_INBOX"
OUTSIDE_INBOX = "outside_inbox"


def served_inbox() -> Path | None:
    """The inbox this process's runs are confined to, or None outside `voxtox serve`."""
    value = os.environ.get(SERVED_INBOX_ENV)
    return Path(value).resolve() if value else None


def outside_reason(uri: str, root: Path) -> str | None:
    """Why `uri` may not be read by a run confined to `root`, or None when it lies below it."""
    if "://" in uri and not uri.startswith("file://"):
        return f"{uri} is a URL: a served deployment reads only files below its inbox {root}"
    path = Path(uri.removeprefix("file://")).expanduser()
    resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if resolved == root or root in resolved.parents:
        return None
    return f"{uri} is outside the inbox {root} (after resolving '..' and symbolic links)"


def confine(uris: list[str], root: Path | None) -> tuple[list[str], list[SourceRejection]]:
    """Split `uris` into those below `root` and rejections for the rest (all kept when None)."""
    if root is None:
        return list(uris), []
    reasons = {uri: outside_reason(uri, root) for uri in uris}
    inside = [uri for uri, reason in reasons.items() if reason is None]
    outside = [
        SourceRejection(printable_name(uri), OUTSIDE_INBOX, printable_name(reason))
        for uri, reason in reasons.items()
        if reason
    ]
    return inside, outside
