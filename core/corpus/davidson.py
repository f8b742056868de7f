"""Davidson et al. (2017) hate/offensive tweets as soft-labelled rows for the voxtox labeller.

Each tweet was labelled by at least three crowd workers, each choosing one of hate speech,
offensive language or neither. Voter fractions `h`, `o`, `n` (summing to 1) map onto voxtox's
classes as:

- `profanity = h + o` (i.e. 1 − n). Workers picked the *most severe* category, so a tweet called
  hate was offensive too; in this data both are carried by slurs and obscenities, which voice
  moderation counts as profanity.
- `racism = h`. Caveat: Davidson's "hate speech" is mostly racial/ethnic, but it also holds
  homophobic and sexist slurs, so this over-states racism for some rows.
- `bullying = HATE_TO_BULLYING · h`. Hate speech demeans people, but is often aimed at a group
  rather than at the listener; half credit is a prior, not a measurement.
- `no_violation = n`.
- `dating_sexting = other = 0`: *not annotated* (the tweets do contain sexual talk and drugs).
  The zeros mean "unknown"; a trainer should mask these classes' loss on Davidson rows
  (`UNLABELLED_CLASSES`).

Tweets are cleaned (HTML entities, retweet markers, @mentions, URLs) and split by a hash of
their normalised text, so retweets and copies of one text always share a split.
"""

from __future__ import annotations

import csv
import hashlib
import html
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from voxtox.corpus.seed import normalise_text
from voxtox.labels import CLASSES

ENV_VAR = "VOXTOX_DAVIDSON_CSV"
#: Relative to the current working directory (the repository root, next to `../shared`).
DEFAULT_PATH = Path("../shared/data/davidson-hate-offensive/labeled_data.csv")
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
HATE_TO_BULLYING = 0.5
UNLABELLED_CLASSES: tuple[str, ...] = ("dating_sexting", "other")

_RETWEET = re.compile(r"\bRT\b:?")
_MENTION = re.compile(r"@\w+:?")
#: Also truncated links ("http…", "http:/…"), which many tweets end with.
_URL = re.compile(r"\b(?:https?\S*|www\.\S+)", re.IGNORECASE)
_LEADING_NOISE = re.compile(r"^[\s!:;,.|\"'-]+")
_PRIVATE_USE = "Co"  # Unicode category of the platform-specific emoji codes some tweets hold


@dataclass(frozen=True)
class DavidsonRow:
    """One cleaned tweet. `soft_labels` follow `CLASSES`; `davidson_class` is the dataset's
    majority label (0 hate speech, 1 offensive, 2 neither)."""

    text: str
    soft_labels: tuple[float, ...]
    davidson_class: int
    annotators: int
    split: str
    source_id: int


def resolve_csv_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The CSV to read: `path`, else `$VOXTOX_DAVIDSON_CSV`, else `DEFAULT_PATH` from the cwd."""
    chosen = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
    if not chosen.is_file():
        raise FileNotFoundError(
            f"Davidson CSV not found at {chosen.resolve()}; pass path=... or set {ENV_VAR}"
        )
    return chosen


def clean_tweet(text: str) -> str:
    """Tweet → plain sentence: unescape HTML, drop private-use emoji codes, RT markers,
    @mentions and URLs."""
    text = html.unescape(html.unescape(text))
    text = "".join(ch for ch in text if unicodedata.category(ch) != _PRIVATE_USE)
    for pattern in (_URL, _RETWEET, _MENTION):
        text = pattern.sub(" ", text)
    return _LEADING_NOISE.sub("", " ".join(text.split()))


def soft_labels(hate: int, offensive: int, neither: int) -> tuple[float, ...]:
    """Annotator votes → one probability per voxtox class (see the module docstring)."""
    votes = hate + offensive + neither
    if votes <= 0:
        raise ValueError("a Davidson row needs at least one annotator vote")
    h, o, n = hate / votes, offensive / votes, neither / votes
    by_class = {
        "profanity": h + o,
        "bullying": HATE_TO_BULLYING * h,
        "racism": h,
        "no_violation": n,
    }
    return tuple(by_class.get(c, 0.0) for c in CLASSES)


def assign_split(normalised: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """Deterministic split for a normalised text: a hash mapped onto cumulative fractions."""
    digest = hashlib.sha256(f"{seed}\0{normalised}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(fractions.values())
    for split, fraction in fractions.items():
        point -= fraction
        if point < 0:
            return split
    return next(reversed(fractions))


def load_davidson(
    path: str | os.PathLike[str] | None = None,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[DavidsonRow]:
    """Read, clean, soft-label and split the CSV; rows left without words are dropped."""
    rows: list[DavidsonRow] = []
    with resolve_csv_path(path).open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            text = clean_tweet(record["tweet"])
            key = normalise_text(text)
            if not key:
                continue
            hate, offensive, neither = (
                int(record[k]) for k in ("hate_speech", "offensive_language", "neither")
            )
            rows.append(
                DavidsonRow(
                    text=text,
                    soft_labels=soft_labels(hate, offensive, neither),
                    davidson_class=int(record["class"]),
                    annotators=hate + offensive + neither,
                    split=assign_split(key, fractions, seed),
                    source_id=int(record[""]),
                )
            )
    return rows


DAVIDSON_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("split", pa.string()),
        ("davidson_class", pa.int8()),
        ("annotators", pa.int16()),
        ("source_id", pa.int32()),
        *((c, pa.float32()) for c in CLASSES),
    ]
)


def davidson_table(rows: Sequence[DavidsonRow]) -> pa.Table:
    """Rows as a pyarrow Table (`DAVIDSON_SCHEMA`): one soft-label column per class."""
    return pa.Table.from_pylist(
        [
            {
                "text": r.text,
                "split": r.split,
                "davidson_class": r.davidson_class,
                "annotators": r.annotators,
                "source_id": r.source_id,
                **dict(zip(CLASSES, r.soft_labels)),
            }
            for r in rows
        ],
        schema=DAVIDSON_SCHEMA,
    )
