"""voxtox's own functional tests for the labeller: hate against groups set against talk about
identity, in en/es/fr/de/pt (`data/functional/<lang>.toml`, written by hand for voxtox).

A functional test asks one narrow question ("does a neutral statement of identity stay
unflagged?") with many cases. Cases come from *families* as in the seed corpus (`seed.py`):
templates with `{slot}` placeholders. Two slots are special: `{pl}` (a group as a bare plural
noun) and `{self}` (the group as a predicate, "I am {self}"), and `{slur}` (a slur for the
group, where the language has one for it). A template using them is expanded once per identity
group of the file's `[groups]` table, and each case records its group, so false-positive rates
can be given per group.

Every family says its `category` (see CATEGORIES) and its `split`: `train` families may train
the labeller (benign identity statements, negations and counter-speech are the counter-examples
it needs); `eval` families never do. Eval families are written with other sentence frames
and other words than the train families of their category, not the same frames with another
filler, so the held-out numbers measure generalisation. The `hate_spelling` category is not
written: it is derived from a split's own hateful cases by spelling perturbations (leetspeak,
swapped or dropped letters, spaced-out letters), so it inherits their split.
"""

from __future__ import annotations

import itertools
import random
import re
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from voxtox.corpus.seed import LANGS, normalise_text
from voxtox.labels import CLASSES

Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")

#: category -> what it is in the headline measure: "benign" (talk about identity that must not
#: be flagged), "hateful" (hate against a group that must be), or "other" (reported on its own:
#: non-hateful profanity, abuse of one person, dating in and out of policy).
CATEGORIES: Mapping[str, str] = {
    "identity_neutral": "benign",
    "identity_positive": "benign",
    "negated_hate": "benign",
    "counter_quote": "benign",
    "counter_reference": "benign",
    "hate_derogation": "hateful",
    "hate_threat": "hateful",
    "hate_slur": "hateful",
    "hate_spelling": "hateful",
    "abuse_person": "other",
    "profanity_nonhate": "other",
    "dating_in_policy": "other",
    "dating_out_of_policy": "other",
}
DERIVED_CATEGORY = "hate_spelling"
GROUP_SLOTS = ("pl", "self", "slur")

_DATA_DIR = Path(__file__).with_name("data") / "functional"
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class FunctionalCase:
    """One test case. `template` is `<family>#<index>`: cases of one template are near-copies,
    so bootstrap intervals resample templates, not cases."""

    text: str
    lang: str
    category: str
    family: str
    template: str
    split: Split
    labels: tuple[str, ...]
    group: str | None

    @property
    def kind(self) -> str:
        return CATEGORIES[self.category]


@dataclass(frozen=True)
class _Family:
    name: str
    category: str
    split: Split
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    slots: Mapping[str, tuple[str, ...]]


def load_functional_cases(langs: Sequence[str] = LANGS, seed: int = 0) -> list[FunctionalCase]:
    """Every case of every language, the derived spelling cases included; texts are unique
    by normalised form (the first family wins)."""
    cases: list[FunctionalCase] = []
    for lang in langs:
        written, groups = _load_language(lang)
        cases += written + spelling_variants(written, groups, seed)
    seen: set[str] = set()
    unique = []
    for case in cases:
        key = normalise_text(case.text)
        if key not in seen:
            seen.add(key)
            unique.append(case)
    return unique


GroupForms = Mapping[str, Mapping[str, str]]


def _load_language(lang: str) -> tuple[list[FunctionalCase], GroupForms]:
    """A language's written cases, and its groups' forms (group -> slot -> words)."""
    path = _DATA_DIR / f"{lang}.toml"
    if not path.is_file():
        raise FileNotFoundError(f"no functional tests for language {lang!r}: {path} is missing")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    groups = {name: dict(forms) for name, forms in data["groups"].items()}
    shared = {name: tuple(values) for name, values in data.get("slots", {}).items()}
    families = [_family(lang, raw, shared, path) for raw in data["family"]]
    duplicates = [n for n, k in Counter(f.name for f in families).items() if k > 1]
    if duplicates:
        raise ValueError(f"{path}: duplicate family ids {duplicates}")
    cases = [case for family in families for case in _expand(family, lang, groups, path)]
    check_train_repeats_no_eval_text(cases, path)
    return cases, groups


def check_train_repeats_no_eval_text(cases: Sequence[FunctionalCase], path: Path) -> None:
    """Refuse a train family that writes an eval case's text again. Loading keeps the first of
    equal texts (eval families first), so such a case would vanish from training unnoticed; it
    also means a training frame was written as a copy of a test frame, which the eval split
    must not measure."""
    eval_texts = {normalise_text(c.text) for c in cases if c.split == "eval"}
    repeats = [c for c in cases if c.split == "train" and normalise_text(c.text) in eval_texts]
    if repeats:
        shown = "; ".join(f"{c.family}: {c.text!r}" for c in repeats[:3])
        raise ValueError(f"{path}: {len(repeats)} train case(s) repeat an eval case's text, e.g. {shown}")


