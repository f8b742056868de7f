"""voxtox's own multilingual seed corpus: short voice-chat lines whose labels we know.

The sentences come from *families* written by hand in `data/<lang>.toml`. A family is one way
of saying one kind of thing (say, "raging at lag" or "calling a teammate useless"): a few
templates with `{slot}` placeholders and the fillers for those slots. Slots a family does not
define come from the language's shared `[slots]` table (player names, games). Every expansion
of a family carries the family's labels, so the corpus is exactly labelled.

The corpus serves two readers: the text toxicity labeller trains on it, and espeak-ng speaks
part of it to build evaluation audio. Sentences of one family are close paraphrases, so
`family_split` splits by family: the speech evaluation never hears a template the labeller was
trained on.
"""

from __future__ import annotations

import itertools
import random
import re
import tomllib
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from voxtox.labels import CLASSES

LANGS: tuple[str, ...] = ("en", "es", "fr", "de", "pt")

#: Parts of `family_split`, training part first (the near-duplicate guard keeps a text there).
DEFAULT_FRACTIONS: Mapping[str, float] = {
    "labeller_train": 0.6,
    "labeller_val": 0.1,
    "labeller_test": 0.1,
    "speech_eval": 0.2,
}

_DATA_DIR = Path(__file__).with_name("data")
_SLOT = re.compile(r"\{(\w+)\}")
_HARD_NEGATIVE = "hard_negative"


@dataclass(frozen=True)
class SeedSentence:
    """One corpus line. `family` is `<lang>.<family id>`; `hard_negative` marks benign lines
    that look toxic on the surface (in-game violence, trash talk, identity words)."""

    text: str
    lang: str
    labels: tuple[str, ...]
    family: str
    hard_negative: bool


@dataclass(frozen=True)
class Family:
    """A sentence family as written in the data file, with shared slots already merged in."""

    name: str
    lang: str
    labels: tuple[str, ...]
    hard_negative: bool
    templates: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]

    def expand(self, template: str) -> list[str]:
        """Every sentence one template yields, in a fixed order."""
        names = list(dict.fromkeys(_SLOT.findall(template)))
        combos = itertools.product(*(self.slots[name] for name in names))
        return [_fill(template, dict(zip(names, combo))) for combo in combos]

    def sentence(self, text: str) -> SeedSentence:
        """One of this family's expansions as a corpus line."""
        return SeedSentence(text, self.lang, self.labels, self.name, self.hard_negative)


def _fill(template: str, values: Mapping[str, str]) -> str:
    return _SLOT.sub(lambda match: values[match[1]], template)


def normalise_text(text: str) -> str:
    """Lowercase, strip punctuation and symbols, collapse whitespace: the key for duplicates."""
    kept = (" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text.lower())
    return " ".join("".join(kept).split())


def load_families(lang: str) -> list[Family]:
    """Read and check `data/<lang>.toml`."""
    path = _DATA_DIR / f"{lang}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no seed corpus for language {lang!r}: {path} is missing")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    shared = {name: tuple(values) for name, values in data.get("slots", {}).items()}
    families = [_family(lang, raw, shared) for raw in data["family"]]
    duplicates = [name for name, n in Counter(f.name for f in families).items() if n > 1]
    if duplicates:
        raise ValueError(f"{path}: duplicate family ids {duplicates}")
    return families


def _family(lang: str, raw: Mapping[str, Any], shared: Mapping[str, tuple[str, ...]]) -> Family:
    family = Family(
        name=f"{lang}.{raw['id']}",
        lang=lang,
        labels=tuple(c for c in CLASSES if c in raw["labels"]),
        hard_negative=bool(raw.get(_HARD_NEGATIVE, False)),
        templates=tuple(raw["templates"]),
        slots={**shared, **{k: tuple(v) for k, v in raw.get("slots", {}).items()}},
    )
    _check_family(family, raw["labels"])
    return family


def _check_family(family: Family, raw_labels: Iterable[str]) -> None:
    name, labels = family.name, family.labels
    if set(raw_labels) - set(CLASSES) or not labels:
        raise ValueError(f"family {name}: labels must be a non-empty subset of {CLASSES}")
    if "no_violation" in labels and len(labels) > 1:
        raise ValueError(f"family {name}: no_violation cannot be combined with a toxic label")
    if family.hard_negative and labels != ("no_violation",):
        raise ValueError(f"family {name}: only no_violation families can be hard negatives")
    missing = {s for t in family.templates for s in _SLOT.findall(t)} - set(family.slots)
    if missing:
        raise ValueError(f"family {name}: templates use undefined slots {sorted(missing)}")