def _family(lang: str, raw: Mapping[str, Any], shared: Mapping[str, tuple[str, ...]], path: Path) -> _Family:
    name = f"{lang}.{raw['id']}"
    category, split, labels = raw["category"], raw["split"], tuple(raw["labels"])
    if category not in CATEGORIES or category == DERIVED_CATEGORY:
        raise ValueError(f"{path}: family {name}: category {category!r} is not a written category")
    if split not in SPLITS:
        raise ValueError(f"{path}: family {name}: split must be one of {SPLITS}, got {split!r}")
    if not labels or set(labels) - set(CLASSES):
        raise ValueError(f"{path}: family {name}: labels must be a non-empty subset of {CLASSES}")
    if (CATEGORIES[category] == "benign") != (labels == ("no_violation",)) and category != "dating_in_policy":
        raise ValueError(f"{path}: family {name}: benign categories, and only they, are no_violation")
    slots = {**shared, **{k: tuple(v) for k, v in raw.get("slots", {}).items()}}
    missing = {s for t in raw["templates"] for s in _SLOT.findall(t)} - set(slots) - set(GROUP_SLOTS)
    if missing:
        raise ValueError(f"{path}: family {name}: templates use undefined slots {sorted(missing)}")
    ordered = tuple(c for c in CLASSES if c in labels)
    return _Family(name, category, split, ordered, tuple(raw["templates"]), slots)


def _expand(family: _Family, lang: str, groups: GroupForms, path: Path) -> list[FunctionalCase]:
    cases = []
    for index, template in enumerate(family.templates):
        names = list(dict.fromkeys(_SLOT.findall(template)))
        group_slots = [n for n in names if n in GROUP_SLOTS]
        other = [n for n in names if n not in GROUP_SLOTS]
        targets: list[str | None] = [
            g for g, forms in groups.items() if all(s in forms for s in group_slots)
        ] if group_slots else [None]
        if not targets:
            raise ValueError(f"{path}: family {family.name}: no group has the forms {group_slots}")
        for group in targets:
            fixed = {s: groups[group][s] for s in group_slots} if group else {}
            for combo in itertools.product(*(family.slots[n] for n in other)):
                values = {**fixed, **dict(zip(other, combo))}
                text = _SLOT.sub(lambda m: values[m[1]], template)
                cases.append(
                    FunctionalCase(
                        text, lang, family.category, family.name, f"{family.name}#{index}",
                        family.split, family.labels, group,
                    )
                )
    return cases


# ------------------------------------------------------------------ spelling variation

_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


def _leet(word: str, rng: random.Random) -> str:
    return word.translate(_LEET) if rng.random() < 0.5 else word.lower().translate(_LEET)


def _swap(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _drop(word: str, rng: random.Random) -> str:
    vowels = [i for i, ch in enumerate(word[1:], 1) if ch.lower() in "aeiouáéíóúâêôãõàäöü"]
    if not vowels:
        return word
    i = rng.choice(vowels)
    return word[:i] + word[i + 1 :]


def _spaced(word: str, rng: random.Random) -> str:
    return " ".join(word)


_PERTURBATIONS = (_leet, _swap, _drop, _spaced)


def perturb(text: str, keywords: Sequence[str], rng: random.Random) -> str:
    """`text` with each keyword (the group's word, its slur) respelt by one perturbation, and
    one other longer word perturbed too; a keyword not in the text is skipped."""
    change = rng.choice(_PERTURBATIONS)
    for word in sorted({k for k in keywords if k and k in text}, key=len, reverse=True):
        text = text.replace(word, " ".join(change(w, rng) for w in word.split()))
    words = text.split(" ")
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if long_words:
        i = rng.choice(long_words)
        words[i] = rng.choice(_PERTURBATIONS[:3])(words[i], rng)
    return " ".join(words)


def spelling_variants(cases: Sequence[FunctionalCase], groups: GroupForms, seed: int = 0) -> list[FunctionalCase]:
    """Half of the hateful group cases, respelt (category `hate_spelling`, the case's split)."""
    variants = []
    for case in cases:
        if case.kind != "hateful" or case.group is None:
            continue
        rng = random.Random(f"{seed}:{case.text}")
        if rng.random() < 0.5:
            text = perturb(case.text, list(groups[case.group].values()), rng)
            if text != case.text:
                variants.append(replace(case, text=text, category=DERIVED_CATEGORY))
    return variants