def generate_seed_corpus(
    langs: Sequence[str] = LANGS, seed: int = 0, per_family: int | None = None
) -> list[SeedSentence]:
    """All languages' families expanded, deduplicated by normalised text (first one wins).

    `per_family=None` keeps every expansion (and `seed` does not matter); an int keeps at most
    that many per family, drawn with `seed` round-robin over the templates so each template
    is represented.
    """
    corpus: list[SeedSentence] = []
    seen: set[str] = set()
    for lang in langs:
        for family in load_families(lang):
            for text in _family_texts(family, seed, per_family):
                key = normalise_text(text)
                if key not in seen:
                    seen.add(key)
                    corpus.append(family.sentence(text))
    return corpus


def _family_texts(family: Family, seed: int, per_family: int | None) -> list[str]:
    per_template = [family.expand(t) for t in family.templates]
    if per_family is None:
        return [text for texts in per_template for text in texts]
    rng = random.Random(f"{seed}:{family.name}")
    shuffled = [rng.sample(texts, len(texts)) for texts in per_template]
    interleaved = (t for row in itertools.zip_longest(*shuffled) for t in row if t is not None)
    return list(itertools.islice(dict.fromkeys(interleaved), per_family))


def family_split(
    sentences: Sequence[SeedSentence],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[SeedSentence]]:
    """Split by family, stratified by language × class (and hard negatives), into `fractions`.

    Families are visited in a seeded shuffle; each goes to the part that lacks most of its
    strata, else to the part furthest below its share of those strata's sentences. Then the
    near-duplicate guard keeps each normalised text only in the earliest part listed (the
    training part first), so evaluation parts never repeat a training sentence.
    """
    _check_fractions(fractions)
    by_family: dict[str, list[SeedSentence]] = defaultdict(list)
    for sentence in sentences:
        by_family[sentence.family].append(sentence)
    assignment = _assign_families(by_family, fractions, seed)
    parts: dict[str, list[SeedSentence]] = {part: [] for part in fractions}
    for family, members in by_family.items():
        parts[assignment[family]].extend(members)
    return _drop_cross_part_duplicates(parts)


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or any(f <= 0 for f in fractions.values()):
        raise ValueError(f"fractions must be positive and non-empty, got {dict(fractions)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions.values())}")


def _strata(members: Sequence[SeedSentence]) -> set[tuple[str, str]]:
    first = members[0]
    keys = {(first.lang, label) for label in first.labels}
    if first.hard_negative:
        keys.add((first.lang, _HARD_NEGATIVE))
    return keys


def _assign_families(
    by_family: Mapping[str, Sequence[SeedSentence]], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    strata = {family: _strata(members) for family, members in by_family.items()}
    totals: Counter[tuple[str, str]] = Counter()
    for family, keys in strata.items():
        totals.update({key: len(by_family[family]) for key in keys})
    filled: dict[str, Counter[tuple[str, str]]] = {part: Counter() for part in fractions}

    def need(part: str, keys: set[tuple[str, str]]) -> tuple[int, float]:
        missing = sum(filled[part][k] == 0 for k in keys)
        deficit = sum(fractions[part] * totals[k] - filled[part][k] for k in keys)
        return missing, deficit / sum(totals[k] for k in keys)

    order = sorted(by_family)
    random.Random(seed).shuffle(order)
    assignment: dict[str, str] = {}
    for family in order:
        part = max(fractions, key=lambda p: need(p, strata[family]))
        assignment[family] = part
        filled[part].update({key: len(by_family[family]) for key in strata[family]})
    return assignment


def _drop_cross_part_duplicates(
    parts: Mapping[str, list[SeedSentence]],
) -> dict[str, list[SeedSentence]]:
    seen: set[str] = set()
    kept: dict[str, list[SeedSentence]] = {}
    for part, members in parts.items():
        kept[part] = []
        for sentence in members:
            key = normalise_text(sentence.text)
            if key not in seen:
                seen.add(key)
                kept[part].append(sentence)
    return kept


def to_rows(parts: Mapping[str, Sequence[SeedSentence]]) -> list[dict[str, object]]:
    """Flat rows for the labeller: text, lang, family, hard_negative, split, one 0/1 per class."""
    return [
        {
            "text": s.text,
            "lang": s.lang,
            "family": s.family,
            "hard_negative": s.hard_negative,
            "split": part,
            **{c: int(c in s.labels) for c in CLASSES},
        }
        for part, members in parts.items()
        for s in members
    ]


TABLE_SCHEMA = pa.schema(
    [
        ("text", pa.string()),
        ("lang", pa.string()),
        ("family", pa.string()),
        ("hard_negative", pa.bool_()),
        ("split", pa.string()),
        *((c, pa.int8()) for c in CLASSES),
    ]
)


def to_table(parts: Mapping[str, Sequence[SeedSentence]]) -> pa.Table:
    """`to_rows` as a pyarrow Table with `TABLE_SCHEMA`."""
    return pa.Table.from_pylist(to_rows(parts), schema=TABLE_SCHEMA)
